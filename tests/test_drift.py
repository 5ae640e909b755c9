"""A kept change survives a machine that speeds up or slows down (wall-clock budgets).

The load is real: busy processes started while the baseline is measured and stopped when the
first candidate starts training, so the baseline ran on a slow machine and the candidates on
an idle one — the situation in which a null change used to be kept.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import bigram_corpus
from rich.console import Console

from autoresearch import speed
from autoresearch.agents.mock import MockAgent
from autoresearch.config import Settings
from autoresearch.decide import Reproduction
from autoresearch.loop import start
from autoresearch.loop.drift import machine_note
from autoresearch.metrics import Metrics
from autoresearch.models import ExperimentStatus as ES
from autoresearch.models import RunStatus
from autoresearch.progress import PlainReporter
from autoresearch.store import Store
from autoresearch.workspace import Workspace, init_workspace
from benchmarks.cpu_load import CpuLoad

LOOP_SOURCE = Path(__file__).parent / "loop_source" / "train.py"
# a learning rate at which the bigram model is still learning when a 2 s budget ends, so the
# steps a slow machine loses show in val_bpb
SOURCE = re.sub(r"^LEARNING_RATE = .*$", "LEARNING_RATE = 3e-4",
                LOOP_SOURCE.read_text(encoding="utf-8"), count=1, flags=re.M)
NULL = {"title": "Add a comment", "rationale": "changes nothing",
        "edits": [{"path": "train.py", "search": "def train(run):",
                   "replace": "# the whole training loop\ndef train(run):"}]}
BETTER = {"title": "Raise the learning rate", "rationale": "3e-4 learns slowly",
          "edits": [{"path": "train.py", "search": "LEARNING_RATE = 3e-4",
                     "replace": "LEARNING_RATE = 3e-2"}]}


class LoadedBaseline(PlainReporter):
    """Keeps the machine busy until the first candidate starts; collects the loop's notices."""

    def __init__(self, load: CpuLoad) -> None:
        quiet = Console(quiet=True)
        super().__init__(quiet, quiet)
        self.load = load
        self.notices: list[str] = []

    def notice(self, message: str) -> None:
        self.notices.append(message)

    def phase(self, exp_id: int, seq: int, title: str, phase: str) -> None:
        if seq > 0:
            self.load.stop()


def run_loop(tmp: Path, budget: dict[str, Any]) -> tuple[Store, LoadedBaseline, int]:
    ws = tmp / "ws"
    init_workspace(ws)
    (ws / "baseline" / "train.py").write_text(SOURCE, encoding="utf-8")
    script = tmp / "script.json"
    script.write_text(json.dumps([NULL, BETTER]), encoding="utf-8")
    corpus = bigram_corpus(tmp / "corpus.txt")
    settings = Settings.exactly(dict(workspace=ws, agent="mock", script=script, seeds=2,
                                     device="cpu", dataset=str(corpus), repairs=0, **budget))
    store = Store(settings.db_path)
    with CpuLoad() as load:
        reporter = LoadedBaseline(load)
        loop = start(settings, store, Workspace(ws), MockAgent(script), reporter, 2)
        load.start()
        run = loop.execute()
    assert run.id is not None
    return store, reporter, run.id


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))


def by_title(store: Store, run_id: int) -> dict[str, Any]:
    return {e.title: e for e in store.experiments(run_id=run_id) if e.kind == "candidate"}


