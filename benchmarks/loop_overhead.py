"""Orchestrator seconds per experiment, excluding training, as the history grows.

For each history size (10, 100, 1000 experiments already in the store) it runs the real loop
with the mock agent on a trivial source and a token budget, times every experiment end to end,
subtracts the time spent inside training jobs (runner.measure), and prints one line per size.
Target: <= 0.5 s per experiment, flat as history grows.

    python benchmarks/loop_overhead.py [--experiments 5] [--sizes 10 100 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from autoresearch import loop as loop_mod
from autoresearch import runner
from autoresearch.agents.mock import MockAgent
from autoresearch.config import Settings
from autoresearch.models import ExperimentStatus
from autoresearch.progress import PlainReporter
from autoresearch.store import Store
from autoresearch.workspace import Workspace, init_workspace

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "loop_source" / "train.py"


class Quiet(PlainReporter):
    def phase(self, *a: Any) -> None:
        pass

    def finished(self, *a: Any) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


def fill_history(store: Store, run_id: int, n: int) -> None:
    for i in range(n):
        e = store.add_experiment(run_id=run_id, kind="candidate", seq=i + 1,
                                 title=f"old attempt {i}", parent_commit="0" * 40)
        assert e.id is not None
        store.transition(e.id, ExperimentStatus.rejected, reason="history filler")
        store.add_call(run_id=run_id, experiment_id=e.id, provider="mock", model="x",
                       cost_usd=0.0, raw="{}")


def bench(size: int, experiments: int, tmp: Path) -> tuple[float, float]:
    ws_dir = tmp / f"ws{size}"
    init_workspace(ws_dir)
    shutil.copy(SOURCE, ws_dir / "baseline" / "train.py")
    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(" ".join(["the cat sat on the mat"] * 4000), encoding="utf-8")
    entries = [{"title": f"lr {i}", "rationale": "",
                "edits": [{"path": "train.py", "search": "LEARNING_RATE = 1e-5",
                           "replace": f"LEARNING_RATE = {i + 2}e-5"}]} for i in range(experiments)]
    script = tmp / f"script{size}.json"
    script.write_text(json.dumps(entries), encoding="utf-8")
    settings = Settings.exactly(dict(workspace=ws_dir, agent="mock", script=script,
                                     token_budget=512, seeds=1, device="cpu",
                                     dataset=str(corpus)))
    store = Store(settings.db_path)
    lp = loop_mod.ResearchLoop(settings, store, Workspace(ws_dir), MockAgent(script),
                               Quiet(None, Console(quiet=True)))
    run = lp.start(size + experiments)
    lp.measure_baseline()
    assert run.id is not None
    fill_history(store, run.id, size)

    training = 0.0
    real_measure = runner.measure

    def timed_measure(**kw: Any) -> Any:
        nonlocal training
        t0 = time.perf_counter()
        try:
            return real_measure(**kw)
        finally:
            training += time.perf_counter() - t0

    loop_mod.runner.measure = timed_measure  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        for _ in range(experiments):
            lp.iteration()
        total = time.perf_counter() - t0
    finally:
        loop_mod.runner.measure = real_measure  # type: ignore[assignment]
    store.close()
    return (total - training) / experiments, training / experiments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for size in args.sizes:
            overhead, train = bench(size, args.experiments, Path(d))
            print(f"history {size:>5}: orchestrator overhead {overhead:.3f} s/experiment "
                  f"(training jobs {train:.2f} s/experiment, excluded)")


if __name__ == "__main__":
    main()
