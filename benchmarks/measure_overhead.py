"""Where a measurement's wall time goes, and how much of it the device waits for.

Runs measurements back to back through the real runner, three ways: "cold", each job starting
its own processes after the previous one ended (no slot: how every measurement ran before
issue 12); "spawned", through one ``runner.Slot`` that starts the next job's processes (and
imports torch in them) while the current one trains, the evaluation process waiting for the
artifact (the slot on a GPU); "forked", through a slot whose processes are forks of one fork
server per phase that imported torch once (the slot on CPU). Prints the median of
``--repeats`` measurements of each part of the breakdown side by side, for the tiny test
source at a 512-token budget and for the baseline at a 10 s budget. "exposed" is the wall
time of a measurement minus its training seconds, as the slot sees it. Target: exposed <= 2 s
here (~9 s before issue 12, when the processes' teardown and the lazy imports were also paid).

    python benchmarks/measure_overhead.py [--repeats 5] [--data FILE] [--only tiny|baseline]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from autoresearch import data, runner
from autoresearch.metrics import Budget, Metrics

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("start_seconds", "setup_seconds", "train_seconds", "export_seconds",
         "eval_start_seconds", "eval_seconds", "total_seconds", "exposed_seconds")
WAYS = ("cold", "spawned", "forked")
CASES = {"tiny": (ROOT / "tests" / "sources" / "tiny", Budget(kind="tokens", amount=512)),
         "baseline": (ROOT / "baseline", Budget(kind="time", amount=10))}


def series(source: Path, budget: Budget, prepared: data.PreparedData, repeats: int,
           way: str, tmp: Path) -> list[Metrics]:
    out: list[Metrics] = []
    warm = way != "cold"
    with runner.Slot(tmp / f"slot-{way}", fork=way == "forked") as slot:
        for i in range(repeats + (1 if warm else 0)):  # warm: the first job starts the chain
            m = runner.measure(runner.Job(source=source, data=prepared.path, budget=budget,
                                          seed=i, device="cpu", out_dir=tmp / f"{way}-{i}"),
                               slot=slot if warm else None)
            if not m.ok:
                raise SystemExit(f"measurement failed: {m.status.value}: {m.error}")
            if m.warm or not warm:
                out.append(m)
    return out[-repeats:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", default="offline", help="a dataset name or a text file")
    ap.add_argument("--only", choices=sorted(CASES), nargs="+", default=["tiny", "baseline"])
    args = ap.parse_args()
    prepared = data.prepare(args.data)
    for name in args.only:
        source, budget = CASES[name]
        with tempfile.TemporaryDirectory() as d:
            got = {way: series(source, budget, prepared, args.repeats, way, Path(d))
                   for way in WAYS}
        print(f"{name} source, {budget.describe()} budget, median of {args.repeats} "
              f"(seconds): {' | '.join(WAYS)}")
        for part in PARTS:
            cells = " | ".join(f"{statistics.median(getattr(m, part) for m in got[way]):6.2f}"
                               for way in WAYS)
            print(f"  {part.removesuffix('_seconds'):>10}: {cells}", flush=True)


if __name__ == "__main__":
    main()