@pytest.mark.slow
def test_a_null_change_is_not_kept_when_the_machine_sped_up_after_the_baseline(
        tmp_path: Path, cache: None) -> None:
    store, reporter, run_id = run_loop(tmp_path, {"time_budget": 2.0})
    exps = by_title(store, run_id)
    null, better = exps["Add a comment"], exps["Raise the learning rate"]

    # against the baseline's stored (slow-machine) values the null change would have looked
    # like a win; its screen ran at another machine speed than any measurement of the
    # champion, so no stage judged it on those values (or, when the monitor did not flag
    # the drift, the stages passed it on them) ...
    decision = json.loads(null.decision)
    if decision["evidence"].get("stored") is not None:
        assert decision["evidence"]["stored"]["mean"] < 0, decision
    else:
        assert "another machine speed" in null.reason, null.reason
    # ... it was judged on the champion re-measured alongside it instead, and not kept
    assert null.status == ES.discarded, null.reason
    assert decision["evidence"]["champion_source"] == "re-measured alongside"
    assert "re-measured alongside" in null.reason
    roles = [(m.role, m.seed) for m in store.measurements(null.id)]  # type: ignore[arg-type]
    # each seed's pair ran back to back: candidate 0, champion 0, champion 1, candidate 1
    assert roles == [("candidate", 0), ("champion", 0), ("champion", 1), ("candidate", 1)]
    # and each says why it ran: the device time is accounted by purpose
    purposes = [m.purpose for m in store.measurements(null.id)]  # type: ignore[arg-type]
    assert purposes == ["screen", "champion", "champion", "confirmation"]

    # a change that really learns better is still kept under the same rule; its stages
    # compared it with the champion as re-measured beside the null change, at a machine speed
    # like its own, not with the slow stored values
    assert better.status == ES.kept, better.reason
    better_decision = json.loads(better.decision)
    stored = better_decision["evidence"].get("stored") or {}
    if null.reason and "another machine speed" in null.reason:
        assert stored.get("champion_source") == f"re-measured alongside #{null.id} " \
            "(like machine speed)", better_decision
    assert better.delta is not None and better.delta < -0.1

    # the drift was noticed, said in one line, and recorded on the measurements it affected
    drift_lines = [n for n in reporter.notices if n.startswith("machine speed drift")]
    # (said when measurements start drifting: at the null change's first seed, or earlier
    # when the loaded baseline's own speed already changed while it trained)
    first_drift = drift_lines[0] if drift_lines else ""
    where = [f"experiment {i} seed {s}:" for i in range(1, (null.id or 0) + 1) for s in (0, 1)]
    assert any(w in first_drift for w in where[:-1]), reporter.notices
    assert all("\n" not in n for n in reporter.notices)
    first = store.measurements(null.id)[0]  # type: ignore[arg-type]
    assert first.drift and "faster" in first.drift
    assert first.speed_ratio is not None and first.speed_ratio > 1 + speed.DRIFT_FLOOR
    assert {"experiment": null.id, "seed": 0} in store.drifted(run_id)


@pytest.mark.slow
def test_a_token_budget_loop_is_unaffected_by_the_same_load(tmp_path: Path, cache: None) -> None:
    store, reporter, run_id = run_loop(tmp_path, {"token_budget": 12000})
    exps = by_title(store, run_id)
    null, better = exps["Add a comment"], exps["Raise the learning rate"]
    baseline = next(e for e in store.experiments(run_id=run_id) if e.kind == "baseline")
    base_values = {m.seed: m.val_bpb for m in store.measurements(baseline.id)}  # type: ignore[arg-type]
    null_values = {m.seed: m.val_bpb for m in store.measurements(null.id)}  # type: ignore[arg-type]

    # the loaded baseline and the idle null change trained exactly the same model
    assert null_values == {0: base_values[0]}
    assert null.status == ES.discarded
    assert better.status == ES.kept, better.reason
    # no champion re-measurement is paid for, and no drift notice is printed
    assert all(m.role == "candidate" for e in exps.values()
               for m in store.measurements(e.id))  # type: ignore[arg-type]
    assert [m.purpose for m in store.measurements(better.id)] == [  # type: ignore[arg-type]
        "screen", "confirmation"]
    assert [m.purpose for m in store.measurements(baseline.id)] == [  # type: ignore[arg-type]
        "baseline", "baseline"]
    assert not [n for n in reporter.notices if "drift" in n]


@pytest.mark.slow
def test_a_champion_that_fails_its_re_measurement_leaves_the_candidate_discarded(
        tmp_path: Path, cache: None) -> None:
    # the champion's code crashes only when run from the folder it is re-measured in
    crashy = SOURCE.replace("def train(run):\n", "def train(run):\n"
                            "    if Path(__file__).parent.name == 'champion':\n"
                            "        raise RuntimeError('flaky champion')\n", 1)
    ws = tmp_path / "ws"
    init_workspace(ws)
    (ws / "baseline" / "train.py").write_text("from pathlib import Path\n" + crashy,
                                              encoding="utf-8")
    script = tmp_path / "script.json"
    # the candidate is a whole clean file: the guard would refuse the trigger in a proposal
    clean = SOURCE.replace("LEARNING_RATE = 3e-4", "LEARNING_RATE = 3e-2")
    script.write_text(json.dumps([{"title": "Raise the learning rate", "edits": [
        {"path": "train.py", "content": clean}]}]), encoding="utf-8")
    settings = Settings.exactly(dict(workspace=ws, agent="mock", script=script, seeds=2,
                                     device="cpu", dataset=str(bigram_corpus(tmp_path / "c.txt")),
                                     repairs=0, time_budget=1.0))
    store = Store(settings.db_path)
    loop = start(settings, store, Workspace(ws), MockAgent(script),
                 PlainReporter(None, Console(quiet=True)), 1)
    run = loop.execute()
    exp = next(e for e in store.experiments(run_id=run.id) if e.kind == "candidate")
    assert exp.status == ES.discarded
    assert "the champion's re-measurement failed on seed 0 (crash)" in exp.reason
    assert "flaky champion" in exp.reason
    assert run.champion_experiment_id != exp.id


