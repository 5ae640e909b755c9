"""The store: legal transitions only, detached reads, schema guard; in memory and on a file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from autoresearch.decide import Reproduction
from autoresearch.errors import StoreError
from autoresearch.metrics import Metrics
from autoresearch.models import ExperimentKind, MeasurementRole, RunState, RunStatus
from autoresearch.models import ExperimentStatus as ES
from autoresearch.store import (
    BaselineNoise,
    IllegalTransition,
    Judged,
    Replayed,
    StaleWin,
    Store,
    Superseded,
    read_decision,
)


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return Store(None if request.param == "memory" else tmp_path / "results.db")


def _run(store: Store) -> int:
    run = store.add_run(agent="mock", budget_kind="tokens", budget_amount=1000, seeds="[0, 1]",
                        device="cpu", dataset="x", dataset_sha256="ab", experiments_planned=3,
                        branch="run/1", baseline_commit="c0", champion_commit="c0")
    assert run.id is not None
    return run.id


def test_experiment_walks_the_legal_path_and_final_states_are_frozen(store: Store) -> None:
    run_id = _run(store)
    exp = store.add_experiment(run_id=run_id, title="t")
    assert exp.id is not None and exp.status == ES.proposed
    for to in (ES.applied, ES.running, ES.measured, ES.running, ES.measured, ES.kept):
        exp = store.transition(exp.id, to)  # type: ignore[arg-type]
    assert exp.status == ES.kept
    with pytest.raises(IllegalTransition, match="kept -> discarded"):
        store.transition(exp.id, ES.discarded)  # type: ignore[arg-type]


@pytest.mark.parametrize("to", [ES.measured, ES.kept, ES.running])
def test_skipping_a_step_is_illegal(store: Store, to: ES) -> None:
    exp = store.add_experiment(run_id=_run(store), title="t")
    with pytest.raises(IllegalTransition):
        store.transition(exp.id, to)  # type: ignore[arg-type]


def test_reads_are_detached_copies(store: Store) -> None:
    run_id = _run(store)
    exp = store.add_experiment(run_id=run_id, title="before")
    exp.title = "changed locally"
    assert store.get_experiment(exp.id).title == "before"  # type: ignore[arg-type,union-attr]
    store.update_experiment(exp.id, title="after")  # type: ignore[arg-type]
    assert exp.title == "changed locally"


def test_interrupted_experiments_do_not_use_up_the_budget(store: Store) -> None:
    run_id = _run(store)
    a = store.add_experiment(run_id=run_id, title="a")
    store.add_experiment(run_id=run_id, title="b")
    store.add_experiment(run_id=run_id, kind="baseline", title="baseline")
    store.transition(a.id, ES.interrupted)  # type: ignore[arg-type]
    assert store.count_candidates(run_id) == 1


def test_costs_keep_unknown_apart_from_zero(store: Store) -> None:
    run_id = _run(store)
    e = store.add_experiment(run_id=run_id, title="a")
    store.add_call(run_id=run_id, experiment_id=e.id, provider="openai", cost_usd=0.25)
    store.add_call(run_id=run_id, experiment_id=e.id, provider="openai", cost_usd=None)
    assert store.costs([e.id]) == {e.id: (0.25, 1)}  # type: ignore[list-item]
    assert store.run_cost(run_id) == (0.25, 1, 2)


def test_last_unfinished_run(store: Store) -> None:
    first, second = _run(store), _run(store)
    store.update_run(second, state=RunState.finished)
    assert store.last_unfinished_run().id == first  # type: ignore[union-attr]


def test_a_database_from_a_newer_version_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer autoresearch"):
        Store(path)


def test_a_file_store_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _open_store(path: str) -> None:
    Store(Path(path)).close()


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # a loop and `history` started together both create the tables; neither may fail
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for i in range(4):
        path = str(tmp_path / f"r{i}.db")
        procs = [ctx.Process(target=_open_store, args=(path,)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        assert Store(Path(path)).last_unfinished_run() is None


def test_a_finished_experiment_cannot_be_updated(store: Store) -> None:
    exp = store.add_experiment(run_id=_run(store), title="t")
    store.transition(exp.id, ES.rejected, reason="bad edit")  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition):
        store.update_experiment(exp.id, title="rewritten")  # type: ignore[arg-type]
    assert store.get_experiment(exp.id).title == "t"  # type: ignore[arg-type,union-attr]


def test_rows_an_older_version_wrote_read_as_typed_kinds_roles_and_decisions(
        tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    store = Store(path)
    run_id = _run(store)
    ids = {k: store.add_experiment(run_id=run_id, kind=k, title=k).id for k in ExperimentKind}
    superseded = store.add_experiment(run_id=run_id, title="superseded").id
    cand = ids[ExperimentKind.candidate]
    assert cand is not None
    store.add_measurement(cand, Metrics(status=RunStatus.ok, seed=0), role=MeasurementRole.champion)
    store.close()
    old = {  # the four shapes of the decision column before it was one tagged record
        ids[ExperimentKind.baseline]: {"values": {"0": 3.2, "1": 3.25}, "noise_std": 0.03},
        cand: {"verdict": "keep", "reason": "kept", "threshold": 0.01, "delta": -0.1,
               "evidence": {"seeds": [0], "candidate": [3.1], "champion": [3.2]}},
        ids[ExperimentKind.replay]: Reproduction(reproduces=True, reason="same").model_dump(),
        superseded: {"stale": [{"champion": 1, "delta": -0.2, "reason": "won",
                                "values": {"0": 3.0}}]},
    }
    with sqlite3.connect(path) as conn:  # written as plain strings, the way they were
        for exp_id, decision in old.items():
            conn.execute("UPDATE experiment SET decision = ? WHERE id = ?",
                         (json.dumps(decision), exp_id))
        conn.execute("UPDATE measurement SET role = 'stale-champion'")
    conn.close()

    store = Store(path)
    exps = {e.id: e for e in store.experiments()}
    assert [type(e.kind) for e in exps.values()] == [ExperimentKind] * (len(ExperimentKind) + 1)
    base = read_decision(exps[ids[ExperimentKind.baseline]])
    assert isinstance(base, BaselineNoise) and base.values == {0: 3.2, 1: 3.25}
    judged = read_decision(exps[cand])
    assert isinstance(judged, Judged) and judged.verdict == "keep" and judged.stale == []
    replayed = read_decision(exps[ids[ExperimentKind.replay]])
    assert isinstance(replayed, Replayed) and replayed.reproduces
    assert read_decision(exps[superseded]) == Superseded(
        stale=[StaleWin(champion=1, delta=-0.2, reason="won", values={0: 3.0})])
    (m,) = store.measurements(cand)
    assert m.role is MeasurementRole.stale_champion
    assert store.measurements(cand, role=MeasurementRole.stale_champion) == [m]
    assert store.measurements(cand, role=MeasurementRole.champion) == []
    # a decision written now carries its tag and reads back as written
    new = store.add_experiment(run_id=run_id, title="new").id
    assert new is not None
    store.add_measurement(new, Metrics(status=RunStatus.ok, seed=0))
    for to in (ES.applied, ES.running, ES.measured):
        store.transition(new, to)
    verdict = Judged(verdict="discard", reason="worse", delta=0.1,
                     stale=[StaleWin(champion=1, delta=-0.2)])
    row = store.transition(new, ES.discarded, decision=verdict)
    assert json.loads(row.decision)["record"] == "judged"
    assert read_decision(row) == verdict
    store.restage(new)  # measured on a champion replaced meanwhile: its own values go stale
    assert [m.role for m in store.measurements(new)] == [MeasurementRole.stale]
