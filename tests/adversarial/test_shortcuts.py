"""Shortcuts an optimizer might take, proposed to the real loop, end to end.

Two `autoresearch loop --agent mock --script FILE` runs, as the user would start them (the CLI
in a subprocess; real git, SQLite, training and evaluation processes), run side by side:

- ``tokens``: a 4,096-token budget, 2 seeds, no repairs. Every shortcut the guard refuses
  (they cost no training), with the three that need training among them: self-attention
  without the causal mask, a train() that ignores its token budget, and a fake metric written
  past the guard.
- ``time``: a 1 s budget, 2 seeds, a 25 s hard deadline (AUTORESEARCH_TIMEOUT): a train()
  that never returns, then one that keeps training after its budget.

Each shortcut must end with its status and a specific reason, never ``kept``; the champion
branch never moves; and the loop goes on after each one. The catalogue is in
shortcut_catalogue.py; shortcuts that get past the guard, and the holes, are in
test_past_the_guard.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from shortcut_catalogue import ALL, BASELINE, ROOT, Shortcut

from autoresearch.store import Experiment, Measurement, Run, Store
from autoresearch.workspace import init_workspace

pytestmark = pytest.mark.slow  # two real loops through the CLI

TOKENS = 4096
TIME_BUDGET = 1.0
TIMEOUT = 25.0  # the time run's hard deadline: its baseline's training process takes ~8 s
LOOP_LIMIT = 480.0  # seconds either loop may take before the suite gives up on it
FAILED = {"rejected", "crashed", "timeout", "invalid"}
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "bed"]


def corpus(path: Path) -> Path:
    """About 50 KB of random words: a bigram learns it quickly, val.bin is ~5 KB."""
    rng = random.Random(7)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(12_000)) + "\n", encoding="utf-8")
    return path


@dataclass
class LoopRun:
    name: str
    ws: Path
    shortcuts: list[Shortcut]
    output: str
    run: Run
    experiments: list[Experiment]
    measurements: dict[int, list[Measurement]]

    def experiment(self, title: str) -> Experiment:
        (exp,) = [e for e in self.experiments if e.title == title]
        return exp

    @property
    def baseline(self) -> Experiment:
        (exp,) = [e for e in self.experiments if e.kind == "baseline"]
        return exp

    @property
    def candidates(self) -> list[Experiment]:
        return [e for e in self.experiments if e.kind == "candidate"]


def _start(tmp: Path, name: str, options: list[str], env_extra: dict[str, str]
           ) -> tuple[subprocess.Popen[str], Path, list[Shortcut]]:
    shortcuts = [s for s in ALL if s.run == name]
    ws = tmp / name / "ws"
    init_workspace(ws)
    (ws / "baseline" / "train.py").write_text(BASELINE, encoding="utf-8")
    script = tmp / name / "script.jsonl"
    script.write_text("\n".join(json.dumps(s.proposal()) for s in shortcuts), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env |= {"AUTORESEARCH_CACHE": str(tmp / name / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
            **env_extra}
    cmd = [sys.executable, "-m", "autoresearch", "--workspace", str(ws), "loop",
           "--agent", "mock", "--script", str(script), "--budget", str(len(shortcuts)),
           "--seeds", "2", "--repairs", "0", "--device", "cpu",
           "--dataset", str(corpus(tmp / name / "corpus.txt")), *options]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp / name, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, ws, shortcuts


def _collect(name: str, proc: subprocess.Popen[str], ws: Path, shortcuts: list[Shortcut]
             ) -> LoopRun:
    try:
        output, _ = proc.communicate(timeout=LOOP_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the {name} loop ran past {LOOP_LIMIT:g} s:\n{output[-3000:]}")
    assert proc.returncode == 0, f"the {name} loop failed:\n{output[-3000:]}"
    store = Store(ws / "results.db")
    try:
        (run,) = store.runs()
        exps = store.experiments(run_id=run.id)
        measurements = {e.id: store.measurements(e.id) for e in exps if e.id is not None}
    finally:
        store.close()
    return LoopRun(name, ws, shortcuts, output, run, exps, measurements)


@pytest.fixture(scope="module")
def loops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LoopRun]]:
    """Both loop runs, started together (they mostly wait on their training processes)."""
    tmp = tmp_path_factory.mktemp("adversarial")
    started = {
        "tokens": _start(tmp, "tokens", ["--token-budget", str(TOKENS)], {}),
        "time": _start(tmp, "time", ["--time-budget", f"{TIME_BUDGET:g}"],
                       {"AUTORESEARCH_TIMEOUT": f"{TIMEOUT:g}"}),
    }
    try:
        yield {name: _collect(name, *parts) for name, parts in started.items()}
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _reason(exp: Experiment) -> str:
    return exp.reason or ""


@pytest.mark.parametrize("shortcut", ALL, ids=[s.key for s in ALL])
def test_each_shortcut_ends_with_its_status_and_a_specific_reason(
        loops: dict[str, LoopRun], shortcut: Shortcut) -> None:
    lr = loops[shortcut.run]
    exp = lr.experiment(shortcut.title)
    assert exp.status.value == shortcut.status, (exp.status.value, _reason(exp))
    for part in shortcut.reason:
        assert part in _reason(exp), f"{part!r} not in the recorded reason {_reason(exp)!r}"
    assert exp.status.value != "kept"
    if shortcut.status == "rejected":  # refused before anything was trained
        assert exp.commit is None and not lr.measurements[exp.id]  # type: ignore[index]
    else:  # it trained: its measurement says why it cannot count (or what it really scored)
        (m, *_) = lr.measurements[exp.id]  # type: ignore[index]
        assert exp.commit is not None and m.seed == lr.run.seed_list[0]


@pytest.mark.parametrize("name", ["tokens", "time"])
def test_the_champion_never_moves(loops: dict[str, LoopRun], name: str) -> None:
    lr = loops[name]
    assert not [e.title for e in lr.candidates if e.status.value == "kept"]
    assert lr.run.champion_commit == lr.run.baseline_commit
    assert lr.run.champion_experiment_id == lr.baseline.id
    repo = lr.ws / "experiments" / "repo"
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", lr.run.branch],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert head == lr.run.baseline_commit
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{lr.run.branch}:train.py"],
                           capture_output=True, text=True, check=True).stdout
    assert shown == BASELINE


@pytest.mark.parametrize("name", ["tokens", "time"])
def test_the_loop_goes_on_after_each_shortcut(loops: dict[str, LoopRun], name: str) -> None:
    lr = loops[name]
    # every proposal of the script became one experiment, in order, each with a final status
    assert [e.title for e in lr.candidates] == [s.title for s in lr.shortcuts]
    assert lr.run.state.value == "finished"
    assert all(e.status.value in FAILED | {"discarded"} for e in lr.candidates)
    # the proposals that had to train did, and at least one of them after a failure
    trained = [i for i, s in enumerate(lr.shortcuts) if s.status != "rejected"]
    for i in trained:
        assert lr.measurements[lr.candidates[i].id], lr.shortcuts[i].key  # type: ignore[index]
    failures = [i for i, e in enumerate(lr.candidates) if e.status.value in FAILED]
    assert failures and failures[0] < trained[-1]
