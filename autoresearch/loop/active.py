"""The run being worked on, and everything a step of the loop needs to reach from it.

``ActiveRun`` exists only once a run does (``start``, ``resume``, ``reopen``): nothing that
uses it has to ask whether there is a run. Its ``measure`` is the one way a step measures
code: a job handed to a worker, its speed bookkeeping and its record in the store.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autoresearch import runner
from autoresearch import speed as speed_mod
from autoresearch.config import Settings
from autoresearch.data import PreparedData, prepare
from autoresearch.errors import AutoresearchError, UsageError, one_line
from autoresearch.jobs import Job, Worker
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import ExperimentStatus, Proposal, RunState, RunStatus
from autoresearch.store import Experiment, Run, Store, is_done
from autoresearch.workspace import Workspace

ES = ExperimentStatus

# how a failed training job is recorded
JOB_STATUS = {
    RunStatus.crash: ES.crashed,
    RunStatus.nan: ES.crashed,
    RunStatus.timeout: ES.timeout,
    RunStatus.overtime: ES.invalid,
    RunStatus.invalid_model: ES.invalid,
    RunStatus.not_causal: ES.invalid,
    RunStatus.rejected: ES.rejected,
}


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
    _drifting: bool = False

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
        return {m.seed: m.val_bpb for m in self.store.measurements(exp_id, role="candidate")
                if m.status == RunStatus.ok and m.val_bpb is not None}

    def seconds(self, exp_id: int) -> float:
        return sum(m.total_seconds for m in self.store.measurements(exp_id))

    def failed(self, exp_id: int, m: Metrics, **fields: Any) -> Experiment:
        """Record a failed training job as the experiment's final status."""
        return self.store.transition(exp_id, JOB_STATUS[m.status], reason=one_line(m.error),
                                     **fields)

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
    def measure(self, worker: Worker, exp_id: int, wt: Path, seeds: list[int],
                role: str = "candidate") -> tuple[dict[int, float], Metrics | None]:
        """Measure ``seeds`` in order on ``worker``; stop at the first failure (the 2nd item).
        ``role`` "champion": the champion's code, measured alongside candidate ``exp_id``."""
        values: dict[int, float] = {}
        folder = "seed" if role == "candidate" else f"{role}-seed"
        for seed in seeds:
            job = Job(source=wt, data=self.data.path, budget=self.budget, seed=seed,
                      device=self.run.device, out_dir=self.ws.exp_dir(exp_id) / f"{folder}-{seed}",
                      setup_cap=self.settings.setup_cap, timeout=self.settings.timeout,
                      sandbox=self.settings.sandbox, expect_sha256=self.run.dataset_sha256)
            m = self._run_job(worker, job)
            if self.stopping is not None:
                raise Stopping(self.stopping)
            self.store.add_measurement(exp_id, m, role=role, **self._speed(exp_id, seed, m))
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

    def _speed(self, exp_id: int, seed: int, m: Metrics) -> dict[str, Any]:
        """The measurement's machine speed, relative to the champion's; a drift is recorded
        and, when it starts or ends under a time budget, said in one line."""
        speed = speed_mod.combined(m.speed_before, m.speed_after)
        ref = self._reference_speeds()
        ratio = speed_mod.ratio(speed, ref)
        tol = speed_mod.tolerance(ref)
        why = None
        if speed_mod.drifted(ratio, ref):
            assert ratio is not None
            why = (f"the machine ran at {speed_mod.describe(ratio)} of the champion's "
                   f"measurements (tolerance ±{math.expm1(tol):.0%})")
        elif m.speed_before and m.speed_after and speed_mod.drifted(
                m.speed_after / m.speed_before, ref or [m.speed_before]):
            why = (f"the machine's speed changed during training ({m.speed_before:.3g} -> "
                   f"{m.speed_after:.3g} GFLOP/s)")
        if self.budget.kind == "time" and (why is not None) != self._drifting:
            self._drifting = why is not None
            where = f"experiment {exp_id} seed {seed}"
            self.reporter.notice(
                f"machine speed drift at {where}: {why}; under a wall-clock budget its "
                "val_bpb is not comparable with earlier measurements, so a promising "
                "candidate is confirmed against the champion re-measured alongside it"
                if why else f"machine speed back within ±{math.expm1(tol):.0%} of the "
                f"champion's at {where}")
        return {"speed": speed, "speed_ratio": ratio, "drift": why}

    def _reference_speeds(self) -> list[float]:
        """The champion's own measurements' speeds (none while the baseline is measured)."""
        if self.run.champion_experiment_id is None:
            return []
        return [m.speed for m in self.store.measurements(self.run.champion_experiment_id,
                                                         role="candidate")
                if m.status == "ok" and m.speed is not None]


# -- making one ---------------------------------------------------------------------------------
def start(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, *,
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


def resume(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, run: Run,
           experiments: int | None) -> tuple[ActiveRun, list[tuple[int, Proposal]]]:
    """Close what a killed loop left in flight, then go on with the same run. Returns the run
    and the interrupted proposals to measure again (each once: its slot in the budget was
    freed when it was closed as interrupted)."""
    if run.id is None:
        raise UsageError("a run that was never recorded cannot be resumed")
    runner.kill_stale(ws.experiments_dir / runner.WARM_DIR)  # a killed loop's spares
    fields: dict[str, Any] = {"state": RunState.running, "stop_reason": None}
    if experiments is not None:
        fields["experiments_planned"] = experiments
    active = reopen(settings, store, ws, reporter, store.update_run(run.id, **fields))
    redo: list[tuple[int, Proposal]] = []
    for exp in store.experiments(run_id=active.id):
        if is_done(exp):
            continue
        assert exp.id is not None
        runner.kill_stale(ws.exp_dir(exp.id))
        store.transition(exp.id, ES.interrupted,
                         reason=f"the loop stopped while it was {exp.status.value}")
        active.cleanup(exp.id, exp.branch)
        again = exp.kind == "candidate" and exp.commit is not None and bool(exp.proposal)
        if again:
            redo.append((exp.id, Proposal.model_validate_json(exp.proposal)))
        reporter.notice(f"experiment {exp.id} was in flight: closed as interrupted"
                        + ("; its proposal will be measured again" if again else ""))
    run = active.run
    reporter.notice(f"resuming run {active.id}: {store.count_candidates(active.id)} of "
                    f"{run.experiments_planned} experiments done")
    return active, redo


def mean(values: dict[int, float]) -> float:
    return statistics.fmean(values.values())
