"""The scheduler: every worker busy, the next proposal ready before a worker frees up.

One thread per worker runs experiments' measure, judge and record steps (the worker's warm
processes are started from that thread and live with it). Proposals (ask, check, apply) run
in threads of their own while workers train: at most one waits per worker (``pipeline``), or
one is asked for only when a worker is free (``pipeline=False``; with one worker, the
sequential loop). The main thread only hands out work and reacts to what finished; the
budget and the cost cap are counted by the run's ``Limits``. The baseline's seeds are spread
over the same workers. Stopping (Ctrl-C, a fatal error) cancels each busy worker's job
(``Worker.cancel``) and records everything in flight as interrupted.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoresearch import decide as decide_mod
from autoresearch.agents.base import Agent, AgentExhausted, AgentFatal
from autoresearch.backends import Worker
from autoresearch.errors import AutoresearchError, one_line
from autoresearch.loop import record
from autoresearch.loop.limits import Limits
from autoresearch.loop.propose import Proposer
from autoresearch.loop.run import ActiveRun, Candidate, LoopStopped, fingerprint
from autoresearch.loop.trial import trial
from autoresearch.metrics import Metrics
from autoresearch.models import (
    ExperimentKind,
    ExperimentStatus,
    MeasurementRole,
    Proposal,
    Purpose,
    RunState,
)
from autoresearch.store import Run

ES = ExperimentStatus


class BaselineFailed(AutoresearchError):
    pass


@dataclass
class _Done:
    """A finished piece of work, posted to the main thread."""

    kind: str  # "ask" or "trial"
    lane: _Lane | None
    result: Any = None
    error: BaseException | None = None


class _Lane:
    """A worker and the one thread that runs its jobs."""

    def __init__(self, worker: Worker, events: queue.Queue[_Done]) -> None:
        self.worker = worker
        self.events = events
        self.inbox: queue.Queue[Callable[[Worker], Any] | None] = queue.Queue()
        self.current: int | None = None  # the experiment it is on
        self.thread = threading.Thread(target=self._serve, name=f"worker {worker.name}",
                                       daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while (work := self.inbox.get()) is not None:
                try:
                    self.events.put(_Done("trial", self, result=work(self.worker)))
                except BaseException as e:
                    self.events.put(_Done("trial", self, error=e))
        finally:
            self.worker.close()  # its warm processes end with the thread that started them

    def give(self, work: Callable[[Worker], Any], exp_id: int | None) -> None:
        self.current = exp_id
        self.inbox.put(work)

    def stop(self) -> None:
        self.inbox.put(None)


class ResearchLoop:
    def __init__(self, active: ActiveRun, agent: Agent, workers: list[Worker], *,
                 redo: list[tuple[int, Proposal]] | None = None) -> None:
        self.active = active
        self.agent = agent
        self.workers = workers
        self.limits = Limits(active, concurrent_calls=agent.concurrent)
        self.proposer = Proposer(active, agent, self.limits, redo=list(redo or []))
        self.events: queue.Queue[_Done] = queue.Queue()
        self.lanes: list[_Lane] = []
        self._asking: list[threading.Thread] = []

    @property
    def run(self) -> Run:
        return self.active.run

    def execute(self) -> Run:
        """Run experiments until the run's budget is spent; returns the finished run."""
        a = self.active
        self.lanes = [_Lane(w, self.events) for w in self.workers]
        try:
            a.reporter.begin(a.run.experiments_planned, a.store.count_candidates(a.id))
            if a.run.champion_experiment_id is None:
                self._baseline()
            self._schedule()
        except KeyboardInterrupt:
            self._halt("interrupted by the user")
            a.update(state=RunState.stopped, stop_reason="interrupted by the user")
            raise
        except (LoopStopped, AgentFatal) as e:
            a.update(state=RunState.stopped, stop_reason=str(e))
            raise LoopStopped(f"{e} (run {a.id} is resumable: autoresearch loop --resume)"
                              ) from e
        except BaselineFailed as e:
            a.update(state=RunState.failed, stop_reason=str(e))
            raise
        except BaseException:
            self._halt("the loop failed")
            raise
        finally:
            for lane in self.lanes:
                lane.stop()
            # every thread started here is waited for: a lane ends once its job has (cancelled
            # when stopping), an ask with its agent call (cancelled too); the bound only keeps a
            # worker or an agent that ignores cancel from hanging the loop forever
            for lane in self.lanes:
                lane.thread.join(timeout=60)
            for thread in self._asking:
                thread.join(timeout=60)
        return a.update(state=RunState.finished)

    # -- the baseline ---------------------------------------------------------------------------
    def _baseline(self) -> None:
        """The baseline on every seed, the seeds spread over the workers."""
        a = self.active
        commit = a.run.baseline_commit
        exp = a.store.add_experiment(run_id=a.id, kind=ExperimentKind.baseline, seq=0,
                                     title="baseline", parent_commit=commit, commit=commit,
                                     fingerprint=fingerprint(a.ws.read_files(commit)))
        assert exp.id is not None
        exp_id = exp.id
        a.store.transition(exp_id, ES.applied)
        wt = a.ws.create_worktree(exp_id, commit, branch=None)
        a.store.transition(exp_id, ES.running)
        a.reporter.phase(exp_id, 0, "baseline", f"measuring {len(a.seeds)} seeds")
        pending = list(a.seeds)
        # on shared CPU cores under a wall-clock budget, a seed measured alone would train
        # faster than candidates beside other workers: a lane with no seed left runs a filler
        # job (the baseline on a spare seed, stored as role "filler", never a value) while
        # the last seeds finish
        fill = (a.budget.kind == "time" and len(self.lanes) > 1 and a.run.device == "cpu"
                and all(lane.worker.shares_host_cores for lane in self.lanes))
        busy = seeds_running = 0
        failed: Metrics | None = None
        values: dict[int, float] = {}
        try:
            fillers = iter(range(max(a.seeds) + 1, max(a.seeds) + 1000))
            while True:
                if failed is not None:
                    pending.clear()  # the seeds not started yet are not measured
                for lane in self.lanes:
                    if lane.current is not None:
                        continue
                    if pending:
                        work = functools.partial(_measure_seed, a, exp_id, wt, pending.pop(0),
                                                 MeasurementRole.candidate)
                        seeds_running += 1
                    elif fill and seeds_running and failed is None:
                        # keep the cores as busy as candidates will find them
                        work = functools.partial(_measure_seed, a, exp_id, wt, next(fillers),
                                                 MeasurementRole.filler)
                    else:
                        continue
                    lane.give(work, exp_id)
                    busy += 1
                if not busy:
                    break
                done = self._next_event()
                assert done.lane is not None
                done.lane.current = None
                busy -= 1
                if done.error is not None:
                    raise done.error
                got, bad, role = done.result
                if role is MeasurementRole.filler:
                    continue
                seeds_running -= 1
                values.update(got)
                failed = failed or bad
        except BaseException as e:
            if not isinstance(e, BaselineFailed):
                self._halt("interrupted by the user" if isinstance(e, KeyboardInterrupt)
                           else one_line(str(e)))
                record.interrupted(a, exp_id, e)
            raise
        a.cleanup(exp_id, None)
        if failed is not None:
            record.failed(a, exp_id, failed)
            raise BaselineFailed(
                f"the baseline failed on seed {failed.seed} ({failed.status.value}): "
                f"{one_line(failed.error)}; "
                f"see {a.ws.exp_dir(exp_id) / f'seed-{failed.seed}' / 'run.log'}"
            )
        values = {s: values[s] for s in a.seeds}
        noise = decide_mod.estimate_noise(values) if len(values) > 1 else None
        record.baseline_kept(a, exp_id, values, noise)

    # -- the experiments ------------------------------------------------------------------------
    def _schedule(self) -> None:
        a = self.active
        s = a.settings
        ready: deque[Candidate] = deque()
        limits = self.limits
        running = 0
        exhausted = False
        stop: BaseException | None = None
        # by default one proposal waits per worker while jobs train, except with one worker:
        # then the next proposal is asked for once the result it would otherwise miss is in
        # (a model's latency is small against a GPU run, and a keep would force a proposal
        # made meanwhile to be ported and measured again); never for a scripted agent
        pipelined = (s.pipeline if s.pipeline is not None
                     else not self.agent.scripted and len(self.lanes) > 1)
        while True:
            free = [lane for lane in self.lanes if lane.current is None]
            while ready and free:
                cand = ready.popleft()
                free.pop(0).give(functools.partial(trial, a, self.proposer, cand=cand),
                                 cand.exp_id)
                running += 1
            waiting = limits.open_asks + len(ready)
            # pipelined: one proposal ready (or being asked for) per worker, busy or not;
            # else only for the workers that are free now
            want = len(self.lanes) if pipelined else len(free)
            while stop is None and not exhausted and waiting < want and limits.start_ask():
                self._ask()
                waiting += 1
            if not limits.open_asks and not running:
                break
            done = self._next_event()
            if done.kind == "ask":
                limits.end_ask()
                if isinstance(done.error, AgentExhausted):
                    if not exhausted:
                        a.reporter.notice(f"the agent has nothing more to propose: "
                                          f"{done.error}")
                    exhausted = True
                elif isinstance(done.error, (LoopStopped, AgentFatal)):
                    stop = stop or done.error
                elif done.error is not None:
                    raise done.error
                elif done.result is not None:
                    if stop is not None:
                        record.interrupted(a, done.result.exp_id, stop)
                    else:
                        ready.append(done.result)
            else:
                assert done.lane is not None
                done.lane.current = None
                running -= 1
                if isinstance(done.error, (LoopStopped, AgentFatal)):
                    stop = stop or done.error
                elif done.error is not None:
                    raise done.error
            if stop is not None:
                while ready:  # proposals not started: measured again on resume
                    record.interrupted(a, ready.popleft().exp_id, stop)
        if stop is not None:
            raise stop

    def _ask(self) -> None:
        def work() -> None:
            try:
                self.events.put(_Done("ask", None, result=self.proposer.next()))
            except BaseException as e:
                self.events.put(_Done("ask", None, error=e))

        # daemon: a call the agent cannot end must not keep the process alive; still owned:
        # execute waits for every ask it started before it returns
        thread = threading.Thread(target=work, name="ask", daemon=True)
        self._asking.append(thread)
        thread.start()

    def _next_event(self) -> _Done:
        while True:  # a timeout keeps Ctrl-C deliverable to this thread
            try:
                return self.events.get(timeout=0.5)
            except queue.Empty:
                continue

    # -- stopping -------------------------------------------------------------------------------
    def _halt(self, why: str) -> None:
        """Stop every job and agent call in flight and record what was in flight as
        interrupted (an ask that ends after this records its experiment interrupted too)."""
        a = self.active
        a.stopping = why
        self.agent.cancel()
        busy = [lane for lane in self.lanes if lane.current is not None]
        for lane in busy:
            lane.worker.cancel()
        for _ in busy:  # each returns as soon as its job's processes are gone
            try:
                done = self.events.get(timeout=60)
            except (queue.Empty, KeyboardInterrupt):
                break
            if done.lane is not None:
                done.lane.current = None
        record.all_interrupted(a, why)


def _measure_seed(a: ActiveRun, exp_id: int, wt: Path, seed: int, role: MeasurementRole,
                  worker: Worker | None = None
                  ) -> tuple[dict[int, float], Metrics | None, MeasurementRole]:
    assert worker is not None
    purpose = Purpose.filler if role is MeasurementRole.filler else Purpose.baseline
    return (*a.run_seeds(worker, exp_id, wt, [seed], purpose, role=role), role)
