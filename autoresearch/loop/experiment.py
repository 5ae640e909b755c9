"""One experiment, step by step: ask, check, apply (the ``Proposer``, before a worker is
free), then measure, judge, record (``trial``, on a worker).

A proposal that cannot be used raises ``Rejected`` at the step that found out; the repair
round trips catch it and tell the agent why. A candidate is measured against the champion it
was proposed on; if it wins and the champion has moved meanwhile, its diff is applied onto
the new champion (a git three-way apply) and measured again there, or repaired once by the
agent, or ends ``superseded``. A kept change is never one measured only on an older champion.

Over 400 lines: the steps share the rejection and the candidate types, and the port reuses
check and apply; split apart, each file would import all the others.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch import decide as decide_mod
from autoresearch import edits, guard, leak
from autoresearch.agents.base import Agent, AgentError, AgentExhausted, AgentFatal, Answer
from autoresearch.decide import Decision
from autoresearch.errors import UsageError, one_line
from autoresearch.jobs import Worker
from autoresearch.loop import context as context_mod
from autoresearch.loop.active import ActiveRun, LoopStopped, Stopping, fingerprint, mean
from autoresearch.metrics import Metrics
from autoresearch.models import CallRecord, Context, ExperimentStatus, Proposal
from autoresearch.store import Experiment, is_done

ES = ExperimentStatus
PORTS = 2  # a winner is ported onto a champion that moved at most this many times


class Rejected(Exception):
    """A proposal that cannot be used: ``message`` is told to the agent, ``reason`` recorded."""

    def __init__(self, message: str, reason: str, duplicate_of: int | None = None) -> None:
        super().__init__(reason)
        self.message = message
        self.reason = reason
        self.duplicate_of = duplicate_of


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
class Proposer:
    """Asks the agent for proposals and turns them into candidates. Agent calls run one at a
    time unless the agent says it may be called concurrently (``agent.concurrent``); either
    way the cost cap holds: a call starts only if the spending so far, plus the dearest call's
    price for it and for each call still in flight, stays within ``--max-cost``."""

    active: ActiveRun
    agent: Agent
    redo: list[tuple[int, Proposal]] = field(default_factory=list)
    _calls: threading.Condition = field(default_factory=threading.Condition)
    _in_flight: int = 0
    _rows: threading.Lock = field(default_factory=threading.Lock)  # seq and fingerprint checks

    # -- ask ----------------------------------------------------------------------------------
    def ask(self, context: Context) -> Answer:
        """One agent call, within the cost cap. The caller records its calls (``answer.calls``,
        or the ``calls`` of the AgentError it raised)."""
        self._enter_call()
        try:
            return self.agent.propose(context)
        finally:
            self._leave_call()

    def _enter_call(self) -> None:
        concurrent = bool(getattr(self.agent, "concurrent", False))
        with self._calls:
            # one at a time, unless the agent allows more and the price of a call is known
            while self._in_flight and (not concurrent or not self._priced()):
                self._calls.wait()
            self.check_cost(in_flight=self._in_flight)
            self._in_flight += 1

    def _leave_call(self) -> None:
        with self._calls:
            self._in_flight -= 1
            self._calls.notify_all()

    def _priced(self) -> bool:
        return self.active.settings.max_cost is None or self.active.store.spending(
            self.active.id)[1] > 0

    def check_cost(self, in_flight: int = 0) -> None:
        """Stop cleanly before the next agent call could cross ``--max-cost``."""
        cap = self.active.settings.max_cost
        if cap is None:
            return
        spent, dearest = self.active.store.spending(self.active.id)
        # the next call, and each still in flight, is assumed to cost the dearest one's price
        if spent + (in_flight + 1) * dearest > cap:
            raise LoopStopped(f"cost cap reached: ${spent:.4f} spent, the next call would cost "
                              f"about ${dearest:.4f}, cap ${cap:.4f}")

    def record_calls(self, exp_id: int | None, calls: list[CallRecord], attempt: int) -> None:
        for c in calls:
            self.active.store.add_call(
                run_id=self.active.id, experiment_id=exp_id, attempt=attempt,
                provider=c.provider, model=c.model, input_tokens=c.input_tokens,
                output_tokens=c.output_tokens, latency_s=c.latency_s, cost_usd=c.cost_usd,
                error=c.error, raw=c.raw)

    # -- the ask, check and apply steps ---------------------------------------------------------
    def next(self) -> Candidate | None:
        """The next candidate, checked and committed; None when the attempt ended as a
        recorded rejection (it used up its slot of the budget). Raises AgentExhausted,
        AgentFatal and LoopStopped (nothing recorded for the slot)."""
        a = self.active

        def view() -> tuple[str, int, dict[str, str], Context]:
            commit, champion_id = a.champion()
            files = a.ws.read_files(commit)
            return commit, champion_id, files, context_mod.build(a, files)

        if self.redo:
            old_id, redo = self.redo.pop(0)
            parent_commit, parent_id, champion_files, context = view()
            answer = Answer(proposal=redo.model_copy(
                update={"rationale": f"(redo of interrupted #{old_id}) {redo.rationale}"}))
        else:
            self._enter_call()
            try:
                # the champion and history as they are when the call starts: with calls one
                # at a time, an ask that waited its turn sees what the others proposed
                parent_commit, parent_id, champion_files, context = view()
                answer = self.agent.propose(context)
            except AgentFatal as e:
                self.record_calls(None, e.calls, attempt=0)
                raise
            except AgentError as e:
                exp = self._row(parent_commit, parent_id, "(agent failed)")
                assert exp.id is not None
                self.record_calls(exp.id, e.calls, attempt=0)
                a.store.transition(exp.id, ES.rejected, reason=f"agent failed: {one_line(str(e))}")
                self._finished(exp.id)
                return None
            finally:
                self._leave_call()
        exp = self._row(parent_commit, parent_id, "(no usable proposal)")
        assert exp.id is not None
        exp_id = exp.id
        self.record_calls(exp_id, answer.calls, attempt=0)
        try:
            if a.stopping is not None:
                raise Stopping(a.stopping)
            try:
                proposal, files = self.usable(exp_id, context, champion_files, answer)
            except Rejected as r:
                a.store.transition(exp_id, ES.rejected, reason=r.reason)
                a.write_json(exp_id, "proposal.json", {"rejected": r.reason,
                                                       "message": r.message})
                self._finished(exp_id)
                return None
            return self.apply(exp_id, exp.seq, proposal, files, parent_commit, parent_id)
        except (Stopping, LoopStopped, AgentFatal, KeyboardInterrupt) as e:
            self.interrupted(exp_id, e)
            raise

    def interrupted(self, exp_id: int, e: BaseException) -> None:
        """Record an experiment the loop stopped in the middle of (resume redoes its slot)."""
        a = self.active
        exp = a.store.get_experiment(exp_id)
        if exp is not None and not is_done(exp):
            why = "interrupted by the user" if isinstance(e, KeyboardInterrupt) else str(e)
            a.store.transition(exp_id, ES.interrupted, reason=one_line(why))
        a.cleanup(exp_id, exp.branch if exp else None)

    def _row(self, parent_commit: str, parent_id: int, title: str) -> Experiment:
        with self._rows:
            seq = self.active.store.count_candidates(self.active.id) + 1
            return self.active.store.add_experiment(
                run_id=self.active.id, kind="candidate", seq=seq, parent_commit=parent_commit,
                parent_id=parent_id, title=title)

    def usable(self, exp_id: int, context: Context, base: dict[str, str], answer: Answer,
               repairs: int | None = None) -> tuple[Proposal, dict[str, str]]:
        """Parse, guard and dry-run the answer; repair round trips until it is usable or the
        tries are used up (then the last ``Rejected`` propagates)."""
        a = self.active
        tries = a.settings.repairs if repairs is None else repairs
        last: Rejected | None = None
        for attempt in range(tries + 1):
            if attempt > 0:
                assert last is not None
                context = context.model_copy(update={
                    "repair": last.message,
                    "previous_answer": answer.text or (answer.proposal.model_dump_json(indent=1)
                                                       if answer.proposal else ""),
                })
                a.reporter.phase(exp_id, 0, "repair", f"repair {attempt}: {last.reason}")
                answer = self.answer(context, exp_id, attempt)
            try:
                proposal = self.parse(exp_id, answer)
                return proposal, self.check(exp_id, proposal, base)
            except Rejected as r:
                last = r
        assert last is not None
        raise last

    def answer(self, context: Context, exp_id: int, attempt: int) -> Answer:
        """A repair call for an experiment: its calls recorded; a failed call is a Rejected
        (AgentFatal and LoopStopped propagate)."""
        try:
            answer = self.ask(context)
        except AgentExhausted as e:  # a scripted agent ran out in the middle of a repair
            raise Rejected(str(e), f"the agent had nothing more to propose: {e}") from e
        except AgentError as e:
            self.record_calls(exp_id, e.calls, attempt=attempt)
            if isinstance(e, AgentFatal):
                raise
            raise Rejected(str(e), f"agent failed: {one_line(str(e))}") from e
        self.record_calls(exp_id, answer.calls, attempt=attempt)
        return answer

    def parse(self, exp_id: int, answer: Answer) -> Proposal:
        try:
            proposal = answer.proposal or edits.parse_answer(answer.text)
        except edits.FormatError as e:
            raise Rejected(str(e), f"unusable answer: {one_line(str(e))}") from e
        self.active.store.update_experiment(exp_id, title=proposal.title[:200],
                                            rationale=proposal.rationale,
                                            proposal=proposal.model_dump_json())
        return proposal

    def check(self, exp_id: int, proposal: Proposal, base: dict[str, str]) -> dict[str, str]:
        """The files the proposal makes from ``base``: guarded, changed, and not a duplicate
        of code already measured (or being measured) in the run."""
        try:
            guard.check_paths([e.path for e in proposal.edits], self.active.ws.editable)
            files = edits.apply_edits(base, proposal.edits)
            leak.check_files(self.active.data, base, files)  # no validation text (leak.py)
        except edits.EditError as e:
            raise Rejected(str(e), f"edit failed: {one_line(str(e))}") from e
        except guard.GuardViolation as e:
            raise Rejected(e.message, f"guard [{e.rule}]: {one_line(e.message)}") from e
        self.guarded(base, files)
        self.not_duplicate(exp_id, files)
        return files

    @staticmethod
    def guarded(base: dict[str, str], files: dict[str, str]) -> None:
        changed = {p: t for p, t in files.items() if base.get(p) != t}
        if not changed:
            msg = "the edits leave every file exactly as it was; change something"
            raise Rejected(msg, f"edit failed: {msg}")
        for path, text in changed.items():
            try:
                guard.check_source(path, text)
            except guard.GuardViolation as e:
                raise Rejected(e.message, f"guard [{e.rule}]: {one_line(e.message)}") from e

    def not_duplicate(self, exp_id: int, files: dict[str, str]) -> None:
        """Claim these files for ``exp_id``, or refuse them: the id they duplicate."""
        fp = fingerprint(files)
        store = self.active.store
        with self._rows:
            twin = store.duplicate_of(self.active.id, fp)
            if twin is not None and twin.id != exp_id:
                msg = (f"this change gives exactly the code of experiment #{twin.id} "
                       f"({twin.title!r}, {twin.status.value}), already measured in this run; "
                       "propose something else")
                raise Rejected(msg, f"duplicate of #{twin.id}: {one_line(twin.title, 80)}",
                               duplicate_of=twin.id)
            store.update_experiment(exp_id, fingerprint=fp)

    def apply(self, exp_id: int, seq: int, proposal: Proposal, files: dict[str, str],
              parent_commit: str, parent_id: int) -> Candidate:
        """Commit the files on the experiment's branch, in its own worktree."""
        a = self.active
        branch = f"exp/{exp_id}"
        a.write_json(exp_id, "proposal.json", proposal.model_dump())
        wt = a.ws.create_worktree(exp_id, parent_commit, branch=branch)
        commit, diff = a.ws.commit_files(wt, files, f"#{exp_id}: {proposal.title}\n\n"
                                         f"{proposal.rationale}")
        a.ws.pin(exp_id, commit)
        (a.ws.exp_dir(exp_id) / "diff.patch").write_text(diff, encoding="utf-8")
        a.store.transition(exp_id, ES.applied, commit=commit, branch=branch, diff=diff)
        return Candidate(exp_id, seq, proposal, files, parent_commit, parent_id, commit,
                         branch, wt)

    def _finished(self, exp_id: int) -> None:
        exp = self.active.store.get_experiment(exp_id)
        assert exp is not None
        self.active.reporter.finished(exp, self.active.best())

    # -- porting onto a moved champion ----------------------------------------------------------
    def port(self, cand: Candidate, onto: str, onto_id: int) -> Candidate:
        """The candidate's change on champion ``onto``: its diff applied three-way; on a
        conflict the agent is asked once to port it; else ``Rejected`` (superseded)."""
        a = self.active
        exp_id = cand.exp_id
        base = a.ws.read_files(onto)
        wt = a.ws.create_worktree(exp_id, onto, branch=None, name="port")
        try:
            try:
                diff = (a.ws.exp_dir(exp_id) / "diff.patch").read_text(encoding="utf-8")
                a.ws.apply_diff(wt, diff)
                files = {p: (wt / p).read_text(encoding="utf-8") for p in a.ws.editable}
                self.guarded(base, files)
                self.not_duplicate(exp_id, files)
                how = "applied cleanly"
            except (UsageError, Rejected) as e:
                why = e.message if isinstance(e, Rejected) else str(e)
                if isinstance(e, Rejected) and e.duplicate_of is not None:
                    raise
                a.reporter.phase(exp_id, cand.seq, cand.proposal.title,
                                 f"asking the agent to port it onto #{onto_id}")
                context = context_mod.build(a, base).model_copy(update={
                    "repair": (f"The champion moved to experiment #{onto_id} while this change "
                               f"was measured, and the change does not carry over as it is "
                               f"({why}). Port this change onto the new champion's code shown "
                               "above: same idea, edits that apply to the new code."),
                    "previous_answer": cand.proposal.model_dump_json(indent=1),
                })
                answer = self.answer(context, exp_id, attempt=0)
                try:
                    proposal, files = self.usable(exp_id, context, base, answer, repairs=0)
                except Rejected:
                    # the experiment stays what was measured: not the port that failed
                    a.store.update_experiment(exp_id, title=cand.proposal.title[:200],
                                              rationale=cand.proposal.rationale,
                                              proposal=cand.proposal.model_dump_json())
                    raise
                cand = Candidate(exp_id, cand.seq, proposal, files, cand.parent_commit,
                                 cand.parent_id, cand.commit, cand.branch, cand.wt)
                how = "ported by the agent"
        finally:
            a.ws.remove_worktree(exp_id, name="port")
        a.ws.remove_worktree(exp_id, cand.branch, delete_branch=True)
        wt = a.ws.create_worktree(exp_id, onto, branch=cand.branch)
        commit, diff = a.ws.commit_files(wt, files, f"#{exp_id}: {cand.proposal.title} "
                                         f"(on #{onto_id}, {how})\n\n{cand.proposal.rationale}")
        a.ws.pin(exp_id, commit)
        (a.ws.exp_dir(exp_id) / "diff.patch").write_text(diff, encoding="utf-8")
        a.store.update_experiment(exp_id, commit=commit, diff=diff, parent_commit=onto,
                                  parent_id=onto_id)
        return Candidate(exp_id, cand.seq, cand.proposal, files, onto, onto_id, commit,
                         cand.branch, wt)


