"""The machine's speed at a measurement: a fixed reference workload, and when two differ.

Under a wall-clock budget val_bpb depends on how fast the machine was at that moment (other
jobs, throttling, a shared GPU). The harness times this workload in the training process
just before the agent's code is imported and again after ``train()`` returns, on the same
device and thread settings as training, so the figure reflects what training saw without
depending on the agent's code. It is bookkeeping: the keep rule never trusts it (under a time
budget a promising candidate is confirmed against the champion re-measured alongside it, see
loop.py and docs/integrity.md); it tells the user when measurements stop being comparable.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

# (matrix size, multiplications per chunk): a chunk takes ~1 ms on an idle 2-core CPU
_PLAN = {"cpu": (256, 4), "cuda": (4096, 8), "mps": (1024, 8)}
WINDOW = 0.06  # seconds of wall time sampled: longer than a scheduler's slices, so a share
# of the CPU taken by other processes shows as a lower speed
DRIFT_FLOOR = 0.25  # a speed within ±25% of the reference is never called drift
DRIFT_SIGMAS = 4.0  # ... nor one within 4 standard deviations of the reference's own noise
DRIFT_CAP = 1.0  # ... but a factor of 2 (+100% / -50%) always is: a handful of reference
# speeds from a busy machine can have a spread that would excuse anything


def reference_speed(device: str, window: float = WINDOW) -> float:
    """GFLOP/s of matrix multiplications on ``device`` over ``window`` seconds of wall time.

    Uses its own generator, so the global RNG the agent's code will see is untouched."""
    import torch

    kind = device.split(":")[0]
    n, mults = _PLAN.get(kind, _PLAN["cpu"])
    dtype = torch.bfloat16 if kind == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.rand(n, n, generator=gen).to(device=device, dtype=dtype)

    def sync() -> None:
        if kind == "cuda":
            torch.cuda.synchronize()

    torch.mm(a, b)  # the first call pays for kernel selection
    sync()
    chunks, t0 = 0, time.perf_counter()
    while True:
        for _ in range(mults):
            torch.mm(a, b)
        sync()
        chunks += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= window:
            return 2 * n**3 * mults * chunks / elapsed / 1e9


def combined(before: float | None, after: float | None) -> float | None:
    """One speed for a measurement: the geometric mean of the speeds before and after."""
    known = [s for s in (before, after) if s is not None and s > 0 and math.isfinite(s)]
    return math.exp(statistics.fmean(math.log(s) for s in known)) if known else None


def tolerance(reference: Sequence[float]) -> float:
    """How far (as a log ratio) a speed may sit from ``reference``'s median before it counts
    as drift: the larger of ±25% and 4 standard deviations of the reference's own log speeds,
    never more than a factor of 2."""
    logs = [math.log(s) for s in reference if s > 0 and math.isfinite(s)]
    spread = statistics.stdev(logs) if len(logs) >= 2 else 0.0
    return min(max(math.log1p(DRIFT_FLOOR), DRIFT_SIGMAS * spread), math.log1p(DRIFT_CAP))


def ratio(speed: float | None, reference: Sequence[float]) -> float | None:
    """``speed`` relative to the median of ``reference`` (2.0: twice as fast)."""
    ref = [s for s in reference if s > 0 and math.isfinite(s)]
    if speed is None or not ref:
        return None
    return speed / statistics.median(ref)


def drifted(r: float | None, reference: Sequence[float]) -> bool:
    """Is a speed ratio ``r`` (from ``ratio``) beyond what the reference's noise allows?"""
    return r is not None and abs(math.log(r)) > tolerance(reference)


def describe(r: float) -> str:
    """'2.10x faster' / '0.48x the speed' for a ratio."""
    return f"{r:.2f}x faster" if r >= 1 else f"{r:.2f}x the speed"
