"""The evaluation process (``--phase eval``): trusted code only, no agent code, no training side.

It loads and checks the artifact (:class:`autoresearch.harness.graph.GraphModel`), scores the
fixed validation windows itself, and runs the causality probe: rows of real validation text
whose tail is replaced must score exactly as before the cut (log-probabilities, every row
index, fresh cuts each time; docs/integrity.md says what that bounds).
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoresearch import mfu
from autoresearch.harness import (
    HarnessFailure,
    InvalidModel,
    NonFiniteLoss,
    NotCausal,
    describe,
    eval_plan,
    seed_everything,
)
from autoresearch.harness.graph import GraphModel
from autoresearch.metrics import EvalReport
from autoresearch.models import RunStatus

# device kind -> rows of the causality probe per evaluation (whole probe batches of the
# device's evaluation batch size; see docs/integrity.md for what they bound)
PROBE_ROWS = {"cpu": 128, "mps": 256, "cuda": 1024}
PROBE_TOLERANCE = 1e-3  # nats: how far a kept position's log-probabilities may move
LOGP_FLOOR = -50.0  # log-probabilities below this (p < 2e-22) are compared as equal to it


def eval_windows(val: torch.Tensor, batch: int, seq_len: int, max_tokens: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation batches: contiguous, non-overlapping windows of seq_len tokens.
    Batch k holds windows k, k+n, k+2n, ... so that no row is the continuation of another."""
    n_windows = min(max_tokens // seq_len, (len(val) - 1) // seq_len) // batch * batch
    if n_windows == 0:
        raise HarnessFailure(f"the validation split ({len(val):,} tokens) is too small for "
                             f"one evaluation batch of {batch}x{seq_len}")
    n = n_windows // batch
    batches = []
    for k in range(n):
        starts = torch.arange(k, n_windows, n) * seq_len
        idx = starts[:, None] + torch.arange(seq_len + 1)
        windows = val[idx].to(torch.long)
        batches.append((windows[:, :-1], windows[:, 1:]))
    return batches


def check_logits(logits: Any, shape: tuple[int, ...], where: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != shape:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InvalidModel(f"the model returned {got} on {where}, expected logits of shape "
                           f"(B, T, vocab) = {shape}")
    if logits.is_complex():
        raise InvalidModel(f"the model returned complex logits on {where}")
    logits = logits.float()
    if not torch.isfinite(logits).all():
        raise NonFiniteLoss(f"the model's logits are not finite (NaN or inf) on {where}")
    return logits


@dataclass(frozen=True)
class Probe:
    """One batch of the causality probe. Row r is evaluation window ``windows[r]`` (in batch
    ``where[r][0]``, row ``where[r][1]``) with every token from ``cuts[r]`` on replaced by text
    from another window; positions before the cut must score exactly as in the evaluation."""

    x: torch.Tensor
    windows: list[int]
    where: list[tuple[int, int]]
    cuts: list[int]


def plan_probes(batches: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> list[Probe]:
    """The probe's batches: ``rows`` (window, cut) pairs drawn afresh each evaluation (a
    generator seeded from the OS, not from anything the model could know), each window
    placed at a row of the probe batch other than its own in evaluation and with other
    neighbours; every row index of a batch is probed. The token at the cut always differs
    from the original one, so a look at the next token shows."""
    gen = torch.Generator().manual_seed(secrets.randbits(62))
    batch, seq_len = batches[0][0].shape
    n = len(batches) * batch
    probes = []
    for _ in range(max(1, rows // batch)):
        picks = torch.randint(0, n, (batch,), generator=gen).tolist()
        others = torch.randint(0, n, (batch,), generator=gen).tolist()
        cuts = torch.randint(1, seq_len, (batch,), generator=gen).tolist()
        shift = torch.randint(1, 256, (batch,), generator=gen).tolist()
        rows_x = []
        where = [(w % len(batches), w // len(batches)) for w in picks]
        for r, (w, o, c) in enumerate(zip(picks, others, cuts, strict=True)):
            k, i = where[r]
            ok, oi = o % len(batches), o // len(batches)
            x = batches[k][0][i].clone()
            tail = batches[ok][0][oi][c:].clone()
            if o == w or tail[0] == x[c]:
                tail[0] = (x[c] + shift[r]) % 256
            x[c:] = tail
            rows_x.append(x)
        # the probe batch's rows in an order that moves each window off its own row index
        order = torch.randperm(batch, generator=gen).tolist()
        order = [(j + 1) % batch for j in order] if batch > 1 and all(
            where[j][1] == r for r, j in enumerate(order)) else order
        probes.append(Probe(torch.stack([rows_x[j] for j in order]), [picks[j] for j in order],
                            [where[j] for j in order], [cuts[j] for j in order]))
    return probes


def check_causal(probe: Probe, moved: torch.Tensor, clean: dict[int, torch.Tensor]) -> None:
    """Each probe row's log-probabilities before its cut must equal the evaluation's."""
    for r, (w, cut) in enumerate(zip(probe.windows, probe.cuts, strict=True)):
        before = clean[w][:cut]
        after = torch.log_softmax(moved[r, :cut].double(), dim=-1).clamp_min(LOGP_FLOOR)
        diff = (after - before).abs().amax(dim=-1)
        if bool((diff > PROBE_TOLERANCE).any()):
            pos = int((diff > PROBE_TOLERANCE).nonzero()[0])
            k, i = probe.where[r]
            raise NotCausal(
                f"the log-probabilities at position {pos} of validation window {w} moved by "
                f"{float(diff[pos]):.3g} nats when the tokens from position {cut} on changed "
                f"(and it sat at row {r} of the probe batch, not row {i} of batch {k}): the "
                "model looks ahead or across the batch")


def load_splits(data: Path, expect_sha256: str | None, test: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The validation split (and, with ``test``, the test split), after checking the dataset
    is the byte-level one it claims to be (and, given its identity, that nobody changed it
    since the measurement started). The test split's bytes are hashed for that check on
    every evaluation, but returned (to be scored) only when asked for."""
    from autoresearch.data import files_identity, load_prepared

    prepared = load_prepared(data)
    if prepared.vocab_size != 256 or prepared.bytes_per_token != 1.0:
        raise HarnessFailure(f"{data} is not a byte-level dataset (vocab 256, 1 byte/token)")
    if test and not prepared.has_test:
        raise HarnessFailure(f"{data} has no test split (prepared before test splits): "
                             "prepare the dataset again for one")
    train, val = (data / "train.bin").read_bytes(), (data / "val.bin").read_bytes()
    held = (data / "test.bin").read_bytes() if prepared.has_test and test else None
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    if prepared.has_test and not test:  # the identity covers it: hash it without keeping it
        sha = files_identity(meta, train, val, (data / "test.bin").read_bytes())
    else:
        sha = files_identity(meta, train, val, held)
    if sha != (expect_sha256 or prepared.sha256):
        raise HarnessFailure(f"{data} changed: its identity is {sha[:16]}…, expected "
                             f"{(expect_sha256 or prepared.sha256)[:16]}…")
    return _tensor(val), None if held is None else _tensor(held)


def _tensor(raw: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def load_val(data: Path, expect_sha256: str | None) -> torch.Tensor:
    """The validation split, checked (``load_splits``)."""
    return load_splits(data, expect_sha256)[0]


def evaluate(artifact: Path, data: Path, device: str, seq_len: int,
             expect_sha256: str | None = None, test: bool = False) -> EvalReport:
    """Load the exported model, check it, and score it on the fixed validation windows (and,
    with ``test``, on the test split's windows too, laid out the same way)."""
    val_split, test_split = load_splits(data, expect_sha256, test)
    val = val_split.to(device)
    vocab = 256
    batch, max_tokens = eval_plan(device)
    batches = eval_windows(val, batch, seq_len, max_tokens)
    model = GraphModel(artifact, device)
    shape = (batch, seq_len, vocab)
    probes = plan_probes(batches, PROBE_ROWS.get(device.split(":")[0], PROBE_ROWS["cpu"]))
    probed = {w for p in probes for w in p.windows}
    clean: dict[int, torch.Tensor] = {}  # window -> its log-probabilities in evaluation

    def logits_of(x: torch.Tensor, where: str) -> torch.Tensor:
        with torch.inference_mode():  # per thread
            return check_logits(model(x), shape, where)

    def loss_of(k: int) -> float:
        x, y = batches[k]
        logits = logits_of(x, f"validation batch {k}")
        for i in range(batch):
            w = i * len(batches) + k
            if w in probed:
                clean[w] = torch.log_softmax(logits[i].double(), dim=-1).clamp_min(LOGP_FLOOR)
        with torch.inference_mode():
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        return float(loss)

    # On a CPU the batches run side by side, one thread each, rather than one at a time with
    # every thread on each small operator: with another process on the same cores (a warm
    # start importing torch, another job), threads that meet after every operator spend most
    # of their time waiting for one another (tiny model: 0.27 s alone, 2-6 s so). The same
    # windows, graph and probe; losses are added in batch order.
    threads = torch.get_num_threads()
    workers = threads if device == "cpu" else 1
    torch.set_num_threads(1 if workers > 1 else threads)
    with ThreadPoolExecutor(workers) as pool:
        try:
            losses = list(pool.map(loss_of, range(len(batches))))
            moved = pool.map(logits_of, [p.x for p in probes],
                             ["the causality probe"] * len(probes))
            for probe, m in zip(probes, moved, strict=True):
                check_causal(probe, m, clean)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            torch.set_num_threads(threads)
    total = 0.0
    for loss in losses:
        total += loss
    test_loss = None
    if test_split is not None:  # the same model, windows of the held-out text (report only)
        held = eval_windows(test_split.to(device), batch, seq_len, max_tokens)
        test_total = 0.0
        for x, y in held:
            logits = logits_of(x, "a test batch")
            with torch.inference_mode():
                test_total += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"))
        test_loss = test_total / (len(held) * batch * seq_len)
        if not math.isfinite(test_loss):
            raise NonFiniteLoss(f"the test loss is {test_loss}")
    flops = None  # the forward FLOPs of the graph itself, on a GPU (for MFU: mfu.py)
    if device.startswith("cuda"):
        with torch.inference_mode():
            flops = mfu.forward_flops_per_token(model, batches[0][0])
    tokens = len(batches) * batch * seq_len
    val_loss = total / tokens
    if not math.isfinite(val_loss):
        raise NonFiniteLoss(f"the validation loss is {val_loss}")
    return EvalReport(status=RunStatus.ok, val_loss=val_loss, eval_tokens=tokens,
                      val_bpb=val_loss / math.log(2),  # one token is one byte
                      seq_len=seq_len, params=model.params, causal_ok=True,
                      flops_per_token=flops, device_name=mfu.device_name(device),
                      test_loss=test_loss,
                      test_bpb=None if test_loss is None else test_loss / math.log(2))


def eval_phase(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    seed_everything(0)
    try:
        report = evaluate(Path(args.artifact), Path(args.data), args.device, args.seq_len,
                          args.expect_sha256, test=getattr(args, "split", "val") == "test")
    except Exception as e:
        status = e.status if isinstance(e, HarnessFailure) else RunStatus.crash
        report = EvalReport(status=status, error=describe(e), seq_len=args.seq_len,
                            causal_ok=False if status == RunStatus.not_causal else None)
    report.eval_seconds = time.monotonic() - t0
    report.torch_version = torch.__version__
    report.ready_at = getattr(args, "ready_at", 0.0)
    text = report.model_dump_json(indent=2)
    if args.out.startswith("fd:"):  # the runner's private pipe
        with open(int(args.out[3:]), "w", encoding="utf-8") as pipe:
            pipe.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    print(f"[harness] evaluation: {report.status.value}, val_bpb {report.val_bpb} "
          f"({report.eval_tokens:,} tokens, {report.eval_seconds:.1f} s)", flush=True)
    return 0 if report.status == RunStatus.ok else 1