# -- measure, judge, record (on a worker) -------------------------------------------------------
def trial(active: ActiveRun, proposer: Proposer, worker: Worker, cand: Candidate) -> Experiment:
    """Measure a candidate on ``worker``, judge it, record the result. A loop being stopped
    leaves it interrupted (resume measures it again)."""
    try:
        return _trial(active, proposer, worker, cand)
    except (Stopping, LoopStopped, AgentFatal, KeyboardInterrupt) as e:
        proposer.interrupted(cand.exp_id, e)
        if isinstance(e, Stopping):
            return active.store.get_experiment(cand.exp_id)  # type: ignore[return-value]
        raise


def _trial(active: ActiveRun, proposer: Proposer, worker: Worker, cand: Candidate) -> Experiment:
    a = active
    a.store.transition(cand.exp_id, ES.running)
    a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                     f"training seed {a.seeds[0]} on {worker.name}")
    outcome = measure(a, worker, cand, screen=True)
    stale: list[dict[str, Any]] = []
    for _ in range(PORTS + 1):
        if outcome.verdict is None or outcome.verdict.verdict != "keep":
            break
        with a.champion_lock:
            onto, onto_id = a.champion()
            if onto == cand.parent_commit:
                return record(a, cand, outcome, stale)
        # it won against a champion that is no longer the champion
        stale.append({"champion": cand.parent_id, "delta": outcome.verdict.delta,
                      "reason": outcome.verdict.reason, "values": outcome.values})
        if len(stale) > PORTS:
            break
        a.store.restage(cand.exp_id, {"candidate": "stale", "champion": "stale-champion"})
        _restage_folders(a, cand.exp_id)
        a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                         f"won on #{cand.parent_id}; porting onto the new champion #{onto_id}")
        try:
            cand = proposer.port(cand, onto, onto_id)
        except Rejected as r:
            return _superseded(a, cand, stale, f"won on #{cand.parent_id} "
                               f"(Δ {outcome.verdict.delta:+.4f}) but could not be ported "
                               f"onto #{onto_id}: {r.reason}")
        a.store.transition(cand.exp_id, ES.running)
        a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                         f"measuring on the new champion #{onto_id}, seeds {a.seeds}")
        outcome = measure(a, worker, cand, screen=False)
    if stale and outcome.verdict is not None and outcome.verdict.verdict == "keep":
        return _superseded(a, cand, stale, f"won on {len(stale)} champions in turn while each "
                           "was replaced meanwhile; measure it again with replay")
    return record(a, cand, outcome, stale)


