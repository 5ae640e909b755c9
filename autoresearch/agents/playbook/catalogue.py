"""The playbook: known improvements to small GPT training, each an edit to the champion source.

An entry rewrites the current champion's ``train.py`` (found by structure: a knob by name in the
run's preset, a class or function through ``ast``, a fragment inside that scope) or answers
None when its anchor is gone — the idea was already applied, or an earlier change replaced the
code it edits. Each names where the idea comes from. ``prior`` orders the entries before the
run has taught anything: the most reliable wins at 60 s on a 2-4 core CPU come first.

Measured at 60 s on tiny-shakespeare (CPU preset, seed 0, this project's 2-core machine
shared with other jobs, load 3-5): the baseline's two intra-op threads 3.517 bpb in 250 steps,
one thread 2.718 in 867 (-23%: tiny ops wait for both threads, worst on shared cores); on top
of one thread, Muon 2.524 (-7%), half the batch 2.685 (-1.2%). From 400k-token runs (seed 0,
baseline 3.010): Muon -5.7% per token, batch-down -5.0% per token, WSD -2.4%, ReLU² -0.7%,
x0 mix-in -0.5%; untied embeddings +13%, zero-init projections +17%, 1.5x LR +9%, 1.5x width
+6%, QK-norm +4.7%, embedding LR +2.7% (so these go late); the others follow the public record.

Follow-ups: ``after_win`` names the entry whose win makes this one the natural next step (a
knob moved again the same way); ``after_loss`` the entry whose loss makes this one worth one
try (the knob moved the other way). Neither kind is proposed before its parent has a result.

Over 400 lines on purpose: it is data, one short function per idea (50 entries with their
follow-ups), read top to bottom like the record it is drawn from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from autoresearch.agents.playbook.source import (
    add_constants,
    get_knob,
    has_constant,
    insert_before,
    replace_def,
    replace_in,
    scale_knob,
    segment,
    set_knob,
    sub_in,
)

Make = Callable[[str, str], str | None]  # (champion source, device) -> new source or None


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    rationale: str
    origin: str  # where the idea comes from
    prior: float  # expected gain in % of val_bpb (higher is tried first)
    family: str  # entries of one family share what the run teaches about them
    make: Make
    after_win: str | None = None
    after_loss: str | None = None
    cpu_bf16: bool = False  # only where the CPU has native bf16 matmuls (or on CUDA)

    @property
    def tag(self) -> str:
        return f"[{self.id}]"

    @property
    def full_title(self) -> str:
        return f"{self.tag} {self.title}"

    @property
    def follow_up(self) -> bool:
        return self.after_win is not None or self.after_loss is not None


# ----------------------------------------------------------------------------------------------
# Shared pieces that several entries need.

LR_LINE = 'group["lr"] = lr\n'
LR_SCALED = 'group["lr"] = lr * group.get("lr_scale", 1.0)\n'


def with_lr_scale(src: str | None) -> str | None:
    """Let a parameter group carry an ``lr_scale`` that the schedule multiplies in."""
    if src is None:
        return None
    if LR_SCALED in src:
        return src
    return replace_in(src, "train", LR_LINE, LR_SCALED)


def head_multiple(src: str, device: str) -> int:
    """N_EMBD must divide by N_HEAD, with an even head size for the rotary halves."""
    heads = get_knob(src, "N_HEAD", device)
    return 2 * heads if isinstance(heads, int) and heads > 0 else 2


# ----------------------------------------------------------------------------------------------
# Architecture.


def rmsnorm(src: str, device: str) -> str | None:
    # idea: Zhang & Sennrich 2019 (RMSNorm); used by LLaMA and the modded-nanogpt speedrun
    new, n = re.subn(r"nn\.LayerNorm\((\w+)(?:, bias=False)?\)", r"nn.RMSNorm(\1)", src)
    return new if n else None


def no_norm_bias(src: str, device: str) -> str | None:
    # idea: PaLM (Chowdhery et al. 2022) drops every bias; a LayerNorm bias is one more vector
    new, n = re.subn(r"nn\.LayerNorm\((\w+)\)", r"nn.LayerNorm(\1, bias=False)", src)
    return new if n else None


def relu2(src: str, device: str) -> str | None:
    # idea: So et al. 2021 (Primer) squared ReLU; the modded-nanogpt speedrun MLP
    return replace_in(src, "MLP.forward", "F.gelu(self.fc(x))", "F.relu(self.fc(x)).square()")


SWIGLU_MLP = '''class MLP(nn.Module):
    """SwiGLU: a gated MLP; 2/3 of the 4x hidden width keeps the parameter count."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        hidden = 4 * n_embd * 2 // 3
        self.fc = nn.Linear(n_embd, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)'''


def swiglu(src: str, device: str) -> str | None:
    # idea: Shazeer 2020 (GLU variants improve transformer); LLaMA's MLP
    span = segment(src, "MLP")
    if span is None or "F.gelu(self.fc(x))" not in src[span[0]:span[1]]:
        return None
    return replace_def(src, "MLP", SWIGLU_MLP)


def qk_norm(src: str, device: str) -> str | None:
    # idea: Dehghani et al. 2023 (ViT-22B) / Wortsman et al. 2023: normalise q and k per head;
    # part of the modded-nanogpt speedrun
    old = "        q, k = rotate(q, cos, sin), rotate(k, cos, sin)\n"
    new = ("        # QK-norm: unit-RMS queries and keys keep the attention logits in range\n"
           "        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))\n" + old)
    if "F.rms_norm(q" in src:
        return None
    return replace_in(src, "CausalSelfAttention.forward", old, new)


def zero_proj(src: str, device: str) -> str | None:
    # idea: modded-nanogpt speedrun (zero-initialised projections; also Fixup, Zhang et al. 2019)
    old = "nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))"
    return replace_in(src, "GPT.__init__", old, "nn.init.zeros_(p)  # each block starts as "
                      "the identity")


def untie(src: str, device: str) -> str | None:
    # idea: modded-nanogpt speedrun (untied head, zero-initialised); T5 and LLaMA untie too
    new = sub_in(src, "GPT.__init__", r"^[ \t]*self\.head\.weight = self\.tok_emb\.weight.*\n",
                 "")
    return replace_in(new, "GPT.__init__", "        self.apply(self._init_weights)\n",
                      "        self.apply(self._init_weights)\n"
                      "        nn.init.zeros_(self.head.weight)  # untied: the head starts "
                      "silent\n")


def softcap(src: str, device: str) -> str | None:
    # idea: Gemma 2 (Google 2024) logit soft-capping; modded-nanogpt speedrun
    new = sub_in(src, "GPT.forward", r"^(\s*)return (self\.head\(.*\))$",
                 r"\1logits = \2\n\1# soft-cap: tanh keeps the logits in (-SOFTCAP, SOFTCAP)\n"
                 r"\1return SOFTCAP * torch.tanh(logits / SOFTCAP)")
    if new is None or has_constant(src, "SOFTCAP"):
        return None
    return add_constants(new, "SOFTCAP = 15.0  # logit soft-cap (tanh)")


def x0_mix(src: str, device: str) -> str | None:
    # idea: modded-nanogpt speedrun (every block mixes the input embedding x0 back in)
    new = replace_in(src, "Block.__init__", "        self.mlp = MLP(n_embd)\n",
                     "        self.mlp = MLP(n_embd)\n"
                     "        self.x0_gain = nn.Parameter(torch.zeros(1))  # mix-in of the "
                     "input embedding\n")
    new = sub_in(new, "GPT.forward", r"^(\s*)for block in self\.blocks:$",
                 r"\1x0 = x\n\1for block in self.blocks:")
    return sub_in(new, "GPT.forward", r"block\(x, ", "block(x + block.x0_gain * x0, ")


def value_embeddings(src: str, device: str) -> str | None:
    # idea: modded-nanogpt speedrun (value embeddings added to each layer's values)
    attn_old = "        q, k, v = self.qkv(x).split(C, dim=2)\n"
    attn_new = (attn_old + "        if ve is not None:\n"
                "            v = v + ve  # a per-token value straight from an embedding table\n")
    sig = ("def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) "
           "-> torch.Tensor:")
    sig_ve = ("def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,\n"
              "                ve: torch.Tensor | None = None) -> torch.Tensor:")
    new = replace_in(src, "CausalSelfAttention.forward", attn_old, attn_new)
    new = replace_in(new, "CausalSelfAttention.forward", sig, sig_ve)
    new = replace_in(new, "Block.forward", sig, sig_ve)
    new = sub_in(new, "Block.forward", r"self\.attn\((.*), cos, sin\)",
                 r"self.attn(\1, cos, sin, ve)")
    new = sub_in(new, "GPT.__init__", r"^(\s*)(self\.blocks = nn\.ModuleList\(.*\))$",
                 r"\1\2\n\1self.value_embs = nn.ModuleList(nn.Embedding(vocab_size, n_embd) "
                 r"for _ in range(n_layer))")
    new = sub_in(new, "GPT.forward", r"^(\s*)for block in self\.blocks:$",
                 r"\1for block, value_emb in zip(self.blocks, self.value_embs):")
    return sub_in(new, "GPT.forward", r"block\((.*), cos, sin\)", r"block(\1, cos, sin, "
                  r"value_emb(idx))")


def gqa(src: str, device: str) -> str | None:
    # idea: Ainslie et al. 2023 (GQA): fewer key/value heads than query heads
    init_old = "        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)\n"
    init_new = ("        self.n_kv_head = max(1, n_head // 2)  # grouped-query attention\n"
                "        self.kv_dim = n_embd // n_head * self.n_kv_head\n"
                "        self.qkv = nn.Linear(n_embd, n_embd + 2 * self.kv_dim, bias=False)\n")
    fwd_old = ("        q, k, v = self.qkv(x).split(C, dim=2)\n"
               "        # (B, T, C) -> (B, n_head, T, head_dim) for the fused attention kernel\n"
               "        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) "
               "for t in (q, k, v))\n")
    fwd_new = ("        q, k, v = self.qkv(x).split([C, self.kv_dim, self.kv_dim], dim=2)\n"
               "        hd = C // self.n_head\n"
               "        q = q.view(B, T, self.n_head, hd).transpose(1, 2)\n"
               "        k, v = (t.view(B, T, self.n_kv_head, hd).transpose(1, 2) for t in (k, v))\n"
               "        # each key/value head serves n_head // n_kv_head query heads\n"
               "        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)\n"
               "        v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)\n")
    new = replace_in(src, "CausalSelfAttention.__init__", init_old, init_new)
    return replace_in(new, "CausalSelfAttention.forward", fwd_old, fwd_new)


def rope_base(src: str, device: str) -> str | None:
    # idea: Xiong et al. 2023 (long-context LLaMA, larger RoPE base); modded-nanogpt raised it
    new = replace_in(src, "GPT.__init__", "10000.0 ** (", "ROPE_BASE ** (")
    if new is None or has_constant(src, "ROPE_BASE"):
        return None
    return add_constants(new, "ROPE_BASE = 100000.0  # rotary base: slower-turning angles")


# ----------------------------------------------------------------------------------------------
# Optimizer.


EMB_OPTIMIZER = '''def make_optimizer(model: nn.Module, lr: float,
                   fused: bool) -> torch.optim.AdamW:
    # embeddings get their own, higher rate and no decay; matrices decay; gains and biases don't
    emb, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "emb" in name:
            emb.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": emb, "weight_decay": 0.0, "lr_scale": EMB_LR_SCALE},
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, fused=fused{eps})'''


def _eps(src: str) -> str:
    return ", eps=ADAM_EPS" if has_constant(src, "ADAM_EPS") else ""


def embedding_lr(src: str, device: str) -> str | None:
    # idea: modded-nanogpt speedrun and Keller Jordan's notes: embeddings train best at a much
    # higher rate than the matrices
    if has_constant(src, "EMB_LR_SCALE"):  # the optimizer already has the group: raise it
        return set_knob(src, "EMB_LR_SCALE", lambda v: v * 3 if isinstance(v, (int, float))
                        else None, device)
    span = segment(src, "make_optimizer")
    if span is None or "torch.optim.AdamW(groups" not in src[span[0]:span[1]]:
        return None
    new = replace_def(src, "make_optimizer", EMB_OPTIMIZER.replace("{eps}", _eps(src)))
    new = add_constants(new or "", "EMB_LR_SCALE = 3.0  # embedding LR = LR * EMB_LR_SCALE")
    return with_lr_scale(new)


MUON_CODE = '''def orthogonalize(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Push each matrix of a stack (n, rows, cols) towards the nearest semi-orthogonal one.

    A quintic Newton-Schulz iteration, x <- a x + (b s + c s^2) x with s = x x^T, after
    scaling x so that its singular values are at most 1; the coefficients make it converge
    in a few steps (they come from Keller Jordan's Muon write-up, 2024). One stack of
    same-shaped matrices goes through a few batched matmuls: on a small or busy CPU the
    number of ops costs more than their size, so one per matrix would slow every step.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm(dim=(1, 2), keepdim=True) + 1e-7)
    wide = x.size(1) <= x.size(2)
    if not wide:
        x = x.mT
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update is orthogonalised: every direction of a weight matrix moves
    by the same amount, however small its gradient (idea: Jordan et al., Muon, 2024)."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.95, steps: int = 5) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, steps=steps))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if "momentum" not in self.state[p]:
                    self.state[p]["momentum"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum"] for p in params]
            # one op over all the matrices (torch._foreach_*), not one per matrix
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=group["momentum"])  # Nesterov
            by_shape: dict[torch.Size, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(p.shape, []).append(i)
            for shape, idx in by_shape.items():
                u = orthogonalize(torch.stack([updates[i] for i in idx]), group["steps"])
                # tall matrices get a larger step so the update's RMS matches a square one
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                torch._foreach_add_([params[i] for i in idx], list(u.unbind(0)),
                                    alpha=-group["lr"] * scale)


class Optimizers:
    """Several optimizers stepped as one; ``param_groups`` lists the groups of all of them."""

    def __init__(self, *parts: torch.optim.Optimizer) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for part in self.parts for g in part.param_groups]

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)


