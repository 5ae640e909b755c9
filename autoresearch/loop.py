"""The research loop: the one module that knows all the parts.

A new run measures the baseline on every seed, then each iteration is
context -> agent -> parse/guard/apply (with repair round trips) -> commit in a worktree ->
train + evaluate (first seed, then confirmation seeds) -> decide -> record.
Every state change is committed to the store before the next step, so a loop killed at any
moment resumes (``--resume``) with nothing lost or doubled.

Over 400 lines for now: it is the one module that knows all the parts; DESIGN.md splits it
into loop/ (scheduler, experiment, replay) with the parallel-slots work.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autoresearch import curves as curves_mod
from autoresearch import decide as decide_mod
from autoresearch import edits, guard, runner
from autoresearch import speed as speed_mod
from autoresearch.agents.base import Agent, AgentError, AgentExhausted, AgentFatal, Answer
from autoresearch.config import Settings
from autoresearch.data import PreparedData, prepare
from autoresearch.decide import Decision, Reproduction
from autoresearch.errors import AutoresearchError, UsageError, one_line
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import (
    CallRecord,
    Context,
    ExperimentStatus,
    Proposal,
    RunState,
    RunStatus,
    Stats,
)
from autoresearch.store import Experiment, Run, Store, is_done
from autoresearch.workspace import Workspace

ES = ExperimentStatus
# non-kept attempts read for the agent's history (kept ones are always read): more than a
# history section's token budget can show, so the rendered text is the same as from all of them
HISTORY_RECENT = 400

# how a failed training job is recorded
_JOB_STATUS = {
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


class BaselineFailed(AutoresearchError):
    pass


@dataclass
class _Rejection(Exception):
    message: str
    reason: str


class ResearchLoop:
    def __init__(self, settings: Settings, store: Store, ws: Workspace, agent: Agent,
                 reporter: Reporter) -> None:
        self.settings = settings
        self.store = store
        self.ws = ws
        self.agent = agent
        self.reporter = reporter
        self.run: Run | None = None
        self.data: PreparedData | None = None
        self.redo: list[tuple[int, Proposal]] = []  # interrupted proposals to measure again
        self.drifting = False  # the last measurement's machine speed was not the champion's
        self.slot: runner.Slot | None = None  # warm processes for the next measurement

    # -- run lifecycle ----------------------------------------------------------------------
    def start(self, experiments: int) -> Run:
        s = self.settings
        device = runner.resolve_device(s.device)
        data = prepare(s.dataset, notice=self.reporter.notice)
        # a run remembers how to find its data again: a path absolute, a name as it is
        spec = str(Path(s.dataset).resolve()) if Path(s.dataset).exists() else data.name
        base = self.ws.commit_baseline()
        run = self.store.add_run(
            tag=s.tag, agent=self.agent.name, model=self.agent.model,
            budget_kind=s.budget(device).kind, budget_amount=s.budget(device).amount,
            seeds=json.dumps(s.seed_list()), device=device, dataset=spec,
            dataset_sha256=data.sha256, experiments_planned=experiments,
            min_delta=s.min_delta, branch="", baseline_commit=base, champion_commit=base,
            config=s.model_dump_json(exclude={"prices"}),
        )
        assert run.id is not None
        branch = self.ws.run_branch(run.id)
        self.ws.create_branch(branch, base)
        self.run = self.store.update_run(run.id, branch=branch)
        self.data = data
        self.reporter.notice(
            f"run {run.id}: agent {self.agent.name} ({self.agent.model}), {experiments} "
            f"experiments, {self.budget.describe()} each, seeds {self.seeds}, device {device}, "
            f"data {data.name} ({data.sha256[:12]}), sandbox {runner.sandbox_state(s.sandbox)}"
        )
        return self.run

    def resume(self, run: Run, experiments: int | None) -> Run:
        """Close what a killed loop left in flight, then go on with the same run."""
        assert run.id is not None
        runner.kill_stale(self.ws.experiments_dir / runner.WARM_DIR)  # a killed loop's spares
        for exp in self.store.experiments(run_id=run.id):
            if not is_done(exp):
                assert exp.id is not None
                runner.kill_stale(self.ws.exp_dir(exp.id))
                self.store.transition(exp.id, ES.interrupted,
                                      reason=f"the loop stopped while it was {exp.status.value}")
                self._cleanup(exp.id, exp.branch)
                redo = exp.kind == "candidate" and exp.commit is not None and exp.proposal
                if redo:
                    self.redo.append((exp.id, Proposal.model_validate_json(exp.proposal)))
                self.reporter.notice(f"experiment {exp.id} was in flight: closed as interrupted"
                                     + ("; its proposal will be measured again" if redo else ""))
        fields: dict[str, Any] = {"state": RunState.running, "stop_reason": None}
        if experiments is not None:
            fields["experiments_planned"] = experiments
        self.run = self.store.update_run(run.id, **fields)
        self.data = self._data_for(self.run)
        self.reporter.notice(f"resuming run {run.id}: "
                             f"{self.store.count_candidates(run.id)} of "
                             f"{self.run.experiments_planned} experiments done")
        return self.run

    def _data_for(self, run: Run) -> PreparedData:
        data = prepare(run.dataset, notice=self.reporter.notice)
        if data.sha256 != run.dataset_sha256:
            raise UsageError(
                f"run {run.id} was measured on {run.dataset} ({run.dataset_sha256[:12]}), which "
                f"is not available now (got {data.name}, {data.sha256[:12]}); metrics from "
                "different corpora are never compared"
            )
        return data

    @property
    def budget(self) -> Budget:
        assert self.run is not None
        return Budget(kind=self.run.budget_kind, amount=self.run.budget_amount)  # type: ignore[arg-type]

    @property
    def seeds(self) -> list[int]:
        assert self.run is not None
        return self.run.seed_list

    def execute(self) -> Run:
        """Run experiments until the run's budget is spent; returns the finished run. Its
        measurements start their processes ahead (runner.Slot); none outlives this call."""
        with runner.Slot(self.ws.experiments_dir) as self.slot:
            try:
                return self._execute()
            finally:
                self.slot = None

    def _execute(self) -> Run:
        assert self.run is not None and self.run.id is not None
        run_id = self.run.id
        try:
            self.reporter.begin(self.run.experiments_planned, self.store.count_candidates(run_id))
            if self.run.champion_experiment_id is None:
                self.measure_baseline()
            while self.store.count_candidates(run_id) < self.run.experiments_planned:
                try:
                    self.iteration()
                except AgentExhausted as e:
                    self.reporter.notice(f"the agent has nothing more to propose: {e}")
                    break
        except KeyboardInterrupt:
            self.run = self.store.update_run(run_id, state=RunState.stopped,
                                             stop_reason="interrupted by the user")
            raise
        except (LoopStopped, AgentFatal) as e:
            self.run = self.store.update_run(run_id, state=RunState.stopped, stop_reason=str(e))
            raise LoopStopped(f"{e} (run {run_id} is resumable: autoresearch loop --resume)") from e
        except BaselineFailed as e:
            self.run = self.store.update_run(run_id, state=RunState.failed, stop_reason=str(e))
            raise
        self.run = self.store.update_run(run_id, state=RunState.finished)
        return self.run

    def check_cost(self) -> None:
        """Stop cleanly before the next agent call could cross ``--max-cost``."""
        cap = self.settings.max_cost
        if cap is None:
            return
        assert self.run is not None and self.run.id is not None
        spent, dearest = self.store.spending(self.run.id)
        # the next call is assumed to cost as much as the dearest one so far
        if spent + dearest > cap:
            raise LoopStopped(f"cost cap reached: ${spent:.4f} spent, the next call would cost "
                              f"about ${dearest:.4f}, cap ${cap:.4f}")

    # -- the baseline -------------------------------------------------------------------------
    def measure_baseline(self) -> None:
        assert self.run is not None and self.run.id is not None
        commit = self.run.baseline_commit
        exp = self.store.add_experiment(run_id=self.run.id, kind="baseline", seq=0,
                                        title="baseline", parent_commit=commit, commit=commit)
        assert exp.id is not None
        self.store.transition(exp.id, ES.applied)
        with self._in_flight(exp.id):
            wt = self.ws.create_worktree(exp.id, commit, branch=None)
            self.store.transition(exp.id, ES.running)
            self.reporter.phase(exp.id, 0, "baseline", f"measuring {len(self.seeds)} seeds")
            values, failed = self._measure(exp.id, wt, self.seeds)
            self._cleanup(exp.id, None)
        if failed is not None:
            self._failed(exp.id, failed)
            raise BaselineFailed(
                f"the baseline failed on seed {failed.seed} ({failed.status.value}): "
                f"{one_line(failed.error)}; "
                f"see {self.ws.exp_dir(exp.id) / f'seed-{failed.seed}' / 'run.log'}"
            )
        mean = statistics.fmean(values.values())
        noise = decide_mod.estimate_noise(values) if len(values) > 1 else None
        self.store.transition(exp.id, ES.measured, val_bpb=mean, seconds=self._seconds(exp.id))
        done = self.store.transition(
            exp.id, ES.kept, delta=0.0, champion_bpb=mean,
            reason=f"baseline: {mean:.4f} ± {noise or 0:.4f} over {len(values)} seeds",
            decision=json.dumps({"values": values, "noise_std": noise}),
        )
        self.run = self.store.update_run(self.run.id, champion_experiment_id=exp.id,
                                         noise_std=noise)
        self.reporter.finished(done, mean)

    # -- one experiment -----------------------------------------------------------------------
    def iteration(self) -> Experiment:
        assert self.run is not None and self.run.id is not None
        run = self.run
        assert run.id is not None
        champion_files = self.ws.read_files(run.champion_commit)
        context = self.build_context(champion_files)
        seq = self.store.count_candidates(run.id) + 1

        if self.redo:
            old_id, redo = self.redo.pop(0)
            answer: Answer | Experiment = Answer(proposal=redo.model_copy(
                update={"rationale": f"(redo of interrupted #{old_id}) {redo.rationale}"}))
        else:
            answer = self._ask_first(context, seq)
        if isinstance(answer, Experiment):
            return answer  # the agent failed; recorded as a rejected experiment
        exp = self.store.add_experiment(run_id=run.id, kind="candidate", seq=seq,
                                        parent_commit=run.champion_commit,
                                        title="(no usable proposal)")
        assert exp.id is not None
        exp_id = exp.id
        self._record_calls(exp_id, answer.calls, attempt=0)
        with self._in_flight(exp_id):
            proposal, files = self._usable(exp_id, context, champion_files, answer)
            if proposal is None:
                rejected = self.store.get_experiment(exp_id)
                assert rejected is not None
                return rejected
            return self._try(exp_id, seq, proposal, files)

    def _ask_first(self, context: Context, seq: int) -> Answer | Experiment:
        """The agent's first answer; a failed call is recorded as a rejected experiment."""
        assert self.run is not None and self.run.id is not None
        run = self.run
        self.check_cost()
        try:
            return self.agent.propose(context)
        except AgentFatal as e:
            self._record_calls(None, e.calls, attempt=0)
            raise
        except AgentError as e:
            exp = self.store.add_experiment(run_id=run.id, kind="candidate", seq=seq,
                                            parent_commit=run.champion_commit,
                                            title="(agent failed)")
            assert exp.id is not None
            self._record_calls(exp.id, e.calls, attempt=0)
            exp = self.store.transition(exp.id, ES.rejected,
                                        reason=f"agent failed: {one_line(str(e))}")
            self.reporter.finished(exp, self._best())
            return exp

    def _record_calls(self, exp_id: int | None, calls: list[CallRecord], attempt: int) -> None:
        assert self.run is not None and self.run.id is not None
        for c in calls:
            self.store.add_call(run_id=self.run.id, experiment_id=exp_id, attempt=attempt,
                                provider=c.provider, model=c.model, input_tokens=c.input_tokens,
                                output_tokens=c.output_tokens, latency_s=c.latency_s,
                                cost_usd=c.cost_usd, error=c.error, raw=c.raw)

    def _usable(self, exp_id: int, context: Context, champion: dict[str, str],
                answer: Answer) -> tuple[Proposal | None, dict[str, str]]:
        """Parse, guard and dry-run the answer; repair round trips until usable or out of tries."""
        last: _Rejection | None = None
        for attempt in range(self.settings.repairs + 1):
            if attempt > 0:
                assert last is not None
                context = context.model_copy(update={
                    "repair": last.message,
                    "previous_answer": answer.text or (answer.proposal.model_dump_json(indent=1)
                                                       if answer.proposal else ""),
                })
                self.reporter.phase(exp_id, 0, "repair", f"repair {attempt}: {last.reason}")
                self.check_cost()
                try:
                    answer = self.agent.propose(context)
                except AgentError as e:  # AgentFatal too: record its calls, then it propagates
                    self._record_calls(exp_id, e.calls, attempt=attempt)
                    if isinstance(e, AgentFatal):
                        raise
                    last = _Rejection(str(e), f"agent failed: {one_line(str(e))}")
                    break
                self._record_calls(exp_id, answer.calls, attempt=attempt)
            try:
                proposal = answer.proposal or edits.parse_answer(answer.text)
                self.store.update_experiment(exp_id, title=proposal.title[:200],
                                             rationale=proposal.rationale,
                                             proposal=proposal.model_dump_json())
                files = self._check(proposal, champion)
                return proposal, files
            except edits.FormatError as e:
                last = _Rejection(str(e), f"unusable answer: {one_line(str(e))}")
            except edits.EditError as e:
                last = _Rejection(str(e), f"edit failed: {one_line(str(e))}")
            except guard.GuardViolation as e:
                last = _Rejection(e.message, f"guard [{e.rule}]: {one_line(e.message)}")
        assert last is not None
        self.store.transition(exp_id, ES.rejected, reason=last.reason)
        self._write_json(exp_id, "proposal.json", {"rejected": last.reason,
                                                   "message": last.message})
        self.reporter.finished(self.store.get_experiment(exp_id), self._best())  # type: ignore[arg-type]
        return None, {}

    def _check(self, proposal: Proposal, champion: dict[str, str]) -> dict[str, str]:
        guard.check_paths([e.path for e in proposal.edits], self.ws.editable)
        files = edits.apply_edits(champion, proposal.edits)
        changed = {p: t for p, t in files.items() if champion.get(p) != t}
        if not changed:
            raise edits.EditError("the edits leave every file exactly as it was; change something")
        for path, text in changed.items():
            guard.check_source(path, text)
        return files

    def _try(self, exp_id: int, seq: int, proposal: Proposal, files: dict[str, str]) -> Experiment:
        assert self.run is not None and self.run.id is not None
        run = self.run
        assert run.id is not None
        branch = f"exp/{exp_id}"
        self._write_json(exp_id, "proposal.json", proposal.model_dump())
        wt = self.ws.create_worktree(exp_id, run.champion_commit, branch=branch)
        commit, diff = self.ws.commit_files(wt, files, f"#{exp_id}: {proposal.title}\n\n"
                                            f"{proposal.rationale}")
        self.ws.pin(exp_id, commit)
        (self.ws.exp_dir(exp_id) / "diff.patch").write_text(diff, encoding="utf-8")
        self.store.transition(exp_id, ES.applied, commit=commit, branch=branch, diff=diff)

        self.store.transition(exp_id, ES.running)
        self.reporter.phase(exp_id, seq, proposal.title, f"training seed {self.seeds[0]}")
        values, failed = self._measure(exp_id, wt, self.seeds[:1])
        champion = self._champion_values()
        noise = run.noise_std or 0.0
        verdict = None
        stored: Decision | None = None  # the screen's verdict against the stored champion
        if failed is None:
            self.store.transition(exp_id, ES.measured, val_bpb=statistics.fmean(values.values()))
            verdict = decide_mod.decide(values, champion, noise_std=noise,
                                        min_delta=run.min_delta, seeds=self.seeds)
            if verdict.verdict != "discard" and self.budget.kind == "time":
                # wall-clock results depend on the machine's speed at the time: a promising
                # candidate is judged against the champion re-measured alongside it
                stored = verdict
                self.store.transition(exp_id, ES.running)
                self.reporter.phase(exp_id, seq, proposal.title,
                                    f"confirming alongside the champion on seeds {self.seeds}")
                values, control, failed, champion_failed = self._alongside(exp_id, wt, values)
                if champion_failed is not None:
                    self.store.transition(exp_id, ES.measured,
                                          val_bpb=statistics.fmean(values.values()))
                    verdict = Decision(
                        verdict="discard", delta=None, evidence={"stored": stored.evidence},
                        reason=f"discarded: the champion's re-measurement failed on seed "
                        f"{champion_failed.seed} ({champion_failed.status.value}): "
                        f"{one_line(champion_failed.error)}")
                    champion = {}
                elif failed is None:
                    self.store.transition(exp_id, ES.measured,
                                          val_bpb=statistics.fmean(values.values()))
                    champion = control
                    verdict = decide_mod.decide(values, champion, noise_std=noise,
                                                min_delta=run.min_delta, seeds=self.seeds)
                    verdict = _alongside_evidence(verdict, stored)
            elif verdict.verdict == "confirm":
                rest = [s for s in self.seeds if s not in values]
                self.store.transition(exp_id, ES.running)
                self.reporter.phase(exp_id, seq, proposal.title, f"confirming on seeds {rest}")
                more, failed = self._measure(exp_id, wt, rest)
                values.update(more)
                if failed is None:
                    self.store.transition(exp_id, ES.measured,
                                          val_bpb=statistics.fmean(values.values()))
                    verdict = decide_mod.decide(values, champion, noise_std=noise,
                                                min_delta=run.min_delta, seeds=self.seeds)
        if failed is not None:
            exp = self._failed(exp_id, failed, seconds=self._seconds(exp_id))
        else:
            assert verdict is not None
            paired = [s for s in self.seeds if s in values and s in champion]
            champ_mean = statistics.fmean(champion[s] for s in paired) if paired else None
            evidence = verdict.model_dump()
            fields = dict(val_bpb=statistics.fmean(values.values()), champion_bpb=champ_mean,
                          delta=verdict.delta, reason=verdict.reason,
                          decision=json.dumps(evidence), seconds=self._seconds(exp_id))
            if verdict.verdict == "keep":
                self.ws.advance(run.branch, commit)
                self.run = self.store.update_run(run.id, champion_commit=commit,
                                                 champion_experiment_id=exp_id)
                exp = self.store.transition(exp_id, ES.kept, **fields)
            else:
                exp = self.store.transition(exp_id, ES.discarded, **fields)
        self._cleanup(exp_id, branch)
        self.reporter.finished(exp, self._best())
        return exp

    # -- replay -------------------------------------------------------------------------------
    def replay(self, exp: Experiment, *, onto: str, seeds: int | None) -> dict[str, Any]:
        """Apply ``exp``'s stored diff onto a base, measure it, and compare with the original."""
        run = self.store.get_run(exp.run_id)
        assert run is not None and run.id is not None and exp.id is not None
        if exp.kind != "candidate" or not exp.diff or not exp.commit:
            raise UsageError(f"experiment {exp.id} has no diff to replay ({exp.kind}, "
                             f"{exp.status.value})")
        self.run = run
        self.data = self._data_for(run)
        base = {"baseline": run.baseline_commit, "champion": run.champion_commit}.get(onto)
        base = base or self.ws.resolve(onto)
        k = seeds if seeds is not None else len(run.seed_list)
        seed_list = [run.seed_list[0] + i for i in range(k)]
        new = self.store.add_experiment(
            run_id=run.id, kind="replay", seq=exp.seq, title=f"replay of #{exp.id}: {exp.title}",
            rationale=exp.rationale, proposal=exp.proposal, parent_commit=base,
            replay_of=exp.id)
        assert new.id is not None
        with self._in_flight(new.id):
            wt = self.ws.create_worktree(new.id, base, branch=None)
            try:
                self.ws.apply_diff(wt, exp.diff)
                files = {p: (wt / p).read_text(encoding="utf-8") for p in self.ws.editable}
                for path, text in files.items():
                    guard.check_source(path, text)
            except (UsageError, guard.GuardViolation) as e:
                self.store.transition(new.id, ES.rejected, reason=one_line(str(e)))
                self._cleanup(new.id, None)
                raise UsageError(f"cannot replay experiment {exp.id} onto {onto}: {e}") from e
            commit, diff = self.ws.commit_files(wt, files, f"replay of #{exp.id}: {exp.title}")
            self.ws.pin(new.id, commit)
            self.store.transition(new.id, ES.applied, commit=commit, diff=diff)
            self.store.transition(new.id, ES.running)
            self.reporter.phase(new.id, exp.seq, new.title, f"measuring seeds {seed_list}")
            values, failed = self._measure(new.id, wt, seed_list)
            self._cleanup(new.id, None)
        original = self._ok_values(exp.id)
        result: dict[str, Any] = {
            "original": exp.id, "replay": new.id, "onto": onto, "base_commit": base,
            "original_values": original, "replay_values": values, "ok": failed is None,
        }
        if failed is not None:
            self._failed(new.id, failed)
            result["verdict"] = f"replay failed ({failed.status.value}): {one_line(failed.error)}"
            return result
        check = decide_mod.reproduces(original, values, noise_std=run.noise_std or 0.0)
        if not check.reproduces and self.budget.kind == "time":
            check = self._machine_note(check, exp.id, new.id)
        mean = statistics.fmean(values.values())
        self.store.transition(new.id, ES.measured, val_bpb=mean, reason=check.reason,
                              decision=check.model_dump_json(), seconds=self._seconds(new.id),
                              delta=check.delta)
        result["verdict"] = check.reason
        result["reproduces"] = check.reproduces
        return result

    def _machine_note(self, check: Reproduction, original: int, replay: int) -> Reproduction:
        """A replay that differs under a wall-clock budget: was it the machine?"""
        def speeds(exp_id: int) -> list[float]:
            return [m.speed for m in self.store.measurements(exp_id, role="candidate")
                    if m.speed is not None]

        before, now = speeds(original), speeds(replay)
        r = speed_mod.ratio(statistics.median(now) if now else None, before)
        if not speed_mod.drifted(r, before):
            return check
        assert r is not None
        note = (f"; but the machine ran at {speed_mod.describe(r)} of the original's "
                "measurements: under a wall-clock budget the difference is the machine's, not "
                "the code's (--token-budget compares the code alone)")
        return check.model_copy(update={"reason": check.reason + note,
                                        "evidence": check.evidence | {"speed_ratio": r}})

    # -- helpers ------------------------------------------------------------------------------
    def _measure(self, exp_id: int, wt: Path, seeds: list[int], role: str = "candidate"
                 ) -> tuple[dict[int, float], Metrics | None]:
        """Measure ``seeds`` in order; stop at the first failure (returned as the 2nd item).
        ``role`` "champion": the champion's code, measured alongside candidate ``exp_id``."""
        assert self.run is not None and self.data is not None
        values: dict[int, float] = {}
        folder = "seed" if role == "candidate" else "champion-seed"
        for seed in seeds:
            m = runner.measure(source=wt, data=self.data.path, budget=self.budget, seed=seed,
                               device=self.run.device,
                               out_dir=self.ws.exp_dir(exp_id) / f"{folder}-{seed}",
                               setup_cap=self.settings.setup_cap, timeout=self.settings.timeout,
                               gpu=self.settings.gpu, sandbox=self.settings.sandbox,
                               expect_sha256=self.run.dataset_sha256, slot=self.slot)
            self.store.add_measurement(exp_id, m, role=role, **self._speed(exp_id, seed, m))
            if not m.ok:
                return values, m
            assert m.val_bpb is not None
            values[seed] = m.val_bpb
        return values, None

    def _alongside(self, exp_id: int, wt: Path, values: dict[int, float]
                   ) -> tuple[dict[int, float], dict[int, float], Metrics | None, Metrics | None]:
        """Measure the champion on every seed, each next to the candidate's run on that seed
        (candidate s0 was just measured; then champion s0, champion s1, candidate s1, champion
        s2, candidate s2, ...), so both values of a pair ran in the same conditions.
        Returns (candidate values, champion values, candidate failure, champion failure)."""
        assert self.run is not None
        champ_wt = self.ws.create_worktree(exp_id, self.run.champion_commit, branch=None,
                                           name="champion")
        control: dict[int, float] = {}
        try:
            for seed in self.seeds:
                got, bad = self._measure(exp_id, champ_wt, [seed], role="champion")
                if bad is not None:
                    return values, control, None, bad
                control.update(got)
                if seed not in values:
                    got, bad = self._measure(exp_id, wt, [seed])
                    if bad is not None:
                        return values, control, bad, None
                    values.update(got)
        finally:
            self.ws.remove_worktree(exp_id, name="champion")
        return values, control, None, None

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
        if self.budget.kind == "time" and (why is not None) != self.drifting:
            self.drifting = why is not None
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
        if self.run is None or self.run.champion_experiment_id is None:
            return []
        return [m.speed for m in self.store.measurements(self.run.champion_experiment_id,
                                                         role="candidate")
                if m.status == "ok" and m.speed is not None]

    def _champion_values(self) -> dict[int, float]:
        assert self.run is not None and self.run.champion_experiment_id is not None
        return self._ok_values(self.run.champion_experiment_id)

    def _ok_values(self, exp_id: int) -> dict[int, float]:
        """seed -> val_bpb of an experiment's own successful measurements."""
        return {m.seed: m.val_bpb for m in self.store.measurements(exp_id, role="candidate")
                if m.status == RunStatus.ok and m.val_bpb is not None}

    def _failed(self, exp_id: int, m: Metrics, **fields: Any) -> Experiment:
        """Record a failed training job as the experiment's final status."""
        return self.store.transition(exp_id, _JOB_STATUS[m.status], reason=one_line(m.error),
                                     **fields)

    def _best(self) -> float | None:
        assert self.run is not None
        if self.run.champion_experiment_id is None:
            return None
        champ = self.store.get_experiment(self.run.champion_experiment_id)
        return None if champ is None else champ.val_bpb

    def _seconds(self, exp_id: int) -> float:
        return sum(m.total_seconds for m in self.store.measurements(exp_id))

    def _cleanup(self, exp_id: int, branch: str | None) -> None:
        """Remove a finished experiment's worktree and branch, unless the user keeps them."""
        if not self.settings.keep_worktrees:
            self.ws.remove_worktree(exp_id, branch, delete_branch=True)
        self.ws.remove_worktree(exp_id, name="champion")  # left by a kill mid-confirmation

    def _write_json(self, exp_id: int, name: str, obj: Any) -> None:
        d = self.ws.exp_dir(exp_id)
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")

    @contextmanager
    def _in_flight(self, exp_id: int) -> Iterator[None]:
        """Ctrl-C or an agent that cannot go on: record the experiment as interrupted."""
        try:
            yield
        except (KeyboardInterrupt, AgentFatal, LoopStopped) as e:
            exp = self.store.get_experiment(exp_id)
            if exp is not None and not is_done(exp):
                why = "interrupted by the user" if isinstance(e, KeyboardInterrupt) else str(e)
                self.store.transition(exp_id, ES.interrupted, reason=one_line(why))
            self._cleanup(exp_id, exp.branch if exp else None)
            raise

    # -- what the agent sees ------------------------------------------------------------------
    def build_context(self, files: dict[str, str]) -> Context:
        """The agent's context, from a few bounded reads: its cost stays flat as the history
        grows (the rendered history is bounded in tokens anyway)."""
        assert self.run is not None and self.run.id is not None
        run, run_id = self.run, self.run.id
        baseline = next((e for e in self.store.experiments(run_id=run_id, kind="baseline")
                         if e.val_bpb is not None), None)
        champ = (None if run.champion_experiment_id is None
                 else self.store.get_experiment(run.champion_experiment_id))
        noise = run.noise_std or 0.0
        history, omitted = self.store.history(run_id, recent=HISTORY_RECENT)
        last_crash = next(iter(self.store.experiments(
            run_id=run_id, status=[ES.crashed, ES.timeout, ES.invalid], limit=1,
            newest_first=True)), None)
        crash_log = None
        if last_crash is not None and last_crash.id is not None:
            crash_log = log_tail(self.ws.exp_dir(last_crash.id), 3000)
        last = self.store.experiments(run_id=run_id, kind="candidate", has_commit=True, limit=1,
                                      newest_first=True)
        return Context(
            files=files, budget=self.budget.describe(), device=run.device,
            baseline=Stats(mean=baseline.val_bpb, std=noise, n=len(self.seeds))
            if baseline and baseline.val_bpb is not None else None,
            champion=Stats(mean=champ.val_bpb, std=noise, n=len(self.seeds))
            if champ and champ.val_bpb is not None else None,
            history=history, omitted=omitted, last_crash_log=crash_log,
            curves=curves_mod.context_curves([e for e in (champ, *last) if e is not None],
                                             run.champion_experiment_id, self.ws.exp_dir,
                                             self.seeds),
        )


def log_tail(exp_dir: Path, limit: int) -> str:
    """The last ``limit`` characters of an experiment's newest run.log."""
    logs = sorted(exp_dir.glob("seed-*/run.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    text = logs[-1].read_text(encoding="utf-8", errors="replace")
    return text[-limit:]


def _alongside_evidence(verdict: Decision, stored: Decision) -> Decision:
    """Say in a decision made on re-measured champion values what the stored ones said."""
    note = (f"; judged against the champion re-measured alongside (its stored value"
            f"{'s' if len(stored.evidence.get('seeds', [])) > 1 else ''} gave Δ "
            f"{stored.delta:+.4f})" if stored.delta is not None else "")
    evidence = verdict.evidence | {"champion_source": "re-measured alongside",
                                   "stored": stored.evidence}
    return verdict.model_copy(update={"reason": verdict.reason + note, "evidence": evidence})
