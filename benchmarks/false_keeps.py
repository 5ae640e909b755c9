"""False keeps: how often the keep rule keeps a change that changes nothing that matters.

Runs the real loop on CPU (mock agent, real training and evaluation processes) on a tiny
bigram source with N proposals that make no difference to the model's quality:

- ``text`` proposals edit only the text: a comment, a renamed variable, an unused constant,
  reordered imports. Under a token budget a CPU run is deterministic, so these give
  bit-identical results and neither rule keeps any: use a time budget to see the
  wall-clock noise (steps done in the budget vary with the machine's throughput).
- ``rng`` proposals change how the random stream is consumed, not what is trained: random
  numbers drawn and discarded, or a throwaway layer built first (which shifts the init of the
  real one), by a different amount in each proposal. They behave like a different seed: noise
  under any budget.

Every measurement the loop makes is kept in its store. The figure compares, on those same
measurements, our rule (decide.decide, as the loop applied it: stage by stage, the screen on
the first seed, the second stage, the final test on all seeds) with the naive rule
(keep_rules.naive_decide: keep when the first seed is lower than the champion's at all), both
against the champion the loop had at the time. It also prints the measurements the loop spent
per candidate (champion re-measurements included).

Under a time budget a candidate that survives the earlier stages is judged against the
champion re-measured alongside it (loop/trial.py), so "ours" includes that re-measurement; the
naive rule compares the first seed with the champion's stored value, as a careless loop would.

``--drift`` runs three loops in a row: a steady machine, then a CPU-bound background load
(benchmarks/cpu_load.py, two busy processes per core) kept on while the baseline is measured
and stopped at the first candidate, then the reverse (baseline idle, candidates loaded).

    python benchmarks/false_keeps.py [--experiments 20] [--seeds 3] [--drift]
        [--time-budget 2 | --token-budget 65536] [--proposals mixed|text|rng] [--data offline]
        [--workers 2]

``--workers 2`` runs two experiments at once, each job with half the cores (on this 2-core
machine: one thread each), proposals pipelined.

Prints one line per loop, e.g. ``false keeps: ours 0/20 (0.0%), naive 9/20 (45.0%)  [...]``;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cpu_load import CpuLoad
from keep_rules import naive_decide  # benchmarks/, this script's folder
from rich.console import Console

from autoresearch.agents.mock import MockAgent
from autoresearch.config import Settings
from autoresearch.loop import start
from autoresearch.models import ExperimentStatus, MeasurementRole, RunStatus
from autoresearch.progress import PlainReporter
from autoresearch.store import Store
from autoresearch.workspace import Workspace, init_workspace

ROOT = Path(__file__).resolve().parents[1]
# the loop tests' bigram model, with a learning rate at which it still learns when the budget
# ends, so the noise is that of a real (if tiny) training run
SOURCE = (ROOT / "tests" / "loop_source" / "train.py").read_text(encoding="utf-8")
for _knob, _value in (("LEARNING_RATE", "3e-3"), ("BATCH_SIZE", "16"), ("SEQ_LEN", "64")):
    SOURCE = re.sub(rf"^{_knob} = .*$", f"{_knob} = {_value}", SOURCE, count=1, flags=re.M)
TRAIN_LINE = "def train(run):\n"


def _comment(src: str, i: int) -> str:
    return src.replace(TRAIN_LINE, f"# the loop below is the whole training (note {i})\n"
                       + TRAIN_LINE, 1)


def _rename(src: str, i: int) -> str:
    return re.sub(r"\bopt\b", "optimizer", src)


def _unused_constant(src: str, i: int) -> str:
    return src.replace("SEQ_LEN = 64\n", f"SEQ_LEN = 64\nWARMUP_STEPS = {i}  # not used yet\n")


def _reorder_imports(src: str, i: int) -> str:
    return src.replace("import torch\nfrom torch import nn\n",
                       "from torch import nn\nimport torch\n")


# the RNG no-ops consume a different amount of the stream in each variant: under a token budget
# each is then a fresh draw of the init noise, not the same outcome again


def _draw_and_discard(src: str, i: int) -> str:
    return src.replace(TRAIN_LINE, TRAIN_LINE + f"    torch.rand({i})  # drawn and discarded\n", 1)


def _init_order(src: str, i: int) -> str:
    return src.replace(TRAIN_LINE, TRAIN_LINE + f"    nn.Linear({i}, 8)  # built first\n", 1)


NO_OPS = {
    "text": [("Add a comment", _comment), ("Rename opt to optimizer", _rename),
             ("Add an unused constant", _unused_constant), ("Reorder imports", _reorder_imports)],
    "rng": [("Draw and discard random numbers", _draw_and_discard),
            ("Build a throwaway layer first", _init_order)],
}
NO_OPS["mixed"] = [x for pair in zip(NO_OPS["text"], NO_OPS["rng"] * 2, strict=True)
                   for x in pair]
DESCRIBE = {
    "text": "text-only no-ops (comments, renames, an unused constant, reordered imports)",
    "rng": "RNG-consuming no-ops (discarded random draws, a throwaway layer built first)",
    "mixed": "text-only and RNG-consuming no-ops, alternating",
}


def proposals(kind: str, n: int) -> list[dict[str, Any]]:
    """n whole-file proposals, each functionally the baseline (so each applies to any champion
    the loop may have by then), each with a marker line that makes it differ from it."""
    out = []
    for i in range(n):
        title, change = NO_OPS[kind][i % len(NO_OPS[kind])]
        content = f"# variant {i + 1}: {title.lower()}\n" + change(SOURCE, i + 1)
        out.append({"title": f"{title} (#{i + 1})", "rationale": "changes nothing that matters",
                    "edits": [{"path": "train.py", "content": content}]})
    return out


class Progress(PlainReporter):
    """One line per finished experiment on stderr; phases are left out. With a ``load`` and a
    scenario it also starts and stops the background load: "baseline" keeps the machine busy
    while the baseline is measured, "candidates" from the first candidate on."""

    def __init__(self, console: Console, load: CpuLoad | None = None,
                 scenario: str = "steady") -> None:
        super().__init__(console, console)
        self.load, self.scenario = load, scenario

    def phase(self, exp_id: int, seq: int, title: str, phase: str) -> None:
        if self.load is None or self.scenario == "steady":
            return
        loaded = (seq == 0) == (self.scenario == "baseline")
        if loaded:
            self.load.start()
        else:
            self.load.stop()


SCENARIOS = {"steady": "steady machine", "baseline": "baseline loaded, candidates idle",
             "candidates": "baseline idle, candidates loaded"}


def run_benchmark(args: argparse.Namespace, tmp: Path, scenario: str = "steady"
                  ) -> dict[str, Any]:
    ws_dir = tmp / "ws"
    init_workspace(ws_dir)
    (ws_dir / "baseline" / "train.py").write_text(SOURCE, encoding="utf-8")
    script = tmp / "script.json"
    script.write_text(json.dumps(proposals(args.proposals, args.experiments)), encoding="utf-8")
    budget: dict[str, Any] = ({"token_budget": args.token_budget} if args.token_budget
                              else {"time_budget": args.time_budget})
    settings = Settings.exactly(dict(workspace=ws_dir, agent="mock", script=script,
                                     seeds=args.seeds, device="cpu", dataset=args.data,
                                     repairs=0, workers=args.workers, pipeline=True, **budget))
    store = Store(settings.db_path)
    errors = Console(stderr=True, quiet=args.quiet)
    t0 = time.monotonic()
    with CpuLoad() as load:
        loop = start(settings, store, Workspace(ws_dir), MockAgent(script),
                     Progress(errors, load, scenario), args.experiments)
        run = loop.execute()
    seconds = time.monotonic() - t0
    assert run.id is not None
    exps = store.experiments(run_id=run.id)
    seeds = run.seed_list
    ours = naive = measured = 0
    failed: list[str] = []
    keeps: list[str] = []  # our rule's false keeps, with their reasons
    champion: dict[int, float] = {}  # the champion's values when each candidate was measured

    def values(exp_id: int | None) -> dict[int, float]:
        assert exp_id is not None
        own = store.measurements(exp_id, role=MeasurementRole.candidate)
        return {m.seed: m.val_bpb for m in own
                if m.status == RunStatus.ok and m.val_bpb is not None}

    for exp in exps:
        if exp.kind == "baseline":
            champion = values(exp.id)
            continue
        if exp.kind != "candidate":
            continue
        if exp.status not in (ExperimentStatus.kept, ExperimentStatus.discarded):
            failed.append(f"#{exp.id} {exp.status.value}: {exp.reason}")
            continue
        measured += 1
        ours += exp.status == ExperimentStatus.kept
        verdict = naive_decide(values(exp.id), champion, seeds=seeds)
        naive += verdict.verdict == "keep"
        errors.print(f"  #{exp.id} {exp.title}: Δ seed {seeds[0]} {verdict.delta:+.4f}; "
                     f"ours {exp.status.value}, naive {verdict.verdict}", markup=False)
        if exp.status == ExperimentStatus.kept:
            champion = values(exp.id)
            keeps.append(f"#{exp.id} {exp.title} kept: {exp.reason}")
    spent = sum(len(store.measurements(e.id or 0)) for e in exps if e.kind == "candidate")
    store.close()
    return {"ours": ours, "naive": naive, "measured": measured, "failed": failed, "keeps": keeps,
            "per_candidate": spent / max(len([e for e in exps if e.kind == "candidate"]), 1),
            "noise": run.noise_std, "seconds": seconds, "budget": loop.active.budget.describe(),
            "dataset": run.dataset, "drifted": len(store.drifted(run.id))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=20, help="no-op proposals to measure")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per measurement (K)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, default=2.0,
                        help="seconds of training per measurement (default; shows the "
                        "wall-clock noise)")
    budget.add_argument("--token-budget", type=int, help="training tokens per measurement")
    ap.add_argument("--proposals", choices=sorted(NO_OPS), default="mixed",
                    help="which no-ops: text edits, RNG-consuming edits, or both")
    ap.add_argument("--data", default="offline", help="a .txt path, or 'offline'")
    ap.add_argument("--drift", action="store_true",
                    help="also run with a CPU-bound load started and stopped at set moments "
                    "(baseline loaded, candidates idle; and the reverse); one line each")
    ap.add_argument("--workers", type=int, default=1,
                    help="experiments at once (they split the CPU cores: threads = cores / N)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    if args.experiments < 1 or args.seeds < 2:
        ap.error("need --experiments >= 1 and --seeds >= 2 (the baseline's noise)")
    # one thread per training process: on a small shared CPU, two spinning OpenMP threads per
    # process make throughput (and so a time budget's noise) much worse than it needs to be
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.drift and args.token_budget:
        ap.error("--drift needs a time budget: under a token budget the machine's speed "
                 "does not change val_bpb")
    for scenario in ("steady", "baseline", "candidates") if args.drift else ("steady",):
        tmp = Path(tempfile.mkdtemp(prefix="false-keeps-"))
        try:
            r = run_benchmark(args, tmp, scenario)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        n = r["measured"]

        def pct(k: int, n: int = n) -> str:
            return f"{k}/{n} ({100 * k / n:.1f}%)" if n else f"{k}/0"

        noise = f"σ={r['noise']:.4f}" if r["noise"] is not None else "σ unknown"
        failed = f", {len(r['failed'])} failed runs left out" if r["failed"] else ""
        where = f"{SCENARIOS[scenario]}, {r['drifted']} measurements flagged as drift, " \
            if args.drift else ""
        print(f"false keeps: ours {pct(r['ours'])}, naive {pct(r['naive'])}; "
              f"{r['per_candidate']:.2f} measurements per candidate  [{where}"
              f"{args.workers} worker{'s' if args.workers > 1 else ''}, "
              f"K={args.seeds} seeds, {r['budget']} budget, {DESCRIBE[args.proposals]}, "
              f"baseline noise {noise}, data {Path(r['dataset']).name}, "
              f"{r['seconds']:.0f} s{failed}]", flush=True)
        for line in r["keeps"]:
            print(f"  {line}", flush=True)
        for line in r["failed"]:
            print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