def measure(a: ActiveRun, worker: Worker, cand: Candidate, *, screen: bool) -> Outcome:
    """The measure and judge steps against the candidate's champion (``parent``). ``screen``:
    one seed first, the others only if it is promising (a fresh candidate); else every seed
    (a candidate ported onto a new champion)."""
    run = a.run
    noise = run.noise_std or 0.0
    seeds = a.seeds[:1] if screen else a.seeds
    if a.budget.kind == "time" and not screen:
        # wall-clock values are compared with the champion re-measured alongside, seed by seed
        return _alongside(a, worker, cand, {}, None)
    values, failed = a.measure(worker, cand.exp_id, cand.wt, seeds)
    champion = a.values(cand.parent_id)
    if failed is not None:
        return Outcome(values, champion, None, failed)
    a.store.transition(cand.exp_id, ES.measured, val_bpb=mean(values))
    verdict = decide_mod.decide(values, champion, noise_std=noise, min_delta=run.min_delta,
                                seeds=a.seeds)
    if verdict.verdict == "discard" or not screen:
        return Outcome(values, champion, verdict)
    if a.budget.kind == "time":
        # wall-clock results depend on the machine's speed at the time: a promising
        # candidate is judged against the champion re-measured alongside it
        return _alongside(a, worker, cand, values, verdict)
    if verdict.verdict == "confirm":
        rest = [s for s in a.seeds if s not in values]
        a.store.transition(cand.exp_id, ES.running)
        a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                         f"confirming on seeds {rest}")
        more, failed = a.measure(worker, cand.exp_id, cand.wt, rest)
        values.update(more)
        if failed is not None:
            return Outcome(values, champion, None, failed)
        a.store.transition(cand.exp_id, ES.measured, val_bpb=mean(values))
        verdict = decide_mod.decide(values, champion, noise_std=noise, min_delta=run.min_delta,
                                    seeds=a.seeds)
    return Outcome(values, champion, verdict)


