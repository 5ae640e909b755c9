"""The results store: SQLModel tables in one SQLite file (WAL).

Every write is its own transaction (``_tx``): committed before the caller goes on, or rolled
back and re-raised as ``StoreError``. Reads return detached copies, never live rows, so a
reader can hold them while a loop keeps writing.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Column, Text, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, create_engine, func, select

from autoresearch.errors import StoreError

SCHEMA_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


class ExperimentStatus(enum.StrEnum):
    proposed = "proposed"
    applied = "applied"
    running = "running"
    measured = "measured"
    kept = "kept"
    discarded = "discarded"
    rejected = "rejected"  # the proposal could not be used (edits, guard, agent failure)
    crashed = "crashed"  # the training job failed (crash, nan, invalid model, not causal, ...)
    timeout = "timeout"  # killed at its hard deadline
    invalid = "invalid"  # ran, but its result cannot count (overtime, wrong dataset, ...)
    interrupted = "interrupted"  # the loop stopped while it was in flight


FINAL = {
    ExperimentStatus.kept,
    ExperimentStatus.discarded,
    ExperimentStatus.rejected,
    ExperimentStatus.crashed,
    ExperimentStatus.timeout,
    ExperimentStatus.invalid,
    ExperimentStatus.interrupted,
}
_FAILURES = FINAL - {ExperimentStatus.kept, ExperimentStatus.discarded}
S = ExperimentStatus


def is_done(e: Experiment) -> bool:
    """Nothing more will happen to ``e``: a final status, or a replay that was measured (a
    replay reports whether it reproduces; it is never kept or discarded)."""
    return e.status in FINAL or (e.kind == "replay" and e.status == S.measured)


LEGAL: dict[ExperimentStatus, set[ExperimentStatus]] = {
    S.proposed: {S.applied} | _FAILURES,
    S.applied: {S.running} | _FAILURES,
    S.running: {S.measured} | _FAILURES,
    S.measured: {S.kept, S.discarded, S.running} | _FAILURES,
}


class IllegalTransition(StoreError):
    pass


class RunState(enum.StrEnum):
    running = "running"
    finished = "finished"
    stopped = "stopped"  # Ctrl-C, cost cap, fatal agent error: resumable
    failed = "failed"  # the baseline itself could not be measured


class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    state: RunState = RunState.running
    tag: str | None = None
    agent: str
    model: str = ""
    budget_kind: str
    budget_amount: float
    seeds: str  # JSON list of ints
    device: str
    dataset: str
    dataset_sha256: str
    experiments_planned: int
    min_delta: float = 0.0
    branch: str
    baseline_commit: str
    champion_commit: str
    champion_experiment_id: int | None = None
    noise_std: float | None = None
    stop_reason: str | None = None
    config: str = Field(default="{}", sa_column=Column(Text))

    @property
    def seed_list(self) -> list[int]:
        return [int(s) for s in json.loads(self.seeds)]


class Experiment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    kind: str = "candidate"  # baseline | candidate | replay
    seq: int = 0  # 0 for the baseline, 1.. for candidates in the run's budget
    title: str = ""
    rationale: str = Field(default="", sa_column=Column(Text))
    status: ExperimentStatus = ExperimentStatus.proposed
    reason: str = ""
    parent_commit: str = ""
    commit: str | None = None
    branch: str | None = None
    proposal: str = Field(default="", sa_column=Column(Text))
    diff: str = Field(default="", sa_column=Column(Text))
    decision: str = Field(default="", sa_column=Column(Text))
    val_bpb: float | None = None  # mean over the measured seeds
    champion_bpb: float | None = None  # the champion's mean on the same seeds, when decided
    delta: float | None = None  # val_bpb - champion on the paired seeds (negative = better)
    seconds: float = 0.0  # wall seconds of training jobs
    replay_of: int | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Measurement(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    seed: int
    status: str
    val_bpb: float | None = None
    val_loss: float | None = None
    train_tokens: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    params: int = 0
    peak_memory_mb: float = 0.0
    device: str = ""
    error: str | None = Field(default=None, sa_column=Column(Text))
    metrics: str = Field(default="{}", sa_column=Column(Text))
    created_at: datetime = Field(default_factory=_now)


class AgentCall(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    experiment_id: int | None = Field(default=None, foreign_key="experiment.id", index=True)
    attempt: int = 0
    provider: str
    model: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float = 0.0
    cost_usd: float | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    raw: str = Field(default="", sa_column=Column(Text))
    created_at: datetime = Field(default_factory=_now)


T = TypeVar("T", bound=SQLModel)


def _detach(row: T) -> T:
    return type(row).model_validate(row.model_dump())


class Store:
    """One SQLite file. ``Store(Path)`` opens (and creates) it; ``Store(None)`` is in-memory."""

    def __init__(self, path: Path | None, *, read_only: bool = False) -> None:
        """``read_only`` (a dashboard): the file opened with mode=ro, nothing created or
        written, so a reader never takes a write lock while a loop writes."""
        self.path = path
        url = "sqlite://" if path is None else f"sqlite:///{path}"
        if path is not None and not path.parent.is_dir():
            raise StoreError(f"cannot create {path}: folder {path.parent} does not exist")
        if read_only and path is not None:
            url = f"sqlite:///{path.resolve().as_uri()}?mode=ro&uri=true"
        self.engine: Engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(self.engine, "connect", _on_connect)
        try:
            if not read_only:
                self._create_tables()
            self._check_schema(read_only)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot open results database {path}: {e.__class__.__name__}: "
                             f"{str(e).splitlines()[0]}") from e

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Session]:
        session = Session(self.engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise StoreError(f"database error: {str(e).splitlines()[0]}") from e
        finally:
            session.close()

    def _create_tables(self) -> None:
        # two processes opening a new file at once (a loop and a reader) would race on
        # CREATE TABLE; an IMMEDIATE transaction takes the write lock first, so the second
        # waits (busy timeout) and then finds every table already made
        with self.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            SQLModel.metadata.create_all(conn)
            conn.commit()

    def _check_schema(self, read_only: bool = False) -> None:
        with self.engine.begin() as conn:
            if not read_only:
                conn.execute(text("INSERT OR IGNORE INTO meta (key, value) VALUES "
                                  "('schema_version', :v)"), {"v": str(SCHEMA_VERSION)})
            found = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'"))
            version = int(found.scalar_one())
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer autoresearch (schema {version}, "
                f"this one reads up to {SCHEMA_VERSION}); upgrade autoresearch to read it"
            )

    def close(self) -> None:
        self.engine.dispose()

    # -- runs -------------------------------------------------------------------------------
    def add_run(self, **fields: Any) -> Run:
        with self._tx() as s:
            run = Run(**fields)
            s.add(run)
            s.flush()
            return _detach(run)

    def update_run(self, run_id: int, **fields: Any) -> Run:
        with self._tx() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run {run_id}")
            for k, v in fields.items():
                setattr(run, k, v)
            run.updated_at = _now()
            s.add(run)
            s.flush()
            return _detach(run)

    def get_run(self, run_id: int) -> Run | None:
        with self._tx() as s:
            run = s.get(Run, run_id)
            return None if run is None else _detach(run)

    def runs(self) -> list[Run]:
        with self._tx() as s:
            return [_detach(r) for r in s.exec(select(Run).order_by(col(Run.id)))]

    def last_unfinished_run(self) -> Run | None:
        with self._tx() as s:
            q = select(Run).where(Run.state != RunState.finished).order_by(col(Run.id).desc())
            run = s.exec(q).first()
            return None if run is None else _detach(run)

    # -- experiments ------------------------------------------------------------------------
    def add_experiment(self, **fields: Any) -> Experiment:
        with self._tx() as s:
            exp = Experiment(**fields)
            s.add(exp)
            s.flush()
            return _detach(exp)

    def get_experiment(self, exp_id: int) -> Experiment | None:
        with self._tx() as s:
            exp = s.get(Experiment, exp_id)
            return None if exp is None else _detach(exp)

    def update_experiment(self, exp_id: int, **fields: Any) -> Experiment:
        with self._tx() as s:
            exp = s.get(Experiment, exp_id)
            if exp is None:
                raise StoreError(f"no experiment {exp_id}")
            for k, v in fields.items():
                setattr(exp, k, v)
            exp.updated_at = _now()
            s.add(exp)
            s.flush()
            return _detach(exp)

    def transition(self, exp_id: int, to: ExperimentStatus, **fields: Any) -> Experiment:
        """Move an experiment to ``to``; illegal moves (e.g. out of a final state) raise."""
        with self._tx() as s:
            exp = s.get(Experiment, exp_id)
            if exp is None:
                raise StoreError(f"no experiment {exp_id}")
            if to not in LEGAL.get(exp.status, set()):
                raise IllegalTransition(
                    f"experiment {exp_id}: illegal transition {exp.status.value} -> {to.value}"
                )
            exp.status = to
            for k, v in fields.items():
                setattr(exp, k, v)
            exp.updated_at = _now()
            s.add(exp)
            s.flush()
            return _detach(exp)

    def experiments(
        self,
        *,
        run_id: int | None = None,
        status: Sequence[ExperimentStatus] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Experiment]:
        with self._tx() as s:
            q = select(Experiment)
            if run_id is not None:
                q = q.where(Experiment.run_id == run_id)
            if status:
                q = q.where(col(Experiment.status).in_(list(status)))
            q = q.order_by(col(Experiment.id).desc() if newest_first else col(Experiment.id))
            if limit is not None:
                q = q.limit(limit)
            return [_detach(e) for e in s.exec(q)]

    def count_candidates(self, run_id: int) -> int:
        """Candidates that used up one unit of the run's experiment budget.

        Failures count; an interrupted experiment does not: a resumed run redoes its slot.
        """
        with self._tx() as s:
            q = select(func.count()).select_from(Experiment).where(
                Experiment.run_id == run_id, Experiment.kind == "candidate",
                Experiment.status != ExperimentStatus.interrupted,
            )
            return int(s.exec(q).one())

    # -- measurements and calls -------------------------------------------------------------
    def add_measurement(self, **fields: Any) -> Measurement:
        with self._tx() as s:
            m = Measurement(**fields)
            s.add(m)
            s.flush()
            return _detach(m)

    def measurements(self, exp_id: int) -> list[Measurement]:
        with self._tx() as s:
            q = select(Measurement).where(Measurement.experiment_id == exp_id)
            return [_detach(m) for m in s.exec(q.order_by(col(Measurement.id)))]

    def add_call(self, **fields: Any) -> AgentCall:
        with self._tx() as s:
            c = AgentCall(**fields)
            s.add(c)
            s.flush()
            return _detach(c)

    def calls(self, *, experiment_id: int | None = None,
              run_id: int | None = None) -> list[AgentCall]:
        with self._tx() as s:
            q = select(AgentCall)
            if experiment_id is not None:
                q = q.where(AgentCall.experiment_id == experiment_id)
            if run_id is not None:
                q = q.where(AgentCall.run_id == run_id)
            return [_detach(c) for c in s.exec(q.order_by(col(AgentCall.id)))]

    def costs(self, experiment_ids: Sequence[int]) -> dict[int, tuple[float, int]]:
        """Per experiment: (known cost in USD, number of calls whose cost is unknown)."""
        if not experiment_ids:
            return {}
        known = func.coalesce(func.sum(AgentCall.cost_usd), 0.0)
        unknown = func.sum(col(AgentCall.cost_usd).is_(None))
        with self._tx() as s:
            q = (select(col(AgentCall.experiment_id), known, unknown)
                 .where(col(AgentCall.experiment_id).in_(list(experiment_ids)))
                 .group_by(col(AgentCall.experiment_id)))
            return {int(e or 0): (float(k or 0.0), int(u or 0)) for e, k, u in s.exec(q)}

    def spending(self, run_id: int) -> tuple[float, float]:
        """(known USD spent by a run's agent calls, the dearest single call)."""
        with self._tx() as s:
            q = select(func.coalesce(func.sum(AgentCall.cost_usd), 0.0),
                       func.coalesce(func.max(AgentCall.cost_usd), 0.0)
                       ).where(AgentCall.run_id == run_id)
            total, dearest = s.exec(q).one()
            return float(total or 0.0), float(dearest or 0.0)

    def run_cost(self, run_id: int) -> tuple[float, int, int]:
        """(known cost in USD, calls with unknown cost, all calls) for a run."""
        known = func.coalesce(func.sum(AgentCall.cost_usd), 0.0)
        unknown = func.sum(col(AgentCall.cost_usd).is_(None))
        with self._tx() as s:
            q = select(known, unknown, func.count()).where(AgentCall.run_id == run_id)
            k, u, n = s.exec(q).one()
            return float(k or 0.0), int(u or 0), int(n)


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    _use_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _use_wal(cur: Any) -> None:
    """Switch the file to WAL (persistent, so usually already done). SQLite answers "database
    is locked" at once, without its busy handler, when two connections switch a new file
    together; the loser waits a little and finds the switch made."""
    for attempt in range(50):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == 49:
                raise
            time.sleep(0.02 * (1 + attempt % 5))
