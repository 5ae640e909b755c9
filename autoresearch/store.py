"""The results store: SQLModel tables in one SQLite file (WAL).

Every write is its own transaction (``_tx``): committed before the caller goes on, or rolled
back and re-raised as ``StoreError``. Reads return detached copies, never live rows, so a
reader can hold them while a loop keeps writing.

The tables: ``Run`` (one loop invocation), ``Experiment`` (one proposal, its status and its
decision), ``Measurement`` (one training + evaluation of one commit with one seed) and
``AgentCall``. An experiment's kind and a measurement's role are enums stored as their plain
values; its decision is one typed record (``DecisionRecord``: judged, superseded, baseline or
replay), tagged ``record`` in the JSON and read by its shape in files written before the tag.
A file from an older version gets the columns added since (``_add_new_columns``): columns are
only ever added, never changed.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic import Field as PydanticField
from sqlalchemy import Column, String, Text, event, text
from sqlalchemy import select as select_columns
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, col, create_engine, func, select

from autoresearch.decide import Decision, Reproduction
from autoresearch.errors import StoreError
from autoresearch.metrics import Metrics
from autoresearch.models import (
    ExperimentKind,
    ExperimentStatus,
    HistoryItem,
    MeasurementRole,
    Purpose,
    RunState,
    RunStatus,
)

SCHEMA_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


FINAL = {
    ExperimentStatus.kept,
    ExperimentStatus.discarded,
    ExperimentStatus.rejected,
    ExperimentStatus.crashed,
    ExperimentStatus.timeout,
    ExperimentStatus.invalid,
    ExperimentStatus.interrupted,
    ExperimentStatus.superseded,
}
_FAILURES = FINAL - {ExperimentStatus.kept, ExperimentStatus.discarded}
S = ExperimentStatus


def is_done(e: Experiment) -> bool:
    """Nothing more will happen to ``e``: a final status, or a replay that was measured (a
    replay reports whether it reproduces; it is never kept or discarded)."""
    return e.status in FINAL or (e.kind in (ExperimentKind.replay, ExperimentKind.report)
                                 and e.status == S.measured)


LEGAL: dict[ExperimentStatus, set[ExperimentStatus]] = {
    S.proposed: {S.applied} | _FAILURES,
    S.applied: {S.running} | _FAILURES,
    S.running: {S.measured} | _FAILURES,
    S.measured: {S.kept, S.discarded, S.running} | _FAILURES,
}


class IllegalTransition(StoreError):
    pass


# -- the decision record ------------------------------------------------------------------------
class StaleWin(BaseModel):
    """A win on a champion that was replaced before the candidate could be kept."""

    champion: int  # that champion's experiment id
    delta: float | None = None
    reason: str = ""
    values: dict[int, float] = PydanticField(default_factory=dict)


class Judged(Decision):
    """The keep rule's verdict on a candidate (kept or discarded), with the wins it had on
    champions replaced meanwhile (then it was measured again on the new one)."""

    record: Literal["judged"] = "judged"
    stale: list[StaleWin] = PydanticField(default_factory=list)


class Superseded(BaseModel):
    """A candidate that won on champions replaced meanwhile and was not kept."""

    record: Literal["superseded"] = "superseded"
    stale: list[StaleWin]


class BaselineNoise(BaseModel):
    """The baseline's values on every seed, and the seed noise they give."""

    record: Literal["baseline"] = "baseline"
    values: dict[int, float]
    noise_std: float | None = None


class Replayed(Reproduction):
    """Whether a replay reproduced the original's result."""

    record: Literal["replay"] = "replay"


DecisionRecord = Annotated[Judged | Superseded | BaselineNoise | Replayed,
                           PydanticField(discriminator="record")]
_DECISION: TypeAdapter[DecisionRecord] = TypeAdapter(DecisionRecord)


def read_decision(e: Experiment) -> DecisionRecord | None:
    """An experiment's decision, typed (None before it has one, or for one unreadable). A
    record written before the ``record`` tag is read by its shape."""
    try:
        d = json.loads(e.decision) if e.decision else None
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    if "record" not in d:
        d["record"] = ("baseline" if e.kind == ExperimentKind.baseline
                       else "replay" if e.kind == ExperimentKind.replay
                       else "judged" if "verdict" in d else "superseded")
    try:
        return _DECISION.validate_python(d)
    except ValidationError:
        return None