def make_optimizer(model: nn.Module, lr: float, fused: bool) -> Any:
    # Muon for the blocks' weight matrices; AdamW for embeddings, head, gains and biases
    matrices, emb, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() == 2 and name.startswith("blocks."):
            matrices.append(p)
        elif "emb" in name or "head" in name:
            emb.append(p)
        else:
            rest.append(p)
    adam = torch.optim.AdamW([
        {"params": emb, "weight_decay": 0.0, "lr_scale": EMB_LR_SCALE},
        {"params": rest, "weight_decay": 0.0},
    ], lr=lr, betas=BETAS, fused=fused{eps})
    muon = Muon([{"params": matrices, "lr_scale": MUON_LR_SCALE}], lr=lr * MUON_LR_SCALE,
                steps=MUON_STEPS)
    return Optimizers(adam, muon)'''


def muon(src: str, device: str) -> str | None:
    # idea: Keller Jordan et al. 2024 (Muon), the optimizer of the modded-nanogpt speedrun
    if "class Muon" in src or segment(src, "make_optimizer") is None:
        return None
    new = insert_before(src, "make_optimizer", MUON_CODE.split("\n\n\ndef make_optimizer")[0])
    new = replace_def(new, "make_optimizer",
                      "def make_optimizer" + MUON_CODE.split("\n\n\ndef make_optimizer")[1]
                      .replace("{eps}", _eps(src)))
    consts = "MUON_LR_SCALE = 5.0  # Muon's LR = LR * MUON_LR_SCALE (the update is unit-RMS)"
    # 5 Newton-Schulz iterations as in the speedrun on a GPU; on a CPU each one costs steps:
    # at 60 s with 1 thread (seed 0, a busy 2-core box, so only a hint) 3 gave 2.524 bpb in
    # 971 steps, 5 gave 2.735 in 600, no Muon 2.718 in 867
    consts += ("\nMUON_STEPS = 5  # Newton-Schulz iterations per update" if device.startswith(
        "cuda") else "\nMUON_STEPS = 3  # Newton-Schulz iterations per update (few: CPU time)")
    if not has_constant(src, "EMB_LR_SCALE"):
        consts += "\nEMB_LR_SCALE = 1.0  # embedding LR = LR * EMB_LR_SCALE"
    new = add_constants(new or "", consts)
    if new is not None and "from typing import Any" not in new:
        return None
    return with_lr_scale(new)


def adam_betas(src: str, device: str) -> str | None:
    # idea: modded-nanogpt speedrun uses betas (0.8, 0.95) and eps 1e-10 for its Adam groups
    new = set_knob(src, "BETAS", lambda v: (0.8, 0.95) if v != (0.8, 0.95) else None, device)
    if new is None or has_constant(new, "ADAM_EPS"):
        return None
    new = sub_in(new, None, r"(torch\.optim\.AdamW\([^)]*betas=BETAS, fused=fused)\)",
                 r"\1, eps=ADAM_EPS)")
    return add_constants(new or "", "ADAM_EPS = 1e-10  # Adam epsilon: small, so rare "
                         "gradients still get full steps")


# ----------------------------------------------------------------------------------------------
# Schedule and data.


WSD = '''def lr_at(progress: float, peak: float) -> float:
    """Warmup, hold the peak, then decay linearly to MIN_LR_FRAC * peak over the last COOLDOWN."""
    if progress < WARMUP:
        return peak * max(progress, 0.01 * WARMUP) / WARMUP
    if progress < 1.0 - COOLDOWN:
        return peak
    t = min((progress - (1.0 - COOLDOWN)) / COOLDOWN, 1.0)
    return peak * (1.0 - (1.0 - MIN_LR_FRAC) * t)'''


def wsd(src: str, device: str) -> str | None:
    # idea: Hägele et al. 2024 (scaling laws and compute-optimal training beyond fixed training
    # durations), MiniCPM's WSD schedule; the speedrun's long linear cooldown
    span = segment(src, "lr_at")
    if span is None or "math.cos" not in src[span[0]:span[1]] or has_constant(src, "COOLDOWN"):
        return None
    new = replace_def(src, "lr_at", WSD)
    return add_constants(new or "", "COOLDOWN = 0.5  # fraction of the budget spent decaying "
                         "the learning rate")


SEQ_WARMUP_FN = '''
    def shape_at(progress: float) -> tuple[int, int]:
        """Sequence-length warmup: early steps see more, shorter windows (same tokens/step)."""
        n = seq_len
        if progress < SEQ_WARMUP:
            n = seq_len // (4 if progress < SEQ_WARMUP / 2 else 2)
        n = max(n, 8)
        return max(1, batch_tokens // n), n
'''


def seq_warmup(src: str, device: str) -> str | None:
    # idea: Li et al. 2022 (the stability-efficiency dilemma: sequence length warmup); the
    # modded-nanogpt speedrun grows its attention window during training
    get = "x, y = run.get_batch(batch_size, seq_len)"
    span = segment(src, "train")
    if span is None or src[span[0]:span[1]].count(get) != 2 or has_constant(src, "SEQ_WARMUP"):
        return None
    new = replace_in(src, "train", "    batch_tokens = batch_size * seq_len\n",
                     "    batch_tokens = batch_size * seq_len\n" + SEQ_WARMUP_FN)
    if new is None:
        return None
    a, b = segment(new, "train") or (0, 0)
    part = new[a:b].replace(get, "x, y = run.get_batch(*shape_at(0.0))", 1)
    part = part.replace(get, "x, y = run.get_batch(*shape_at(budget.progress()))", 1)
    new = new[:a] + part + new[b:]
    return add_constants(new, "SEQ_WARMUP = 0.3  # fraction of the budget on shorter windows")


def one_thread(src: str, device: str) -> str | None:
    # idea: PyTorch's CPU performance notes (intra-op threads vs. core count); OpenMP threads
    # wait for each other at every op, and a model this small runs thousands of tiny ops
    if device.startswith("cuda"):
        return None
    return set_knob(src, "THREADS", lambda v: 1 if v != 1 else None, device)


def bf16(src: str, device: str) -> str | None:
    # idea: mixed precision (Micikevicius et al. 2018); bf16 autocast where matmuls are native
    return set_knob(src, "BF16", lambda v: True if v is False else None, device)


# ----------------------------------------------------------------------------------------------
# Knobs, with their follow-ups.


def _set(name: str, value: object) -> Make:
    return lambda src, device: set_knob(src, name, lambda v: value, device)


def _knob_chain(entries: list[Entry], base: Entry, again: str, steps: int = 2) -> None:
    """Add ``base`` and its next steps (``id-2``, ``id-3``: the same move again after a win)."""
    entries.append(base)
    parent = base
    for i in range(2, steps + 2):
        step = Entry(id=f"{base.id}-{i}", title=f"{again} (step {i})",
                     rationale=f"{parent.title} helped; the same move once more.",
                     origin=base.origin, prior=base.prior, family=base.family, make=base.make,
                     after_win=parent.id)
        entries.append(step)
        parent = step


def _build() -> list[Entry]:
    e: list[Entry] = []

    def add(*args: object, **kw: object) -> None:
        e.append(Entry(*args, **kw))  # type: ignore[arg-type]

    # priors: % lower val_bpb expected at 60 s on the CPU preset
    add("one-thread", "One intra-op thread on the CPU",
        "A model this small runs thousands of tiny ops per step; with two threads each op "
        "waits for both, and on shared cores that wait dominates the step.",
        "PyTorch CPU performance notes (intra-op threads)", 10.0, "speed", one_thread)
    add("muon", "Muon for the blocks' matrices, AdamW for the rest",
        "Orthogonalised momentum updates train small transformers in far fewer steps; it set "
        "the modded-nanogpt speedrun records.", "Jordan et al. 2024, Muon; modded-nanogpt",
        5.0, "optimizer", muon)
    add("wsd", "Warmup-stable-decay schedule with a long linear cooldown to a floor",
        "Holding the peak rate and decaying late beats cosine at a fixed budget.",
        "Hägele et al. 2024; MiniCPM; modded-nanogpt", 2.4, "schedule", wsd)
    add("untie", "Untied input and output embeddings, zero-initialised head",
        "A byte model's input and output roles differ; the head starts silent.",
        "modded-nanogpt speedrun", 0.05, "embeddings", untie)
    add("emb-lr", "A separate, higher learning rate for the embeddings",
        "Embedding rows get sparse gradients and lag behind the matrices at one shared rate.",
        "modded-nanogpt speedrun", 0.1, "embeddings", embedding_lr)
    add("relu2", "ReLU² MLP activation instead of GELU",
        "Squared ReLU learns faster per step in small transformers.",
        "So et al. 2021, Primer; modded-nanogpt", 0.7, "mlp", relu2)
    add("zero-proj", "Zero-initialised output projections",
        "Each block starts as the identity, so early steps train a shallow, stable network.",
        "modded-nanogpt speedrun; Zhang et al. 2019 (Fixup)", 0.05, "init", zero_proj)
    add("qk-norm", "QK-norm: RMS-normalised queries and keys",
        "Bounded attention logits tolerate a higher learning rate.",
        "Dehghani et al. 2023; Wortsman et al. 2023; modded-nanogpt", 0.1, "attention", qk_norm)
    add("rmsnorm", "RMSNorm instead of LayerNorm",
        "Cheaper normalisation with no quality loss.", "Zhang & Sennrich 2019; LLaMA",
        0.6, "norm", rmsnorm)
    add("x0-mix", "Mix the input embedding back into every block",
        "A learned skip from x0 gives deep blocks direct access to the token identity.",
        "modded-nanogpt speedrun", 0.5, "residual", x0_mix)
    add("value-emb", "Value embeddings added to each layer's attention values",
        "Per-token value vectors add capacity at almost no compute.",
        "modded-nanogpt speedrun", 0.5, "attention", value_embeddings)
    add("softcap", "Logit soft-capping at 15",
        "tanh-capped logits stop the head from becoming over-confident early.",
        "Gemma 2 (2024); modded-nanogpt", 0.5, "head", softcap)
    add("swiglu", "SwiGLU MLP instead of GELU",
        "A gated MLP at equal parameters is a common quality gain.",
        "Shazeer 2020; LLaMA", 0.4, "mlp", swiglu)
    add("seq-warmup", "Sequence-length warmup: short windows early",
        "Short windows early give cheaper, more diverse steps while the model learns n-grams.",
        "Li et al. 2022; modded-nanogpt window warmup", 0.4, "data", seq_warmup)
    add("adam-betas", "Adam betas (0.8, 0.95) and eps 1e-10",
        "A shorter first-moment memory adapts faster in a short run.",
        "modded-nanogpt speedrun", 0.3, "optimizer", adam_betas)
    add("no-norm-bias", "Drop the LayerNorm biases",
        "Fewer parameters to train, no loss of expressiveness in a pre-norm network.",
        "PaLM (Chowdhery et al. 2022)", 0.2, "norm", no_norm_bias)
    add("gqa", "Grouped-query attention (half as many key/value heads)",
        "Fewer key/value projections make each step cheaper.",
        "Ainslie et al. 2023", 0.1, "attention", gqa)
    add("rope-base", "Larger RoPE base (100k)",
        "Slower-turning rotary angles separate distant positions better.",
        "Xiong et al. 2023; modded-nanogpt", 0.1, "position", rope_base)
    add("bf16", "bf16 autocast on a CPU with native bf16 matmuls",
        "Native bf16 (AMX / AVX512-BF16) doubles matmul throughput.",
        "Micikevicius et al. 2018; Intel AMX", 0.1, "precision", bf16, cpu_bf16=True)

    # knobs: the first move; a win is followed by the same move again, a loss by the other way
    # (id, title, why, origin, prior, family, make, reverse id, reverse title, reverse make)
    knobs: list[tuple[str, str, str, str, float, str, Make, str, str, Make]] = [
        ("lr-down", "Lower the peak learning rate 1.5x",
         "At 6e-3 this model is over-stepped (1.5x higher measured 9% worse).",
         "nanoGPT practice", 1.0, "lr", scale_knob("LR", 1 / 1.5),
         "lr-up", "Raise the peak learning rate 1.5x", scale_knob("LR", 1.5)),
        ("batch-down", "Halve the batch size",
         "In a fixed time a smaller batch takes twice the steps; small models gain more from "
         "steps than from less noisy gradients.", "McCandlish et al. 2018 (critical batch size)",
         1.2, "batch", scale_knob("BATCH_SIZE", 0.5, integer=True),
         "batch-up", "Double the batch size", scale_knob("BATCH_SIZE", 2, integer=True)),
        ("width-down", "Narrow the residual stream to 3/4",
         "A narrower model sees more tokens in the same time (1.5x wider measured slower and "
         "worse per token).", "Kaplan et al. 2020 (scaling laws)", 0.5, "width",
         scale_knob("N_EMBD", 0.75, integer=True, multiple_of=head_multiple),
         "width-up", "Widen the residual stream 1.5x",
         scale_knob("N_EMBD", 1.5, integer=True, multiple_of=head_multiple)),
        ("depth-down", "One fewer layer per four",
         "A shallower model takes more steps in the same time.",
         "Kaplan et al. 2020 (scaling laws)", 0.3, "depth",
         scale_knob("N_LAYER", 0.75, integer=True, lo=1),
         "depth-up", "One more layer per four", scale_knob("N_LAYER", 1.25, integer=True)),
        ("wd-off", "No weight decay",
         "A run this short underfits; decay only slows it.", "Andriushchenko et al. 2023",
         0.2, "decay", _set("WEIGHT_DECAY", 0.0),
         "wd-up", "Double the weight decay", scale_knob("WEIGHT_DECAY", 2.0)),
        ("clip-off", "Gradient clipping off",
         "Clipping at 1.0 may cut useful early steps of a small model.",
         "modded-nanogpt (no clipping)", 0.1, "clip", _set("GRAD_CLIP", 0.0),
         "clip-tight", "Tighter gradient clipping (0.5)", _set("GRAD_CLIP", 0.5)),
    ]
    for kid, title, why, origin, prior, family, make, rid, rtitle, rmake in knobs:
        steps = 0 if family in ("decay", "clip") else 2  # a knob set to 0 has no next step
        _knob_chain(e, Entry(kid, title, why, origin, prior, family, make), title, steps)
        _knob_chain(e, Entry(rid, rtitle, f"{title} hurt; the other way round.", origin, prior,
                             family, rmake, after_loss=kid), rtitle, steps)
    # the next steps of structural wins
    e.append(Entry("muon-lr-up", "Raise Muon's learning rate 1.5x",
                   "Muon helped; its update is unit-RMS, so its rate is a knob of its own.",
                   "Jordan et al. 2024, Muon", 1.0, "optimizer",
                   scale_knob("MUON_LR_SCALE", 1.5), after_win="muon"))
    e.append(Entry("emb-lr-up", "Raise the embedding learning rate 2x again",
                   "A higher embedding rate helped; go further.", "modded-nanogpt speedrun",
                   0.5, "embeddings", scale_knob("EMB_LR_SCALE", 2.0), after_win="emb-lr"))
    e.append(Entry("cooldown-longer", "Longer cooldown (70% of the budget)",
                   "A late decay helped; most of the gain comes from the cooldown itself.",
                   "Hägele et al. 2024", 0.5, "schedule", _set("COOLDOWN", 0.7),
                   after_win="wsd"))
    ids = [x.id for x in e]
    assert len(ids) == len(set(ids)), "catalogue ids must be unique"
    return e


CATALOGUE: list[Entry] = _build()
BY_ID: dict[str, Entry] = {x.id: x for x in CATALOGUE}
PRIMARY: list[Entry] = [x for x in CATALOGUE if not x.follow_up]
