"""The evaluation process (``--phase eval``): trusted code only, no agent code, no training side.

It loads the artifact (:class:`autoresearch.harness.export.GraphModel`), checks the logits,
runs the causality probe, and computes the loss over fixed validation windows itself.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from autoresearch.harness import (
    HarnessFailure,
    InvalidModel,
    NonFiniteLoss,
    NotCausal,
    describe,
    eval_plan,
    seed_everything,
)
from autoresearch.harness.export import GraphModel
from autoresearch.metrics import EvalReport
from autoresearch.models import RunStatus

PROBE_PASSES = 4  # forward passes of the causality probe (each checks B-1 random cut points)
PROBE_TOLERANCE = 1e-3  # logits may move this much (abs and rel) from float noise alone


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
    logits = logits.float()
    if not torch.isfinite(logits).all():
        raise NonFiniteLoss(f"the model's logits are not finite (NaN or inf) on {where}")
    return logits


def probe_inputs(x: torch.Tensor, other: torch.Tensor
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The causality probe's inputs: each pass changes the tokens at positions >= t (real text
    from elsewhere in the split, at random cut points drawn afresh each evaluation); row 0 is
    never changed. (input, cuts, kept positions) per pass."""
    gen = torch.Generator().manual_seed(secrets.randbits(62))
    batch, seq_len = x.shape
    passes = []
    for p in range(PROBE_PASSES):
        cuts = torch.randint(1, seq_len, (batch,), generator=gen)
        cuts[0] = seq_len
        keep = (torch.arange(seq_len)[None, :] < cuts[:, None]).to(x.device)
        passes.append((torch.where(keep, x, other.roll(p + 1, dims=0)), cuts, keep))
    return passes


def check_causal(moved: torch.Tensor, logits: torch.Tensor, cuts: torch.Tensor,
                 keep: torch.Tensor) -> None:
    """Logits at kept positions must not move when later tokens (or other rows) changed."""
    diff = (moved - logits).abs()
    bad = (diff > PROBE_TOLERANCE * (1 + logits.abs())) & keep[..., None]
    if bad.any():
        row, pos, _ = (int(i) for i in bad.nonzero()[0])
        where = ("when other rows of the batch changed" if row == 0 else
                 f"when tokens at positions >= {int(cuts[row])} changed")
        raise NotCausal(f"the logits at position {pos} (row {row}) changed by "
                        f"{float(diff[row, pos].max()):.3g} {where}: the model looks ahead")


def load_val(data: Path, expect_sha256: str | None) -> torch.Tensor:
    """The validation split, after checking the dataset is the byte-level one it claims to be
    (and, given its sha256, that nobody changed it since the measurement started)."""
    from autoresearch.data import load_prepared

    prepared = load_prepared(data)
    if prepared.vocab_size != 256 or prepared.bytes_per_token != 1.0:
        raise HarnessFailure(f"{data} is not a byte-level dataset (vocab 256, 1 byte/token)")
    train, val = (data / "train.bin").read_bytes(), (data / "val.bin").read_bytes()
    sha = hashlib.sha256(train + val).hexdigest()
    if sha != (expect_sha256 or prepared.sha256):
        raise HarnessFailure(f"{data} changed: its text's sha256 is {sha[:16]}…, expected "
                             f"{(expect_sha256 or prepared.sha256)[:16]}…")
    return torch.frombuffer(bytearray(val), dtype=torch.uint8)


def evaluate(artifact: Path, data: Path, device: str, seq_len: int,
             expect_sha256: str | None = None) -> EvalReport:
    """Load the exported model and score it on the fixed validation windows."""
    val = load_val(data, expect_sha256).to(device)
    vocab = 256
    batch, max_tokens = eval_plan(device)
    batches = eval_windows(val, batch, seq_len, max_tokens)
    model = GraphModel(artifact, device)
    shape = (batch, seq_len, vocab)
    probes = probe_inputs(batches[0][0], batches[-1][0])

    def logits_of(x: torch.Tensor, where: str) -> torch.Tensor:
        with torch.inference_mode():  # per thread
            return check_logits(model(x), shape, where)

    def loss_of(k: int) -> tuple[float, torch.Tensor | None]:
        x, y = batches[k]
        logits = logits_of(x, f"validation batch {k}")
        with torch.inference_mode():
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        return float(loss), logits if k == 0 else None

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
            losses = pool.map(loss_of, range(len(batches)))
            moved = pool.map(logits_of, [p for p, _, _ in probes],
                             ["the causality probe"] * len(probes))
            first, logits = next(losses)  # batch 0's failure first, then the probe's
            assert logits is not None
            for m, (_, cuts, keep) in zip(moved, probes, strict=True):
                check_causal(m, logits, cuts, keep)
            total = first
            for loss, _ in losses:
                total += loss
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            torch.set_num_threads(threads)
    tokens = len(batches) * batch * seq_len
    val_loss = total / tokens
    if not math.isfinite(val_loss):
        raise NonFiniteLoss(f"the validation loss is {val_loss}")
    return EvalReport(status=RunStatus.ok, val_loss=val_loss, eval_tokens=tokens,
                      val_bpb=val_loss / math.log(2),  # one token is one byte
                      seq_len=seq_len, params=model.params, causal_ok=True)


def eval_phase(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    seed_everything(0)
    try:
        report = evaluate(Path(args.artifact), Path(args.data), args.device, args.seq_len,
                          args.expect_sha256)
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


