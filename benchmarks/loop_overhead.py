"""Orchestrator seconds per experiment, excluding training, as the history grows.

For each history size (10, 100, 1000, 10000 experiments already in the store) it runs the
real loop with the mock agent on a trivial source and a token budget, times every experiment
end to end, subtracts the time spent inside training jobs (its worker's measure) and in the
worker's close at the end of each pass (once per run, not per experiment), and prints
one line per size: "before" with the context built the old way (every experiment row of the
run, with its diff, proposal and rationale, read each iteration; ``full_read_context``),
"after" with today's ``loop.context.build``, on the same store in the same run.
Target (issue 12): <= 0.15 s per experiment at 1,000 and at 10,000 experiments.

    python benchmarks/loop_overhead.py [--experiments 5] [--sizes 10 100 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from parallel import Timed  # benchmarks/, this script's folder
from rich.console import Console

from autoresearch import curves as curves_mod
from autoresearch import loop as loop_mod
from autoresearch.agents.mock import MockAgent
from autoresearch.backends import LocalWorker
from autoresearch.config import Settings
from autoresearch.loop import ActiveRun
from autoresearch.loop import context as context_mod
from autoresearch.models import Context, ExperimentStatus, HistoryItem, Stats
from autoresearch.progress import PlainReporter
from autoresearch.store import AgentCall, Experiment, Store
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


class Closing(Timed):
    """Timed, plus how long its ``close`` took: ending the worker's warm processes when an
    ``execute`` returns is the worker's, once per run, not orchestrator work per experiment
    (with 5 experiments a pass it added about 0.01 s to each)."""

    def __init__(self, inner: LocalWorker) -> None:
        super().__init__(inner)
        self.closing = 0.0

    def close(self) -> None:
        t0 = time.perf_counter()
        try:
            super().close()
        finally:
            self.closing += time.perf_counter() - t0


def fill_history(store: Store, run_id: int, n: int) -> None:
    """n finished candidates, each with the texts a real one carries (a diff, a proposal, a
    rationale), one in ten discarded with a delta; written in one transaction."""
    diff = "--- a/train.py\n+++ b/train.py\n" + "-old line\n+new line\n" * 40
    with store._tx() as s:
        for i in range(n):
            discarded = i % 10 == 0
            e = Experiment(run_id=run_id, kind="candidate", seq=i + 1, title=f"old attempt {i}",
                           parent_commit="0" * 40, rationale="because " * 60, diff=diff,
                           proposal='{"title": "x", "edits": []}' + " " * 1500,
                           status=ExperimentStatus.discarded if discarded
                           else ExperimentStatus.rejected,
                           delta=0.01 if discarded else None, reason="history filler")
            s.add(e)
            s.flush()
            s.add(AgentCall(run_id=run_id, experiment_id=e.id, provider="mock", model="x",
                            cost_usd=0.0, raw="{}"))


def full_read_context(active: ActiveRun, files: dict[str, str]) -> Context:
    """The context as it was built before issue 12: every experiment of the run read in full."""
    run, store = active.run, active.store
    exps = store.experiments(run_id=active.id)
    baseline = next((e for e in exps if e.kind == "baseline" and e.val_bpb is not None), None)
    champ = next((e for e in exps if e.id == run.champion_experiment_id), None)
    noise = run.noise_std or 0.0
    n = len(active.seeds)
    history = [HistoryItem(id=e.id or 0, title=e.title, status=e.status.value, delta=e.delta,
                           reason=e.reason) for e in exps if e.kind == "candidate"]
    last_crash = next((e for e in reversed(exps) if e.status in (
        ExperimentStatus.crashed, ExperimentStatus.timeout, ExperimentStatus.invalid)), None)
    crash_log = None
    if last_crash is not None and last_crash.id is not None:
        crash_log = loop_mod.log_tail(active.ws.exp_dir(last_crash.id), 3000)
    return Context(
        files=files, budget=active.budget.describe(), device=run.device,
        baseline=Stats(mean=baseline.val_bpb, std=noise, n=n)
        if baseline and baseline.val_bpb is not None else None,
        champion=Stats(mean=champ.val_bpb, std=noise, n=n)
        if champ and champ.val_bpb is not None else None,
        history=history, last_crash_log=crash_log,
        curves=curves_mod.context_curves(exps, run.champion_experiment_id, active.ws.exp_dir,
                                         active.seeds))


def bench(size: int, experiments: int, tmp: Path) -> tuple[float, float, float]:
    """(overhead before, overhead after, training) seconds per experiment."""
    ws_dir = tmp / f"ws{size}"
    init_workspace(ws_dir)
    shutil.copy(SOURCE, ws_dir / "baseline" / "train.py")
    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(" ".join(["the cat sat on the mat"] * 4000), encoding="utf-8")
    entries = [{"title": f"lr {i}", "rationale": "",
                "edits": [{"path": "train.py", "search": "LEARNING_RATE = 1e-5",
                           "replace": f"LEARNING_RATE = {i + 2}e-5"}]}
               for i in range(2 * experiments)]
    script = tmp / f"script{size}.json"
    script.write_text(json.dumps(entries), encoding="utf-8")
    settings = Settings.exactly(dict(workspace=ws_dir, agent="mock", script=script,
                                     token_budget=512, seeds=1, device="cpu",
                                     dataset=str(corpus)))
    store = Store(settings.db_path)
    ws = Workspace(ws_dir)
    worker = Closing(LocalWorker("w0", ws.experiments_dir))  # adds up its jobs' seconds
    lp = loop_mod.start(settings, store, ws, MockAgent(script),
                        Quiet(None, Console(quiet=True)), size, workers=[worker])
    fill_history(store, lp.active.id, size)
    lp.execute()  # the baseline; the filled history already spends the budget

    def overhead() -> float:
        lp.active.update(experiments_planned=lp.run.experiments_planned + experiments)
        worker.busy.clear()
        worker.closing = 0.0
        t0 = time.perf_counter()
        lp.execute()
        return (time.perf_counter() - t0 - worker.seconds() - worker.closing) / experiments

    new_context = context_mod.build
    try:
        context_mod.build = full_read_context
        before = overhead()
        context_mod.build = new_context
        after = overhead()
    finally:
        context_mod.build = new_context
    store.close()
    return before, after, worker.seconds() / experiments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    args = ap.parse_args()
    print("orchestrator overhead per experiment (training jobs excluded); before: the context "
          "read every experiment in full, after: bounded reads")
    with tempfile.TemporaryDirectory() as d:
        for size in args.sizes:
            before, after, train = bench(size, args.experiments, Path(d))
            print(f"history {size:>6}: before {before:.3f} s  after {after:.3f} s "
                  f"(training jobs {train:.2f} s/experiment, excluded)", flush=True)


if __name__ == "__main__":
    main()
