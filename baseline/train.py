"""Baseline training script: a small nanoGPT-style byte-level GPT.

This is the file the research agent edits. The harness (trusted, not in this file) owns the
data, the clock and the metric: it calls ``train(run)`` and then measures validation
bits-per-byte on the returned model. Everything here — model, optimizer, schedule, loop — may
change, as long as ``train`` keeps its contract:

- it draws training data only through ``run.get_batch(batch_size, seq_len)``;
- it stops on its own once ``run.time_left() <= 0`` or the next batch would exceed
  ``run.tokens_left()``;
- it fails fast (raises) on a non-finite loss;
- it returns an ``nn.Module`` in eval mode mapping a LongTensor (B, T <= run.seq_len) to
  logits (B, T, run.vocab_size), plain PyTorch (no compiled wrapper), causal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Knobs. The preset for the run's device is picked in train(); shared knobs below it.

CPU = dict(
    N_LAYER=4,  # transformer blocks
    N_HEAD=4,  # attention heads (N_EMBD must divide by it)
    N_EMBD=64,  # residual stream width: on 2-4 cores a narrow model sees more tokens
    BATCH_SIZE=4,  # sequences per step: many small steps beat few big ones in a short run
    SEQ_LEN=0,  # training context; 0 = run.seq_len, the evaluation context
    LR=6e-3,  # peak learning rate: small models and short budgets like it high
    THREADS=0,  # torch intra-op threads; 0 = leave PyTorch's default (one per core)
    BF16=False,  # bf16 autocast: only pays on CPUs with native bf16 matmuls
    COMPILE=False,  # torch.compile: its warm-up costs more than it saves in a short CPU run
    FUSED_ADAMW=True,  # one fused kernel for the whole AdamW update
)

CUDA = dict(
    N_LAYER=6,
    N_HEAD=6,
    N_EMBD=384,
    BATCH_SIZE=64,
    SEQ_LEN=0,
    LR=1e-3,
    THREADS=0,
    BF16=True,  # tensor cores; the loss is still computed in fp32 (see train)
    COMPILE=True,  # fuses the small ops; warmed up before the budget clock starts
    FUSED_ADAMW=True,
)

WEIGHT_DECAY = 0.1  # AdamW decay on matrices only (not on norms or biases)
BETAS = (0.9, 0.95)  # AdamW betas, as in nanoGPT
GRAD_CLIP = 1.0  # clip the global grad norm; 0 disables
WARMUP = 0.03  # fraction of the budget spent warming the learning rate up linearly
MIN_LR_FRAC = 0.1  # cosine decay ends at LR * MIN_LR_FRAC when the budget runs out
LOG_EVERY = 50  # steps between progress lines


# ----------------------------------------------------------------------------------------------
# Model: token embeddings, pre-norm blocks with rotary attention, final LayerNorm, tied head.


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding: rotate channel pairs by an angle that grows with position."""
    a, b = x.chunk(2, dim=-1)
    # the angles are fp32 buffers; under bf16 autocast q and k go back to bf16 like v
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim) for the fused attention kernel
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cos, sin)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        half = n_embd // n_head // 2
        angles = torch.outer(torch.arange(block_size).float(),
                             10000.0 ** (-torch.arange(half).float() / half))
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying: fewer parameters, same quality
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections so the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok_emb(idx)
        cos, sin = self.cos[:T], self.sin[:T]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.ln_f(x))


# ----------------------------------------------------------------------------------------------
# Optimizer and schedule.


def make_optimizer(model: nn.Module, lr: float, fused: bool) -> torch.optim.AdamW:
    # decay the matrices (>= 2-D: linears, embeddings); leave LayerNorm gains and biases alone
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, fused=fused)


def lr_at(progress: float, peak: float) -> float:
    """Linear warmup, then cosine decay to MIN_LR_FRAC * peak at progress 1."""
    if progress < WARMUP:
        return peak * max(progress, 0.01 * WARMUP) / WARMUP
    t = min((progress - WARMUP) / (1.0 - WARMUP), 1.0)
    return peak * (MIN_LR_FRAC + (1.0 - MIN_LR_FRAC) * 0.5 * (1.0 + math.cos(math.pi * t)))


class Progress:
    """Progress through the budget: the larger of the time and token fractions used.

    The budget is either wall-clock time or tokens (the other side reports inf), so the
    schedule reads whichever one is finite. The totals are taken right after the first batch,
    since the harness starts its clock there.
    """

    def __init__(self, run: Any, first_batch_tokens: int) -> None:
        self.run = run
        self.time_total = run.time_left()
        self.tokens_total = run.tokens_left() + first_batch_tokens

    def progress(self) -> float:
        done = 0.0
        if math.isfinite(self.time_total) and self.time_total > 0:
            done = max(done, 1.0 - self.run.time_left() / self.time_total)
        if math.isfinite(self.tokens_total) and self.tokens_total > 0:
            done = max(done, 1.0 - self.run.tokens_left() / self.tokens_total)
        return min(max(done, 0.0), 1.0)

    def exhausted(self, next_batch_tokens: int) -> bool:
        return self.run.time_left() <= 0 or self.run.tokens_left() < next_batch_tokens


# ----------------------------------------------------------------------------------------------
# Training loop.


def train(run: Any) -> nn.Module:
    cfg = CUDA if str(run.device).startswith("cuda") else CPU
    device = run.device
    if cfg["THREADS"]:
        torch.set_num_threads(cfg["THREADS"])
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any fp32 matmul left over
        torch.backends.cudnn.allow_tf32 = True

    seq_len = cfg["SEQ_LEN"] or run.seq_len
    batch_size = cfg["BATCH_SIZE"]
    batch_tokens = batch_size * seq_len
    # the model must accept evaluation windows of run.seq_len
    block_size = max(seq_len, run.seq_len)
    model = GPT(run.vocab_size, block_size, cfg["N_LAYER"], cfg["N_HEAD"], cfg["N_EMBD"])
    model.to(device).train()
    optimizer = make_optimizer(model, cfg["LR"], fused=cfg["FUSED_ADAMW"])
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cfg["BF16"])

    fast_model: nn.Module = torch.compile(model) if cfg["COMPILE"] else model  # type: ignore[assignment]

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = fast_model(x)
        # cross-entropy in fp32: bf16 log-softmax over 256 classes loses precision
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))

    if cfg["COMPILE"]:
        # compile on a dummy batch now: the harness starts the budget clock at the first
        # get_batch, so the warm-up is setup time. No optimizer step: the weights stay as is.
        dummy = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
        loss_of(dummy, dummy).backward()
        optimizer.zero_grad(set_to_none=True)

    if run.tokens_left() < batch_tokens:
        return model.eval()  # not even one batch fits the budget
    x, y = run.get_batch(batch_size, seq_len)
    budget = Progress(run, batch_tokens)
    step = 0
    while True:
        progress = budget.progress()
        lr = lr_at(progress, cfg["LR"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_of(x, y)
        loss.backward()
        if GRAD_CLIP:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        loss_value = loss.item()  # one sync per step: cheap here, and NaNs are caught at once
        if not math.isfinite(loss_value):
            run.log(step=step, loss=loss_value)  # the harness records it as a NaN failure
            raise FloatingPointError(f"nan loss (step {step}: {loss_value})")
        if step % LOG_EVERY == 0:
            run.log(step=step, loss=round(loss_value, 4), lr=lr, progress=round(progress, 3))

        if budget.exhausted(batch_tokens):
            break
        x, y = run.get_batch(batch_size, seq_len)

    return model.eval()
