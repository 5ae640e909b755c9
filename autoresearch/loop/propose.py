"""The ask, check and apply steps: the agent asked (within the cost cap), its answer parsed,
guarded, dry-run applied and checked for duplicates — with repair round trips that tell the
agent what was wrong — then committed in the experiment's worktree: a ``Candidate``.

A proposal that cannot be used raises ``Rejected`` at the step that found out; the repair
ladder catches it and tells the agent why, and an attempt out of tries ends recorded as
rejected (``record.rejected``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from autoresearch import edits, guard, leak, notebook
from autoresearch.agents.base import Agent, AgentError, AgentExhausted, AgentFatal, Answer
from autoresearch.errors import one_line
from autoresearch.loop import context as context_mod
from autoresearch.loop import record
from autoresearch.loop.limits import Limits
from autoresearch.loop.run import ActiveRun, Candidate, LoopStopped, Stopping, fingerprint
from autoresearch.models import CallRecord, Context, ExperimentStatus, Proposal
from autoresearch.store import Experiment

ES = ExperimentStatus


class Rejected(Exception):
    """A proposal that cannot be used: ``message`` is told to the agent, ``reason`` recorded."""

    def __init__(self, message: str, reason: str, duplicate_of: int | None = None) -> None:
        super().__init__(reason)
        self.message = message
        self.reason = reason
        self.duplicate_of = duplicate_of


@dataclass
class Proposer:
    """Asks the agent for proposals and turns them into candidates, within the run's limits
    (``limits``: the budget's numbering, the cost cap and how many calls run at once)."""

    active: ActiveRun
    agent: Agent
    limits: Limits
    redo: list[tuple[int, Proposal]] = field(default_factory=list)
    _rows: threading.Lock = field(default_factory=threading.Lock)  # fingerprint checks

    # -- ask ----------------------------------------------------------------------------------
    def ask(self, context: Context) -> Answer:
        """One agent call, within the cost cap. The caller records its calls (``answer.calls``,
        or the ``calls`` of the AgentError it raised)."""
        with self.limits.agent_call():
            return self.agent.propose(context)

    def record_calls(self, exp_id: int | None, calls: list[CallRecord], attempt: int) -> None:
        for c in calls:
            self.active.store.add_call(
                run_id=self.active.id, experiment_id=exp_id, attempt=attempt,
                provider=c.provider, model=c.model, input_tokens=c.input_tokens,
                output_tokens=c.output_tokens, latency_s=c.latency_s, cost_usd=c.cost_usd,
                error=c.error, raw=c.raw, notes=notebook.notes_of(c.raw),
                reasoning_tokens=c.reasoning_tokens)

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
            self.limits.enter_call()
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
                record.rejected(a, exp.id, f"agent failed: {one_line(str(e))}")
                return None
            finally:
                self.limits.leave_call()
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
                record.rejected(a, exp_id, r.reason, message=r.message)
                return None
            return self.apply(exp_id, exp.seq, proposal, files, parent_commit, parent_id)
        except (Stopping, LoopStopped, AgentFatal, KeyboardInterrupt) as e:
            record.interrupted(a, exp_id, e)
            raise

    def _row(self, parent_commit: str, parent_id: int, title: str) -> Experiment:
        return self.limits.new_candidate(parent_commit, parent_id, title)

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

    def checked(self, exp_id: int, base: dict[str, str], files: dict[str, str]) -> None:
        """The check step for files already made (a diff carried onto a new champion)."""
        self.guarded(base, files)
        self.not_duplicate(exp_id, files)

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
        done = a.ws.apply_files(exp_id, parent_commit, files, branch=branch,
                                message=f"#{exp_id}: {proposal.title}\n\n{proposal.rationale}")
        (a.ws.exp_dir(exp_id) / "diff.patch").write_text(done.diff, encoding="utf-8")
        a.store.transition(exp_id, ES.applied, commit=done.commit, branch=branch,
                           diff=done.diff)
        return Candidate(exp_id, seq, proposal, files, parent_commit, parent_id, done.commit,
                         branch, done.wt)
