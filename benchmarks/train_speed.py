"""Throughput and quality of the baseline at a budget: one line per seed.

Trains ``baseline/train.py`` (or ``--source DIR``) through the real runner — the training
process, the export, the evaluation in a fresh process — and prints tokens/s, steps,
val_bpb, and how long evaluation took as a fraction of the budget.

    python benchmarks/train_speed.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/train_speed.py --data shakespeare --device cuda --time-budget 300
    python benchmarks/train_speed.py --data FILE --seeds 3 --against ../old-checkout

``--against DIR`` measures the same source through another checkout's runner (a git worktree
of an earlier commit, say) too, alternating the two seed by seed, each measurement in a fresh
process of its own checkout, and prints both throughputs and their ratio: the side-by-side
figure for "the new harness trains as fast as the old" on a shared machine.

Targets (issue 2): on a 2-core CPU at 60 s, val_bpb on tiny-shakespeare clearly below 3.0,
with evaluation at most ~10% of the budget. "overhead" is everything but training: both
processes starting, the setup before the first batch, the export and the evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from autoresearch import data, runner
from autoresearch.metrics import Budget

ROOT = Path(__file__).resolve().parents[1]
# one measurement through the runner of the checkout on PYTHONPATH, its Metrics as JSON
_ONE = """import sys
from pathlib import Path
from autoresearch import runner
from autoresearch.metrics import Budget
src, data, budget, seed, device, out = sys.argv[1:]
job = runner.Job(source=Path(src), data=Path(data), budget=Budget.model_validate_json(budget),
                 seed=int(seed), device=device, out_dir=Path(out))
print("METRICS " + runner.measure(job).model_dump_json())"""


def _measure_in(checkout: Path, source: Path, data_path: Path, budget: Budget, seed: int,
                device: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", _ONE, str(source), str(data_path),
                           budget.model_dump_json(), str(seed), device, str(out)],
                          cwd=checkout, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("METRICS "):
            return dict(json.loads(line.removeprefix("METRICS ")))
    raise SystemExit(f"train_speed: no metrics from {checkout}: {done.stderr[-2000:]}")


def against(args: argparse.Namespace, budget: Budget, prepared: data.PreparedData) -> int:
    """This checkout and ``args.against``, alternating seed by seed (which goes first
    alternates too), each measurement in a fresh process of its own checkout."""
    rates: dict[str, list[float]] = {"this": [], "other": []}
    sides = {"this": ROOT, "other": args.against.resolve()}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for seed in range(args.seeds):
            order = ["this", "other"] if seed % 2 == 0 else ["other", "this"]
            for side in order:
                m = _measure_in(sides[side], args.source.resolve(), prepared.path, budget, seed,
                                args.device, Path(tmp) / f"{side}-{seed}")
                if m["status"] != "ok":
                    print(f"{side} seed {seed}: {m['status']}: {m['error']}")
                    return 1
                tokens, seconds = float(m["train_tokens"]), float(m["train_seconds"])
                rates[side].append(tokens / seconds)
                print(f"train_speed: {side} ({sides[side]}) seed {seed}: "
                      f"{tokens / seconds:,.0f} tokens/s, {m['steps']:,} steps, "
                      f"val_bpb {m['val_bpb']:.4f}, train {seconds:.1f} s", flush=True)
    this, other = statistics.fmean(rates["this"]), statistics.fmean(rates["other"])
    print(f"train_speed: {budget.describe()}, {args.seeds} seeds each, alternating: this "
          f"{this:,.0f} tokens/s, other {other:,.0f} tokens/s, ratio {this / other:.3f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="shakespeare",
                    help="a dataset name (shakespeare, offline) or a text file / folder")
    ap.add_argument("--source", type=Path, default=ROOT / "baseline")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--time-budget", type=float, default=None, help="seconds (default 60)")
    group.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, one run each")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--against", type=Path, default=None,
                    help="another checkout to measure beside this one, seed by seed")
    args = ap.parse_args()

    if args.token_budget is not None:
        budget = Budget(kind="tokens", amount=args.token_budget)
    else:
        budget = Budget(kind="time", amount=args.time_budget or 60.0)
    prepared = data.prepare(args.data)
    if args.against is not None:
        return against(args, budget, prepared)
    bpbs = []
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for seed in range(args.seeds):
            m = runner.measure(runner.Job(source=args.source, data=prepared.path, budget=budget,
                                          seed=seed, device=args.device,
                                          out_dir=Path(tmp) / str(seed)))
            if not m.ok:
                print(f"seed {seed}: {m.status.value}: {(m.error or '').splitlines()[0]}")
                return 1
            bpbs.append(m.val_bpb or 0.0)
            tok_s = m.train_tokens / m.train_seconds if m.train_seconds else 0.0
            # everything but training: both processes starting, setup, export, evaluation
            overhead = m.total_seconds - m.train_seconds
            share = ""
            if budget.kind == "time":
                share = f" = {100 * overhead / budget.amount:.1f}% of the budget"
            print(f"train_speed: {prepared.name} {budget.describe()} seed {seed} on "
                  f"{m.device}: val_bpb {m.val_bpb:.4f}, {tok_s:,.0f} tokens/s, "
                  f"{m.steps:,} steps, {m.train_tokens:,} tokens, {m.params:,} params, "
                  f"eval {m.eval_seconds:.1f} s, export {m.export_seconds:.1f} s, "
                  f"overhead {overhead:.1f} s{share}, peak {m.peak_memory_mb:.0f} MB",
                  flush=True)
    if len(bpbs) > 1:
        print(f"train_speed: val_bpb mean {statistics.fmean(bpbs):.4f}, "
              f"sd {statistics.stdev(bpbs):.4f} over {len(bpbs)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
