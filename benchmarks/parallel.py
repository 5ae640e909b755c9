"""Throughput of the scheduler: experiments per hour and how busy the workers were.

Runs the real loop (real training and evaluation processes) on the loop tests' bigram source
under a token budget, with the mock agent answering after a simulated model latency, three
ways side by side in one run:

- 1 worker, sequential (``--no-pipeline``): the agent thinks while the device idles, as the
  loop did before the scheduler;
- 1 worker, pipelined: the next proposal is asked for while the current experiment trains;
- 2 workers, pipelined (each job gets half the CPU cores as threads).

For each it prints experiments/hour over the candidates (the baseline left out) and the
fraction of wall time the workers spent measuring ("busy": inside a worker's measure, summed
over workers / (wall x workers)). Targets (issue 8): busy >= 95% pipelined; 2 workers >= 1.8x
the experiments/hour of 1 where the cores allow it. On a 2-core machine two CPU jobs share the
cores, so the 2-worker figure measures contention as much as the scheduler.

``--backend ray`` adds the same 2-worker run through a local Ray head that the benchmark
starts (and stops): the overhead per experiment of Ray vs the local workers.

    python benchmarks/parallel.py [--experiments 6] [--latency 5] [--tokens 30000]
        [--backend ray]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from autoresearch import loop as loop_mod
from autoresearch.agents.mock import MockAgent
from autoresearch.backends import Job, Worker, cpu_cores, local_workers
from autoresearch.config import Settings
from autoresearch.metrics import Metrics
from autoresearch.progress import PlainReporter
from autoresearch.store import Experiment, Store
from autoresearch.workspace import Workspace, init_workspace

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "tests" / "loop_source" / "train.py").read_text(encoding="utf-8")


class Timed:
    """A worker that records when it was busy."""

    def __init__(self, inner: Worker) -> None:
        self.inner = inner
        self.name = inner.name
        self.busy: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def measure(self, job: Job) -> Metrics:
        t0 = time.monotonic()
        try:
            return self.inner.measure(job)
        finally:
            with self.lock:
                self.busy.append((t0, time.monotonic()))

    def seconds(self) -> float:
        """Seconds spent measuring, in all."""
        with self.lock:
            return sum(b - a for a, b in self.busy)

    @property
    def shares_host_cores(self) -> bool:
        return self.inner.shares_host_cores

    def cancel(self) -> None:
        self.inner.cancel()

    def close(self) -> None:
        self.inner.close()


class Marks(PlainReporter):
    """Quiet; notes when the baseline was decided (the candidates' clock starts there)."""

    def __init__(self, console: Console) -> None:
        super().__init__(console, console)
        self.baseline_done: float | None = None

    def phase(self, *a: Any) -> None:
        pass

    def finished(self, exp: Experiment, best: float | None) -> None:
        if exp.kind == "baseline":
            self.baseline_done = time.monotonic()
        super().finished(exp, best)


@dataclass
class Result:
    label: str
    experiments: int
    seconds: float
    busy: float  # fraction of worker time spent measuring, after the baseline
    per_hour: float


def proposals(n: int) -> list[dict[str, Any]]:
    """Whole-file changes that change nothing the model learns (a comment): each applies to
    any champion and, under a token budget, ends discarded at its screen, as most proposals of
    a real run do; the champion stays put, so the figure is the scheduler's alone."""
    return [{"title": f"note {i}", "rationale": "",
             "edits": [{"path": "train.py", "content": f"# variant {i}\n{SOURCE}"}]}
            for i in range(n)]


def run(label: str, tmp: Path, args: argparse.Namespace, workers: int, pipeline: bool,
        make: Any = None) -> Result:
    ws_dir = tmp / label.replace(" ", "-").replace(",", "")
    init_workspace(ws_dir)
    (ws_dir / "baseline" / "train.py").write_text(SOURCE, encoding="utf-8")
    script = ws_dir.parent / f"{ws_dir.name}.json"
    # more entries than experiments: a winner ported onto a moved champion may ask again
    script.write_text(json.dumps(proposals(3 * args.experiments)), encoding="utf-8")
    settings = Settings.exactly(dict(
        workspace=ws_dir, agent="mock", script=script, token_budget=args.tokens,
        seeds=args.seeds, device="cpu", dataset=args.data, repairs=0, workers=workers,
        pipeline=pipeline))
    store = Store(settings.db_path)
    ws = Workspace(ws_dir)
    inner: list[Worker] = (make(workers, ws.experiments_dir) if make is not None
                           else list(local_workers(ws.experiments_dir, "cpu", workers, None)))
    pool = [Timed(w) for w in inner]
    reporter = Marks(Console(stderr=True, quiet=args.quiet))
    loop = loop_mod.start(settings, store, ws, MockAgent(script, latency=args.latency),
                          reporter, args.experiments, workers=list(pool))
    loop.execute()
    end = time.monotonic()
    start = reporter.baseline_done or end
    wall = end - start
    busy = sum(max(0.0, min(b, end) - max(a, start)) for w in pool for a, b in w.busy)
    done = store.count_candidates(loop.active.id)
    store.close()
    return Result(label, done, wall, busy / (wall * len(pool)) if wall else 0.0,
                  done * 3600 / wall if wall else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=6)
    ap.add_argument("--latency", type=float, default=5.0, help="seconds per agent answer")
    ap.add_argument("--tokens", type=int, default=30000, help="training tokens per job")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--backend", choices=["local", "ray"], default="local")
    ap.add_argument("--data", default="offline", help="a .txt path, or 'offline'")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="parallel-"))
    results: list[Result] = []
    try:
        results.append(run("1 worker, sequential", tmp, args, 1, False))
        results.append(run("1 worker, pipelined", tmp, args, 1, True))
        results.append(run("2 workers, pipelined", tmp, args, 2, True))
        if args.backend == "ray":
            from ray_overhead import local_head  # benchmarks/

            from autoresearch.backends.ray import ray_workers

            with local_head() as address:
                results.append(run("2 workers, pipelined, ray", tmp, args, 2, True,
                                   make=lambda n, folder: ray_workers(
                                       address, n, device="cpu", threads=1, folder=folder)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one = results[0].per_hour or 1.0
    print(f"scheduler throughput: {args.experiments} experiments x {args.seeds} seeds max, "
          f"{args.tokens:,} tokens per job, agent latency {args.latency:g} s, "
          f"{cpu_cores()} CPU cores")
    for r in results:
        print(f"  {r.label:<28} {r.per_hour:7.1f} experiments/hour ({r.per_hour / one:4.2f}x)"
              f"  busy {r.busy:6.1%}  ({r.experiments} experiments in {r.seconds:.0f} s)")
    local = next((r for r in results if r.label == "2 workers, pipelined"), None)
    ray = next((r for r in results if r.label.endswith("ray")), None)
    if local and ray and local.experiments and ray.experiments:
        extra = ray.seconds / ray.experiments - local.seconds / local.experiments
        print(f"  ray vs local (2 workers): {extra:+.2f} s per experiment")

if __name__ == "__main__":
    main()