def _alongside(a: ActiveRun, worker: Worker, cand: Candidate, values: dict[int, float],
               stored: Decision | None) -> Outcome:
    """Measure the champion on every seed, each next to the candidate's run on that seed
    (candidate s0 was just measured, if screened; then champion s0, champion s1, candidate s1,
    champion s2, candidate s2, ...), on the same worker, so both values of a pair ran in the
    same conditions; then decide on those pairs."""
    exp_id, run = cand.exp_id, a.run
    if stored is not None:  # after a screen (measured); a port's caller set it running
        a.store.transition(exp_id, ES.running)
    a.reporter.phase(exp_id, cand.seq, cand.proposal.title,
                     f"confirming alongside the champion on seeds {a.seeds}")
    champ_wt = a.ws.create_worktree(exp_id, cand.parent_commit, branch=None, name="champion")
    control: dict[int, float] = {}
    values = dict(values)
    try:
        for seed in a.seeds:
            got, bad = a.measure(worker, exp_id, champ_wt, [seed], role="champion")
            if bad is not None:
                a.store.transition(exp_id, ES.measured,
                                   val_bpb=mean(values) if values else None)
                return Outcome(values, {}, Decision(
                    verdict="discard", delta=None,
                    evidence={"stored": stored.evidence} if stored else {},
                    reason=f"discarded: the champion's re-measurement failed on seed "
                    f"{bad.seed} ({bad.status.value}): {one_line(bad.error)}"))
            control.update(got)
            if seed not in values:
                got, bad = a.measure(worker, exp_id, cand.wt, [seed])
                if bad is not None:
                    return Outcome(values, control, None, bad)
                values.update(got)
    finally:
        a.ws.remove_worktree(exp_id, name="champion")
    a.store.transition(exp_id, ES.measured, val_bpb=mean(values))
    verdict = decide_mod.decide(values, control, noise_std=run.noise_std or 0.0,
                                min_delta=run.min_delta, seeds=a.seeds)
    return Outcome(values, control, alongside_evidence(verdict, stored), stored=stored)