def test_speed_tolerance_and_drift() -> None:
    steady = [100.0, 104.0, 97.0]
    assert not speed.drifted(speed.ratio(110.0, steady), steady)
    assert speed.drifted(speed.ratio(300.0, steady), steady)
    assert speed.drifted(speed.ratio(40.0, steady), steady)
    noisy = [50.0, 100.0, 200.0]  # a reference this noisy widens the tolerance ...
    assert speed.drifted(speed.ratio(180.0, steady), steady)
    assert not speed.drifted(speed.ratio(180.0, noisy), noisy)
    assert speed.drifted(speed.ratio(300.0, noisy), noisy)  # ... but never past a factor of 2
    assert speed.combined(100.0, 400.0) == pytest.approx(200.0)
    assert speed.combined(None, None) is None
    assert speed.describe(2.0) == "2.00x faster"


def test_reference_speed_leaves_the_global_rng_alone() -> None:
    import torch

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert speed.reference_speed("cpu", window=0.01) > 0
    assert torch.equal(torch.rand(3), expected)


def test_a_replay_that_differs_on_a_faster_machine_says_it_is_the_machine(
        tmp_path: Path) -> None:
    store = Store(None)
    run = store.add_run(agent="mock", budget_kind="time", budget_amount=10, seeds="[0]",
                        device="cpu", dataset="x", dataset_sha256="x", experiments_planned=1,
                        branch="run/1", baseline_commit="a", champion_commit="a")
    assert run.id is not None
    ids = []
    for gflops in (60.0, 150.0):  # the original, then its replay
        e = store.add_experiment(run_id=run.id, kind="candidate", seq=1, title="x")
        assert e.id is not None
        ids.append(e.id)
        store.add_measurement(e.id, Metrics(status=RunStatus.ok, seed=0, val_bpb=3.0),
                              speed=gflops)
    differs = Reproduction(reproduces=False, reason="differs: Δ -0.5")
    note = machine_note(store, differs, ids[0], ids[1])
    assert "2.50x faster" in note.reason and "the machine's, not the code's" in note.reason
    same_speed = machine_note(store, differs, ids[0], ids[0])
    assert same_speed.reason == "differs: Δ -0.5"


def _one_measurement(store: Store) -> tuple[int, int]:
    """A run with one candidate measured once: (run id, experiment id)."""
    run = store.add_run(agent="mock", budget_kind="time", budget_amount=10, seeds="[0]",
                        device="cpu", dataset="x", dataset_sha256="x", experiments_planned=1,
                        branch="run/1", baseline_commit="a", champion_commit="a")
    e = store.add_experiment(run_id=run.id, kind="candidate", seq=1, title="x")
    assert run.id is not None and e.id is not None
    store.add_measurement(e.id, Metrics(status=RunStatus.ok, seed=0, val_bpb=3.0))
    return run.id, e.id


def _drop(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()


def test_an_older_results_db_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    Store(path).close()
    _drop(path, *(f"ALTER TABLE measurement DROP COLUMN {column}"
                  for column in ("role", "speed", "speed_ratio", "drift")))
    store = Store(path)  # an older file: reopened, it gets the columns with their defaults
    _, exp_id = _one_measurement(store)
    assert [m.role for m in store.measurements(exp_id)] == ["candidate"]


def test_a_reader_opening_an_older_results_db_upgrades_it_and_reads_it(tmp_path: Path) -> None:
    # the dashboard opens read-only: a file an older version wrote lacks tables and columns
    # it reads, and would fail on every page; it is brought up to date once, nothing lost
    path = tmp_path / "results.db"
    store = Store(path)
    run_id, exp_id = _one_measurement(store)
    store.close()
    _drop(path, "ALTER TABLE measurement DROP COLUMN purpose", "DROP TABLE guidance")
    reader = Store(path, read_only=True)
    [m] = reader.measurements(exp_id)
    assert m.val_bpb == 3.0 and m.purpose is None
    assert reader.guidance(run_id) == []
    reader.close()
