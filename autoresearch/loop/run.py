"""The run being worked on: its row, its champion (read and moved under one lock), and the
one way a step runs code on a worker (``run_seeds``: one job per seed, each measurement
stored with its machine speed); and what the steps hand each other (``Candidate``: a
proposal committed in its worktree; ``Outcome``: what measuring it against a champion gave).

``ActiveRun`` exists only once a run does (``open_run``, ``reopen``): nothing that uses it has
to ask whether there is a run.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autoresearch import runner
from autoresearch.backends import Job, Worker
from autoresearch.config import Settings
from autoresearch.data import PreparedData, prepare
from autoresearch.decide import Decision
from autoresearch.decide import pool_noise as decide_noise
from autoresearch.errors import AutoresearchError, UsageError
from autoresearch.loop.drift import DriftWatch
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import ExperimentKind, MeasurementRole, Proposal, Purpose, RunStatus
from autoresearch.store import Experiment, Run, Store
from autoresearch.workspace import Workspace


class Reporter(Protocol):
    def notice(self, message: str) -> None: ...
    def begin(self, planned: int, done: int) -> None: ...
    def phase(self, exp_id: int, seq: int, title: str, phase: str) -> None: ...
    def finished(self, exp: Experiment, best: float | None) -> None: ...


class LoopStopped(AutoresearchError):
    """The loop ended early but cleanly (cost cap, fatal agent error): the run is resumable."""


class Stopping(AutoresearchError):
    """Raised in a worker when the loop is being stopped (Ctrl-C): the experiment it was on
    is recorded as interrupted."""


def fingerprint(files: dict[str, str]) -> str:
    """sha256 of a set of editable files (path and text): equal only for identical code."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()


@dataclass
class Candidate:
    """A proposal checked and committed in its worktree, waiting for a worker or on one."""

    exp_id: int
    seq: int
    proposal: Proposal
    files: dict[str, str]
    parent_commit: str  # the champion it was proposed on (and is measured against)
    parent_id: int
    commit: str
    branch: str
    wt: Path


@dataclass
class Outcome:
    """What measuring a candidate against one champion gave."""

    values: dict[int, float]
    champion: dict[int, float]  # the champion values it was compared with
    verdict: Decision | None  # None when a measurement failed
    failed: Metrics | None = None
    stored: Decision | None = None  # the screen against the stored values (time budgets)


@dataclass
class _Running:
    peak: int  # the most jobs running at once while this one ran


@dataclass
class ActiveRun:
    settings: Settings
    store: Store
    ws: Workspace
    reporter: Reporter
    run: Run
    data: PreparedData
    id: int
    stopping: str | None = None  # why the loop is stopping (set by the scheduler)
    champion_lock: threading.RLock = field(default_factory=threading.RLock)
    _jobs: list[_Running] = field(default_factory=list)
    _jobs_lock: threading.Lock = field(default_factory=threading.Lock)
    _drift: DriftWatch = field(default_factory=DriftWatch)

    # -- the run ----------------------------------------------------------------------------
    @property
    def budget(self) -> Budget:
        return Budget(kind=self.run.budget_kind, amount=self.run.budget_amount)  # type: ignore[arg-type]

    @property
    def seeds(self) -> list[int]:
        return self.run.seed_list

    def update(self, **fields: Any) -> Run:
        self.run = self.store.update_run(self.id, **fields)
        return self.run

    def champion(self) -> tuple[str, int]:
        """The champion's commit and experiment id, read together."""
        with self.champion_lock:
            run = self.run
            assert run.champion_experiment_id is not None
            return run.champion_commit, run.champion_experiment_id

    def best(self) -> float | None:
        if self.run.champion_experiment_id is None:
            return None
        champ = self.store.get_experiment(self.run.champion_experiment_id)
        return None if champ is None else champ.val_bpb

    def values(self, exp_id: int) -> dict[int, float]:
        """seed -> val_bpb of an experiment's own successful measurements."""
        return {m.seed: m.val_bpb
                for m in self.store.measurements(exp_id, role=MeasurementRole.candidate)
                if m.status == RunStatus.ok and m.val_bpb is not None}

    def noise(self, champion_id: int) -> tuple[float | None, int]:
        """The noise a comparison with champion ``champion_id`` is judged with, and its degrees
        of freedom (``decide.pool_noise``): the champion's own values on its seeds pooled with
        every configuration measured on several seeds against it since — a candidate's seeds
        after its screen (the screen selected the first one for being low), each re-measurement
        of the champion alongside, each candidate ported onto it. Configurations differ in how
        noisy they are (a baseline whose seeds spread by 0.14 bpb, a champion after it by
        0.017, on one run here), so the noise of an earlier champion's neighbourhood is not
        used."""
        parents = self.store.parents(self.id)
        first = self.seeds[0]
        own: list[float] = []
        groups: dict[tuple[int, MeasurementRole], list[float]] = {}
        for kind, exp_id, m in self.store.run_measurements(self.id):
            if m.status != RunStatus.ok or m.val_bpb is None:
                continue
            if exp_id == champion_id:
                if m.role is MeasurementRole.candidate:
                    own.append(m.val_bpb)
                continue
            if kind is not ExperimentKind.candidate or parents.get(exp_id) != champion_id:
                continue
            if m.role is MeasurementRole.candidate and m.seed == first and (
                    m.purpose is not Purpose.port):
                continue
            if m.role in (MeasurementRole.candidate, MeasurementRole.champion):
                groups.setdefault((exp_id, m.role), []).append(m.val_bpb)
        return decide_noise(own, list(groups.values()))

    def seconds(self, exp_id: int) -> float:
        return sum(m.total_seconds for m in self.store.measurements(exp_id))

    def cleanup(self, exp_id: int, branch: str | None) -> None:
        """Remove a finished experiment's worktrees and branch, unless the user keeps them."""
        if not self.settings.keep_worktrees:
            self.ws.remove_worktree(exp_id, branch, delete_branch=True)
        for name in ("champion", "port"):  # left by a kill mid-confirmation or mid-port
            self.ws.remove_worktree(exp_id, name=name)

    def write_json(self, exp_id: int, name: str, obj: Any) -> None:
        d = self.ws.exp_dir(exp_id)
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")

    # -- measuring --------------------------------------------------------------------------
    def run_seeds(self, worker: Worker, exp_id: int, wt: Path, seeds: list[int],
                  purpose: Purpose, role: MeasurementRole = MeasurementRole.candidate,
                  split: str = "val") -> tuple[dict[int, float], Metrics | None]:
        """Run ``wt`` on ``seeds`` in order on ``worker``, each measurement stored with why it
        ran (``purpose``); stop at the first failure (the 2nd item).
        ``role`` "champion": the champion's code, measured alongside candidate ``exp_id``.
        ``split`` "test": also score the held-out test split (report measurements only)."""
        values: dict[int, float] = {}
        for seed in seeds:
            if self.stopping is not None:  # not one job more once the loop is stopping
                raise Stopping(self.stopping)
            job = Job(source=wt, data=self.data.path, budget=self.budget, seed=seed,
                      device=self.run.device, out_dir=self.ws.exp_dir(exp_id) / role.folder(seed),
                      setup_cap=self.settings.setup_cap, timeout=self.settings.timeout,
                      sandbox=self.settings.sandbox, expect_sha256=self.run.dataset_sha256,
                      split=split)
            m = self._run_job(worker, job)
            if self.stopping is not None:
                raise Stopping(self.stopping)
            speed = self._drift.observe(self.store, self.run, self.reporter, exp_id, seed, m)
            self.store.add_measurement(exp_id, m, role=role, purpose=purpose, **speed)
            if not m.ok:
                return values, m
            assert m.val_bpb is not None
            values[seed] = m.val_bpb
        return values, None

    def _run_job(self, worker: Worker, job: Job) -> Metrics:
        """One job on its worker, with how many jobs ran at once meanwhile."""
        me = _Running(peak=0)
        with self._jobs_lock:
            self._jobs.append(me)
            for j in self._jobs:
                j.peak = max(j.peak, len(self._jobs))
        try:
            m = worker.measure(job)
        finally:
            with self._jobs_lock:
                self._jobs.remove(me)
        return m.model_copy(update={"worker": m.worker or worker.name, "concurrency": me.peak})