def record(a: ActiveRun, cand: Candidate, outcome: Outcome, stale: list[dict[str, Any]]
           ) -> Experiment:
    """The record step: kept (the champion advances; the caller holds the champion lock and
    has checked the champion is still the one it was measured against), discarded, or failed."""
    exp_id = cand.exp_id
    if outcome.failed is not None:
        exp = a.failed(exp_id, outcome.failed, seconds=a.seconds(exp_id))
    else:
        verdict = outcome.verdict
        assert verdict is not None
        values, champion = outcome.values, outcome.champion
        paired = [s for s in a.seeds if s in values and s in champion]
        champ_mean = statistics.fmean(champion[s] for s in paired) if paired else None
        evidence = verdict.model_dump()
        reason = verdict.reason
        if stale:
            evidence["stale"] = stale
            reason += (f" (measured on the new champion #{cand.parent_id} after winning on "
                       f"#{stale[0]['champion']}, Δ {stale[0]['delta']:+.4f})")
        fields = dict(val_bpb=mean(values) if values else None, champion_bpb=champ_mean,
                      delta=verdict.delta, reason=reason, decision=json.dumps(evidence),
                      seconds=a.seconds(exp_id))
        if verdict.verdict == "keep":
            a.ws.advance(a.run.branch, cand.commit)
            a.update(champion_commit=cand.commit, champion_experiment_id=exp_id)
            exp = a.store.transition(exp_id, ES.kept, **fields)
        else:
            exp = a.store.transition(exp_id, ES.discarded, **fields)
    a.cleanup(exp_id, cand.branch)
    a.reporter.finished(exp, a.best())
    return exp