class _Enum(TypeDecorator[Any]):
    """A StrEnum column stored as its value in a VARCHAR, as the plain strings before it."""

    impl = String
    cache_ok = True

    def __init__(self, enum_type: type[ExperimentKind] | type[MeasurementRole] | type[Purpose]
                 ) -> None:
        super().__init__()
        self.enum_type = enum_type

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else str(self.enum_type(value))

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else self.enum_type(value)


# -- the tables ---------------------------------------------------------------------------------
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
    kind: ExperimentKind = Field(default=ExperimentKind.candidate,
                                 sa_column=Column(_Enum(ExperimentKind), nullable=False))
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
    # the champion experiment it was proposed on (and measured against first)
    parent_id: int | None = None
    # sha256 of its editable files as applied: a proposal identical to one already measured
    # in the run is refused before training
    fingerprint: str | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Measurement(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    seed: int
    status: RunStatus
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
    role: MeasurementRole = Field(default=MeasurementRole.candidate,
                                  sa_column=Column(_Enum(MeasurementRole), nullable=False))
    # why it ran (device time by purpose); None on rows recorded before purposes were
    purpose: Purpose | None = Field(default=None, sa_column=Column(_Enum(Purpose), nullable=True))
    speed: float | None = None  # reference GFLOP/s in the training process (autoresearch.speed)
    speed_ratio: float | None = None  # speed / the champion's reference speed at the time
    drift: str | None = None  # why this measurement's machine speed is not comparable, if so
    worker: str = ""  # which worker, GPU or Ray node ran it
    threads: int | None = None  # torch threads per process (None: torch's default)
    concurrency: int = 1  # measurements running at once (this one included) when it started
    # the held-out test split's bpb: only a report measurement (purpose report) has one
    test_bpb: float | None = None
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
    # the answer's NOTES: block (autoresearch/notebook.py), and the thinking or reasoning
    # tokens among output_tokens; None on calls without them and on rows from before
    notes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    reasoning_tokens: int | None = None


class Guidance(SQLModel, table=True):
    """One entry of the user's guidance for a run (``autoresearch steer``), shown in every
    prompt from when it was added until it is cleared."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=_now)
    cleared_at: datetime | None = None


T = TypeVar("T", bound=SQLModel)
_Stamped = TypeVar("_Stamped", Run, Experiment)  # the tables with an updated_at
# the Measurement columns copied from a Metrics (the whole Metrics is kept as JSON as well)
_MEASURED = {"seed", "status", "val_bpb", "val_loss", "train_tokens", "steps", "train_seconds",
             "total_seconds", "params", "peak_memory_mb", "device", "error", "worker",
             "threads", "concurrency", "test_bpb"}


def _detach(row: T) -> T:
    return type(row).model_validate(row.model_dump())


def _matching(run_id: int | None, status: Sequence[ExperimentStatus] | None,
              kind: ExperimentKind | None, has_commit: bool) -> list[Any]:
    """The conditions of an experiments query (``Store.experiments``, ``Store.newest``)."""
    conds: list[Any] = []
    if run_id is not None:
        conds.append(col(Experiment.run_id) == run_id)
    if status:
        conds.append(col(Experiment.status).in_(list(status)))
    if kind is not None:
        conds.append(col(Experiment.kind) == kind)
    if has_commit:
        conds.append(col(Experiment.commit).is_not(None))
    return conds


class Store:
    """One SQLite file. ``Store(Path)`` opens (and creates) it; ``Store(None)`` is in-memory."""

    def __init__(self, path: Path | None, *, read_only: bool = False) -> None:
        """``read_only`` (a dashboard): the file opened with mode=ro, nothing created or
        written, so a reader never takes a write lock while a loop writes."""
        self.path = path
        self._lock = threading.RLock()
        url = "sqlite://" if path is None else f"sqlite:///{path}"
        if path is not None and not path.parent.is_dir():
            raise StoreError(f"cannot create {path}: folder {path.parent} does not exist")
        if read_only and path is not None:
            _upgrade_if_older(path)
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
        # a loop's workers and proposers share one Store: one transaction at a time here
        # (other processes wait on SQLite's own lock)
        with self._lock:
            yield from self._tx_unlocked()

    def _tx_unlocked(self) -> Iterator[Session]:
        session = Session(self.engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise StoreError(f"database error: {str(e).splitlines()[0]}") from e
        finally:
            session.close()

    def _add(self, row: T) -> T:
        """Insert ``row``; the stored copy, id filled in."""
        with self._tx() as s:
            s.add(row)
            s.flush()
            return _detach(row)

    def _update(self, model: type[_Stamped], row_id: int, fields: dict[str, Any], *,
                to: ExperimentStatus | None = None) -> _Stamped:
        """Set ``fields`` on one row and stamp ``updated_at``. For an experiment, ``to`` is its
        new status (which must be a legal move), and a finished experiment is never changed."""
        with self._tx() as s:
            row = s.get(model, row_id)
            if row is None:
                raise StoreError(f"no {model.__name__.lower()} {row_id}")
            if isinstance(row, Experiment):
                if to is not None and to not in LEGAL.get(row.status, set()):
                    raise IllegalTransition(f"experiment {row_id}: illegal transition "
                                            f"{row.status.value} -> {to.value}")
                if to is None and row.status in FINAL:
                    raise IllegalTransition(f"experiment {row_id} is {row.status.value}: a "
                                            "finished experiment is not changed")
                if to is not None:
                    row.status = to
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = _now()
            s.add(row)
            s.flush()
            return _detach(row)

    def _create_tables(self) -> None:
        # two processes opening a new file at once (a loop and a reader) would race on
        # CREATE TABLE; an IMMEDIATE transaction takes the write lock first, so the second
        # waits (busy timeout) and then finds every table already made
        with self.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            SQLModel.metadata.create_all(conn)
            _add_new_columns(conn)
            # the loop's per-iteration counts and newest-first reads answer from this index
            # alone, never scanning rows that carry diffs and proposals (also added to files
            # made before it: IF NOT EXISTS)
            conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_experiment_run_kind_status "
                                 "ON experiment (run_id, kind, status, id)")
            # and the context's other reads (the baseline, the newest crash, the newest
            # committed candidate): without them SQLite walks every row of the run by id
            for name, columns in (("run_kind_id", "(run_id, kind, id)"),
                                  ("run_status_id", "(run_id, status, id)"),
                                  ("run_kind_committed", '(run_id, kind, id) '
                                                         'WHERE "commit" IS NOT NULL')):
                conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_experiment_{name} "
                                     f"ON experiment {columns}")
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
        return self._add(Run(**fields))

    def update_run(self, run_id: int, **fields: Any) -> Run:
        return self._update(Run, run_id, fields)

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
    def add_experiment(self, *, run_id: int, kind: ExperimentKind = ExperimentKind.candidate,
                       seq: int = 0, title: str = "", parent_commit: str = "", **fields: Any
                       ) -> Experiment:
        return self._add(Experiment(run_id=run_id, kind=ExperimentKind(kind), seq=seq,
                                    title=title, parent_commit=parent_commit, **fields))

    def get_experiment(self, exp_id: int) -> Experiment | None:
        with self._tx() as s:
            exp = s.get(Experiment, exp_id)
            return None if exp is None else _detach(exp)

    def update_experiment(self, exp_id: int, **fields: Any) -> Experiment:
        """Change fields of an experiment still in flight (a finished one raises)."""
        return self._update(Experiment, exp_id, fields)

    def transition(self, exp_id: int, to: ExperimentStatus, *,
                   decision: DecisionRecord | None = None, **fields: Any) -> Experiment:
        """Move an experiment to ``to``, with its decision if it has one; illegal moves (e.g.
        out of a final state) raise."""
        if decision is not None:
            fields["decision"] = decision.model_dump_json()
        return self._update(Experiment, exp_id, fields, to=to)

    def experiments(
        self,
        *,
        run_id: int | None = None,
        status: Sequence[ExperimentStatus] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        kind: ExperimentKind | None = None,
        has_commit: bool = False,
    ) -> list[Experiment]:
        with self._tx() as s:
            q = select(Experiment).where(*_matching(run_id, status, kind, has_commit))
            q = q.order_by(col(Experiment.id).desc() if newest_first else col(Experiment.id))
            if limit is not None:
                q = q.limit(limit)
            return [_detach(e) for e in s.exec(q)]

    def newest(self, run_id: int, *, status: Sequence[ExperimentStatus] | None = None,
               kind: ExperimentKind | None = None, has_commit: bool = False) -> Experiment | None:
        """The run's newest experiment among these (``experiments(..., newest_first=True,
        limit=1)``), found as the largest id: SQLite answers that from an index, where the
        newest-first read walks the run's rows one by one until one matches."""
        with self._tx() as s:
            newest = select_columns(func.max(Experiment.id)).where(
                *_matching(run_id, status, kind, has_commit)).scalar_subquery()
            row = s.exec(select(Experiment).where(col(Experiment.id) == newest)).first()
            return None if row is None else _detach(row)

    def history(self, run_id: int, *, recent: int) -> tuple[list[HistoryItem], int]:
        """The agent's view of a run's candidates, read without their texts (diff, proposal,
        rationale): every kept one and the ``recent`` newest others, in id order, and how many
        older ones were left out. Two indexed reads whatever the history's length; the
        numbers of each verdict come from its decision record, never from its reason text."""
        cols = (col(Experiment.id), col(Experiment.title), col(Experiment.status),
                col(Experiment.delta), col(Experiment.reason), col(Experiment.val_bpb),
                col(Experiment.parent_id), col(Experiment.decision))
        mine = (col(Experiment.run_id) == run_id, col(Experiment.kind) == ExperimentKind.candidate)
        with self._tx() as s:
            kept = s.execute(select_columns(*cols).where(*mine, col(Experiment.status) == S.kept)
                             ).all()
            newest = s.execute(select_columns(*cols).where(*mine, col(Experiment.status) != S.kept)
                               .order_by(col(Experiment.id).desc()).limit(recent)).all()
            others = s.exec(select(func.count()).select_from(Experiment).where(
                *mine, Experiment.status != S.kept)).one()
        rows = sorted([*kept, *newest], key=lambda r: r[0])
        items = [HistoryItem(id=i, title=t, status=st.value, delta=d, reason=r, val_bpb=v,
                             parent_id=p, **_verdict_numbers(dec))
                 for i, t, st, d, r, v, p, dec in rows]
        return items, int(others) - len(newest)

    def count_candidates(self, run_id: int) -> int:
        """Candidates that used up one unit of the run's experiment budget.

        Failures count; an interrupted experiment does not: a resumed run redoes its slot.
        """
        with self._tx() as s:
            q = select(func.count()).select_from(Experiment).where(
                Experiment.run_id == run_id, Experiment.kind == ExperimentKind.candidate,
                Experiment.status != ExperimentStatus.interrupted,
            )
            return int(s.exec(q).one())

    # -- measurements and calls -------------------------------------------------------------
    def add_measurement(self, experiment_id: int, metrics: Metrics, **fields: Any
                        ) -> Measurement:
        """Record one measurement: its columns from ``metrics``, and all of it as JSON;
        ``fields``: what the loop adds (role, speed, drift)."""
        columns = metrics.model_dump(include=_MEASURED)
        return self._add(Measurement(experiment_id=experiment_id, **columns, **fields,
                                     metrics=metrics.model_dump_json()))

    def run_measurements(self, run_id: int
                         ) -> list[tuple[ExperimentKind, int, Measurement]]:
        """Every measurement of a run's experiments, with its experiment's kind and id, in the
        order they were recorded."""
        with self._tx() as s:
            q = (select(Experiment.kind, Experiment.id, Measurement)
                 .join(Measurement, col(Measurement.experiment_id) == col(Experiment.id))
                 .where(Experiment.run_id == run_id).order_by(col(Measurement.id)))
            return [(ExperimentKind(k), int(i or 0), _detach(m)) for k, i, m in s.exec(q).all()]

    def parents(self, run_id: int) -> dict[int, int | None]:
        """Each experiment of a run -> the champion it was (last) measured against."""
        with self._tx() as s:
            q = select(Experiment.id, Experiment.parent_id).where(Experiment.run_id == run_id)
            return {int(i or 0): p for i, p in s.exec(q).all()}

    def remeasured(self, run_id: int, champion_id: int, seeds: Sequence[int]
                   ) -> list[tuple[int, dict[int, tuple[float, float | None]]]]:
        """The champion ``champion_id`` as re-measured alongside candidates of the run, oldest
        first: (candidate id, seed -> (val_bpb, machine speed)) for each candidate whose
        re-measurement succeeded on every seed in ``seeds``."""
        with self._tx() as s:
            q = (select(Measurement, Experiment.id)
                 .join(Experiment, col(Measurement.experiment_id) == col(Experiment.id))
                 .where(Experiment.run_id == run_id, Experiment.parent_id == champion_id,
                        Measurement.role == MeasurementRole.champion,
                        Measurement.status == RunStatus.ok)
                 .order_by(col(Measurement.id)))
            found: dict[int, dict[int, tuple[float, float | None]]] = {}
            for m, exp_id in s.exec(q).all():
                if m.val_bpb is not None:
                    found.setdefault(int(exp_id or 0), {})[m.seed] = (m.val_bpb, m.speed)
        return [(i, {seed: got[seed] for seed in seeds}) for i, got in found.items()
                if all(seed in got for seed in seeds)]

    def restage(self, exp_id: int) -> None:
        """Mark an experiment's measurements as made on a champion since replaced
        (``MeasurementRole.staled``): a candidate ported onto a new champion keeps the evidence
        of its first measurement apart from its own values."""
        with self._tx() as s:
            for row in s.exec(select(Measurement).where(Measurement.experiment_id == exp_id)):
                staled = MeasurementRole(row.role).staled()
                if staled != row.role:
                    row.role = staled
                    s.add(row)

    def duplicate_of(self, run_id: int, fingerprint: str) -> Experiment | None:
        """The first experiment of the run whose files were exactly these and that was (or is
        being) measured: not a rejected or interrupted one."""
        with self._tx() as s:
            q = select(Experiment).where(
                Experiment.run_id == run_id, Experiment.fingerprint == fingerprint,
                col(Experiment.status).not_in([S.rejected, S.interrupted]),
                col(Experiment.kind).not_in([ExperimentKind.replay, ExperimentKind.report])
                ).order_by(col(Experiment.id)).limit(1)
            row = s.exec(q).first()
            return None if row is None else _detach(row)

    def measurement_count(self, exp_id: int) -> int:
        with self._tx() as s:
            q = select(func.count()).where(Measurement.experiment_id == exp_id)
            return int(s.exec(q).one())

    def measurements(self, exp_id: int, role: MeasurementRole | None = None
                     ) -> list[Measurement]:
        """An experiment's measurements in order; ``role``: only those of that role."""
        with self._tx() as s:
            q = select(Measurement).where(Measurement.experiment_id == exp_id)
            if role is not None:
                q = q.where(Measurement.role == role)
            return [_detach(m) for m in s.exec(q.order_by(col(Measurement.id)))]

    def workers(self, run_id: int) -> list[str]:
        """The workers (GPUs, Ray nodes) that ran a run's measurements, by name."""
        with self._tx() as s:
            q = (select(Measurement.worker).distinct()
                 .join(Experiment, col(Experiment.id) == col(Measurement.experiment_id))
                 .where(Experiment.run_id == run_id, Measurement.worker != ""))
            return sorted(str(w) for w in s.exec(q))

    def drifted(self, run_id: int) -> list[dict[str, int]]:
        """A run's measurements whose machine speed was not the champion's: experiment, seed."""
        with self._tx() as s:
            q = (select(Measurement.experiment_id, Measurement.seed)
                 .join(Experiment, col(Experiment.id) == col(Measurement.experiment_id))
                 .where(Experiment.run_id == run_id, col(Measurement.drift).is_not(None))
                 .order_by(col(Measurement.id)))
            return [{"experiment": e, "seed": seed} for e, seed in s.exec(q)]

    def add_call(self, **fields: Any) -> AgentCall:
        return self._add(AgentCall(**fields))

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

    # -- the agent's context: throughput, diffs, notes, guidance (issue 21) ----------------
    def throughput(self, exp_ids: Sequence[int]) -> dict[int, dict[str, float]]:
        """Per experiment, over its own successful measurements: mean steps, tokens per
        second of training, parameters and peak memory (what decides whether an idea pays
        under a budget)."""
        if not exp_ids:
            return {}
        m = Measurement
        with self._tx() as s:
            q = (select_columns(col(m.experiment_id), func.avg(m.steps), func.sum(m.train_tokens),
                                func.sum(m.train_seconds), func.max(m.params),
                                func.max(m.peak_memory_mb))
                 .where(col(m.experiment_id).in_(list(exp_ids)),
                        col(m.role) == MeasurementRole.candidate,
                        col(m.status) == RunStatus.ok)
                 .group_by(col(m.experiment_id)))
            out: dict[int, dict[str, float]] = {}
            for e, steps, tokens, secs, params, peak in s.execute(q).all():
                out[int(e)] = {"steps": float(steps or 0), "params": float(params or 0),
                               "peak_memory_mb": float(peak or 0),
                               "tokens_per_s": float(tokens or 0) / secs if secs else 0.0}
            return out

    def diffs(self, exp_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """(diff, rationale) of these experiments: the texts the history reads for a few."""
        if not exp_ids:
            return {}
        with self._tx() as s:
            q = select(Experiment.id, Experiment.diff, Experiment.rationale).where(
                col(Experiment.id).in_(list(exp_ids)))
            return {int(i or 0): (d or "", r or "") for i, d, r in s.exec(q).all()}

    def since_keep(self, run_id: int) -> int:
        """Candidates finished since the run's last keep (or its baseline): the dry spell."""
        mine = (Experiment.run_id == run_id, Experiment.kind == ExperimentKind.candidate)
        with self._tx() as s:
            last = s.exec(select(func.max(Experiment.id)).where(
                *mine, Experiment.status == S.kept)).one()
            q = select(func.count()).select_from(Experiment).where(
                *mine, col(Experiment.status).in_(list(FINAL - {S.kept, S.interrupted})),
                col(Experiment.id) > (last or 0))
            return int(s.exec(q).one())

    def latest_notes(self, run_id: int) -> AgentCall | None:
        """The run's newest call that wrote notes (they survive a resume: they are rows)."""
        with self._tx() as s:
            q = (select(AgentCall).where(AgentCall.run_id == run_id,
                                         col(AgentCall.notes).is_not(None))
                 .order_by(col(AgentCall.id).desc()).limit(1))
            row = s.exec(q).first()
            return None if row is None else _detach(row)

    def add_guidance(self, run_id: int, text: str) -> Guidance:
        return self._add(Guidance(run_id=run_id, text=text))

    def guidance(self, run_id: int, *, active_at: datetime | None = None,
                 everything: bool = False) -> list[Guidance]:
        """A run's guidance, oldest first: the entries active now (default), active at a
        moment (``active_at``: added before it, not cleared by then), or all of them."""
        with self._tx() as s:
            q = select(Guidance).where(Guidance.run_id == run_id)
            rows = [_detach(g) for g in s.exec(q.order_by(col(Guidance.id)))]
        if everything:
            return rows
        if active_at is None:
            return [g for g in rows if g.cleared_at is None]
        at = active_at if active_at.tzinfo else active_at.replace(tzinfo=UTC)
        return [g for g in rows if _aware(g.created_at) <= at
                and (g.cleared_at is None or _aware(g.cleared_at) > at)]

    def clear_guidance(self, run_id: int) -> int:
        """Clear every active entry of a run (kept, with when it was cleared): how many."""
        with self._tx() as s:
            rows = list(s.exec(select(Guidance).where(Guidance.run_id == run_id,
                                                      col(Guidance.cleared_at).is_(None))))
            for g in rows:
                g.cleared_at = _now()
                s.add(g)
            return len(rows)


def _aware(t: datetime) -> datetime:
    """SQLite gives back naive datetimes: they were written in UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _verdict_numbers(decision: str | None) -> dict[str, Any]:
    """The numbers of a candidate's verdict for its history line: the bar it had to clear,
    at which stage, on how many seeds (from the typed decision record; {} for none)."""
    try:
        raw = json.loads(decision) if decision else None
        if isinstance(raw, dict) and "record" not in raw and "verdict" in raw:
            raw["record"] = "judged"  # written before the tag
        d = _DECISION.validate_python(raw) if isinstance(raw, dict) else None
    except (ValueError, ValidationError):
        return {}
    if isinstance(d, Judged):
        ev = d.evidence
        seeds = ev.get("seeds")
        return {"threshold": d.threshold if math.isfinite(d.threshold) else None,
                "stage": ev.get("stage") if isinstance(ev.get("stage"), str) else None,
                "seeds": len(seeds) if isinstance(seeds, list) else 0}
    return {}


def _upgrade_if_older(path: Path) -> None:
    """A reader (the dashboard) opening a results.db that an older version wrote: add the
    tables and columns this version reads, once, as any command that writes would (they are
    only ever added, each with a default, so nothing recorded changes). A file that is missing
    or already current is left alone."""
    if not path.is_file():
        return
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                 timeout=30)) as conn:
        for table in SQLModel.metadata.sorted_tables:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")}
            if not {c.name for c in table.columns} <= have:
                break
        else:
            return
    Store(path).close()


def _add_new_columns(conn: Any) -> None:
    """A results.db from an older version lacks the columns added since: add them (each has a
    default, so old rows read as before). Columns are only ever added, never changed."""
    for table in SQLModel.metadata.sorted_tables:
        have = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table.name})")}
        for column in table.columns:
            if column.name in have:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            default = getattr(column.default, "arg", None)
            literal = "" if default is None or callable(default) else f" DEFAULT {default!r}"
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
                                 f"{kind}{literal}")


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