# -- making one ---------------------------------------------------------------------------------
def open_run(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, *,
             agent: str, model: str, experiments: int, workers: list[Worker]) -> ActiveRun:
    """A new run: the baseline committed, the run recorded, its branch made."""
    s = settings
    device = runner.resolve_device(s.device)
    data = prepare(s.dataset, notice=reporter.notice)
    # a run remembers how to find its data again: a path absolute, a name as it is
    spec = str(Path(s.dataset).resolve()) if Path(s.dataset).exists() else data.name
    base = ws.commit_baseline()
    run = store.add_run(
        tag=s.tag, agent=agent, model=model,
        budget_kind=s.budget(device).kind, budget_amount=s.budget(device).amount,
        seeds=json.dumps(s.seed_list()), device=device, dataset=spec,
        dataset_sha256=data.sha256, experiments_planned=experiments,
        min_delta=s.min_delta, branch="", baseline_commit=base, champion_commit=base,
        config=s.model_dump_json(exclude={"prices"}),
    )
    assert run.id is not None
    run_id = run.id
    branch = ws.run_branch(run_id)
    ws.create_branch(branch, base)
    run = store.update_run(run_id, branch=branch)
    active = ActiveRun(settings, store, ws, reporter, run, data, run_id)
    names = ", ".join(w.name for w in workers)
    reporter.notice(
        f"run {run.id}: agent {agent} ({model}), {experiments} experiments, "
        f"{active.budget.describe()} each, seeds {active.seeds}, device {device}, "
        f"data {data.name} ({data.sha256[:12]}), sandbox {runner.sandbox_state(s.sandbox)}, "
        f"{len(workers)} worker{'s' if len(workers) > 1 else ''} ({names})"
    )
    return active


def reopen(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, run: Run
           ) -> ActiveRun:
    """An existing run, its data found again (and checked: same sha256)."""
    if run.id is None:
        raise UsageError("a run that was never recorded cannot be reopened")
    data = prepare(run.dataset, notice=reporter.notice, sha256=run.dataset_sha256)
    if data.sha256 != run.dataset_sha256:
        raise UsageError(
            f"run {run.id} was measured on {run.dataset} ({run.dataset_sha256[:12]}), which "
            f"is not available now (got {data.name}, {data.sha256[:12]}); metrics from "
            "different corpora are never compared"
        )
    return ActiveRun(settings, store, ws, reporter, run, data, run.id)


def mean(values: dict[int, float]) -> float:
    return statistics.fmean(values.values())