def _restage_folders(a: ActiveRun, exp_id: int) -> None:
    """Keep the logs of a measurement on an older champion beside the new ones: seed-N ->
    stale-seed-N, champion-seed-N -> stale-champion-seed-N."""
    d = a.ws.exp_dir(exp_id)
    for old in [*d.glob("seed-*"), *d.glob("champion-seed-*")]:
        new = d / f"stale-{old.name}"
        if new.exists():
            shutil.rmtree(new)
        old.rename(new)


def _superseded(a: ActiveRun, cand: Candidate, stale: list[dict[str, Any]], reason: str
                ) -> Experiment:
    exp = a.store.transition(cand.exp_id, ES.superseded, reason=reason,
                             decision=json.dumps({"stale": stale}),
                             seconds=a.seconds(cand.exp_id))
    a.cleanup(cand.exp_id, cand.branch)
    a.reporter.finished(exp, a.best())
    return exp


def alongside_evidence(verdict: Decision, stored: Decision | None) -> Decision:
    """Say in a decision made on re-measured champion values what the stored ones said."""
    if stored is None:
        return verdict.model_copy(update={
            "evidence": verdict.evidence | {"champion_source": "re-measured alongside"}})
    note = (f"; judged against the champion re-measured alongside (its stored value"
            f"{'s' if len(stored.evidence.get('seeds', [])) > 1 else ''} gave Δ "
            f"{stored.delta:+.4f})" if stored.delta is not None else "")
    evidence = verdict.evidence | {"champion_source": "re-measured alongside",
                                   "stored": stored.evidence}
    return verdict.model_copy(update={"reason": verdict.reason + note, "evidence": evidence})
