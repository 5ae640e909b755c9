"""The measure and judge steps of one candidate, on a worker: the measurement plan, the keep
rule, and the port onto a champion that moved meanwhile. ``record`` writes how it ended.

The plan, by budget:

- stage by stage (``decide.stages``; for 3 seeds: the screen on one, a second stage on two,
  the final test on three), each stage before the last compared with the champion's stored
  values and only able to discard; a candidate stops at the first stage that discards it;
- the final test, under a token budget, on the stored values too; under a wall-clock budget
  on the champion re-measured alongside the candidate's last seeds, on the same worker (stored
  values from another hour of the machine would not compare like with like).

Every measurement records why it ran (``Purpose``: screen, second stage, confirmation,
champion, port), which ``runs`` and the dashboard account device time by.

A candidate is judged against the champion it was proposed on. If it wins and the champion has
moved meanwhile, its diff is applied onto the new champion (three-way) and measured there on
every seed, or ported by the agent once, or it ends ``superseded``: nothing is kept that was
only measured against an older champion.
"""

from __future__ import annotations

import shutil
import statistics

from autoresearch import decide as decide_mod
from autoresearch import speed as speed_mod
from autoresearch.agents.base import AgentFatal
from autoresearch.backends import Worker
from autoresearch.decide import Decision
from autoresearch.errors import one_line
from autoresearch.loop import context as context_mod
from autoresearch.loop import record
from autoresearch.loop.propose import Proposer, Rejected
from autoresearch.loop.run import ActiveRun, Candidate, LoopStopped, Outcome, Stopping
from autoresearch.models import ExperimentStatus, MeasurementRole, Purpose
from autoresearch.store import Experiment, StaleWin
from autoresearch.workspace import ApplyConflict

ES = ExperimentStatus
PORTS = 2  # a winner is ported onto a champion that moved at most this many times


def trial(a: ActiveRun, proposer: Proposer, worker: Worker, cand: Candidate) -> Experiment:
    """Measure a candidate on ``worker``, judge it (porting it while the champion moves), and
    record how it ended. A loop being stopped leaves it interrupted (resume measures it
    again)."""
    try:
        return _settle(a, proposer, worker, cand)
    except (Stopping, LoopStopped, AgentFatal, KeyboardInterrupt) as e:
        record.interrupted(a, cand.exp_id, e)
        if isinstance(e, Stopping):
            return a.store.get_experiment(cand.exp_id)  # type: ignore[return-value]
        raise


def _settle(a: ActiveRun, proposer: Proposer, worker: Worker, cand: Candidate) -> Experiment:
    a.store.transition(cand.exp_id, ES.running)
    a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                     f"training seed {a.seeds[0]} on {worker.name}")
    outcome = measure(a, worker, cand, screen=True)
    stale: list[StaleWin] = []
    for _ in range(PORTS + 1):
        if outcome.verdict is None or outcome.verdict.verdict != "keep":
            break
        with a.champion_lock:
            onto, onto_id = a.champion()
            if onto == cand.parent_commit:
                return record.judged(a, cand, outcome, stale)
        # it won against a champion that is no longer the champion
        stale.append(StaleWin(champion=cand.parent_id, delta=outcome.verdict.delta,
                              reason=outcome.verdict.reason, values=outcome.values))
        if len(stale) > PORTS:
            break
        a.store.restage(cand.exp_id)
        _restage_folders(a, cand.exp_id)
        a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                         f"won on #{cand.parent_id}; porting onto the new champion #{onto_id}")
        try:
            cand = port(a, proposer, cand, onto, onto_id)
        except Rejected as r:
            return record.superseded(a, cand, stale, f"won on #{cand.parent_id} "
                                     f"(Δ {outcome.verdict.delta:+.4f}) but could not be "
                                     f"ported onto #{onto_id}: {r.reason}")
        a.store.transition(cand.exp_id, ES.running)
        a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                         f"measuring on the new champion #{onto_id}, seeds {a.seeds}")
        outcome = measure(a, worker, cand, screen=False)
    if stale and outcome.verdict is not None and outcome.verdict.verdict == "keep":
        return record.superseded(a, cand, stale, f"won on {len(stale)} champions in turn while "
                                 "each was replaced meanwhile; measure it again with replay")
    return record.judged(a, cand, outcome, stale)


# -- the measurement plan and the judge -----------------------------------------------------------
def measure(a: ActiveRun, worker: Worker, cand: Candidate, *, screen: bool) -> Outcome:
    """The candidate measured and judged against its champion (``parent``), stage by stage
    (``decide.stages``: for 3 seeds, one, then two, then three), stopping as soon as a stage
    discards it. The stages before the last compare with the champion's stored values (under
    a time budget: values measured at a machine speed like the candidate's, ``_reference``);
    the final test under a token budget too, and under a time budget with the champion
    re-measured alongside (``_alongside``). ``screen`` False (a candidate ported onto a new
    champion): every seed at once, nothing staged."""
    k = len(a.seeds)
    plan = decide_mod.stages(k) if screen else [k]
    champion, source = a.values(cand.parent_id), "stored"
    values: dict[int, float] = {}
    verdict: Decision | None = None
    timed = a.budget.kind == "time"
    for n in plan:
        if n == k and timed and (values or not screen):
            # wall-clock results depend on the machine's speed at the time: the final test
            # pairs the candidate with the champion re-measured alongside it, seed by seed
            return _alongside(a, worker, cand, values, verdict, port=not screen)
        todo = a.seeds[len(values):n]
        if values:
            a.store.transition(cand.exp_id, ES.running)
            a.reporter.phase(cand.exp_id, cand.seq, cand.proposal.title,
                             f"promising; measuring seed{'s' if len(todo) > 1 else ''} "
                             f"{', '.join(map(str, todo))}")
        purpose = (Purpose.port if not screen else Purpose.screen if not values
                   else Purpose.confirmation if n == k else Purpose.second_stage)
        got, failed = a.run_seeds(worker, cand.exp_id, cand.wt, todo, purpose)
        values.update(got)
        if failed is not None:
            return Outcome(values, champion, None, failed)
        if timed and n == 1:
            found = _reference(a, cand)
            if found is None:  # nothing measured at this machine speed: no stage can judge
                return _alongside(a, worker, cand, values, None, port=False, note=(
                    "judged against the champion re-measured alongside: its screen ran at "
                    "another machine speed than every measurement of the champion, so no "
                    "earlier stage could judge it"))
            champion, source = found
        verdict = judge(a, cand, values, champion, source=source)
        if n == k and timed and verdict.verdict == "keep":
            # one seed planned: it was a screen against stored values; confirm it alongside
            return _alongside(a, worker, cand, values, verdict, port=False)
        if verdict.verdict != "confirm":
            return Outcome(values, champion, verdict)
    raise AssertionError("the last stage of a plan always decides")  # pragma: no cover


def _reference(a: ActiveRun, cand: Candidate) -> tuple[dict[int, float], str] | None:
    """Under a time budget, the champion's values the stages compare a candidate with: its
    stored values, unless the candidate's screen ran at a machine speed the drift monitor calls
    different from theirs; then the newest re-measurement of the champion on every seed (from
    an earlier candidate's final test) at a speed like the screen's; None when there is none.

    The speed figures come from the training processes, so they only ever choose what the
    stages — which can only discard — compare with; the final test never reads them."""
    stored = a.values(cand.parent_id)
    screen = [m.speed for m in a.store.measurements(cand.exp_id, role=MeasurementRole.candidate)
              if m.seed == a.seeds[0]]
    own = [m.speed for m in a.store.measurements(cand.parent_id, role=MeasurementRole.candidate)
           if m.speed is not None]
    speed = screen[-1] if screen else None
    if speed is None or not own or not speed_mod.drifted(speed_mod.ratio(speed, own), own):
        return stored, "stored"
    for exp_id, sets in reversed(a.store.remeasured(a.id, cand.parent_id, a.seeds)):
        speeds = [sp for _, sp in sets.values() if sp is not None]
        if speeds and not speed_mod.drifted(speed_mod.ratio(speed, speeds), speeds):
            return ({s: v for s, (v, _) in sets.items()},
                    f"re-measured alongside #{exp_id} (like machine speed)")
    return None


def judge(a: ActiveRun, cand: Candidate, values: dict[int, float],
          champion: dict[int, float], *, source: str = "stored") -> Decision:
    """The keep rule on the candidate's values against the champion's (paired by seed), with
    the run's pooled noise; the experiment is ``measured`` meanwhile. ``source``: where the
    champion's values come from ("stored"; "re-measured alongside" for the final test under a
    time budget; or an earlier re-measurement, ``_reference``)."""
    a.store.transition(cand.exp_id, ES.measured, val_bpb=statistics.fmean(values.values()))
    noise, df = a.noise(cand.parent_id)
    d = decide_mod.decide(values, champion, noise_std=noise or 0.0, noise_df=df,
                          min_delta=a.run.min_delta, seeds=a.seeds)
    if source == "re-measured alongside":
        return d
    update: dict[str, object] = {"evidence": d.evidence | {"champion_source": source}}
    if a.budget.kind == "time":  # measured at another time, in other conditions: say so
        update["reason"] = d.reason + (
            "; against the champion's stored values" if source == "stored"
            else f"; against the champion as {source}")
    return d.model_copy(update=update)


def _alongside(a: ActiveRun, worker: Worker, cand: Candidate, values: dict[int, float],
               stored: Decision | None, *, port: bool, note: str = "") -> Outcome:
    """Measure the champion on every seed next to the candidate's runs, on the same worker, so
    both values of a pair ran in the same conditions, then decide on those pairs. The seeds the
    candidate has already (its earlier stages) get the champion's runs first, in the same
    order, then each remaining seed the champion's run and the candidate's, back to back:
    for 3 seeds cand s0, cand s1 | champ s0, champ s1, champ s2, cand s2 — every pair at most
    two runs apart. ``stored`` is the last stage's verdict against the stored values (None for
    a port, or when no stage could judge: ``note`` says why)."""
    exp_id = cand.exp_id
    if stored is not None:  # after a stage (measured); else it is running still
        a.store.transition(exp_id, ES.running)
    a.reporter.phase(exp_id, cand.seq, cand.proposal.title,
                     f"confirming alongside the champion on seeds {a.seeds}")
    champ_wt = a.ws.create_worktree(exp_id, cand.parent_commit, branch=None, name="champion")
    control: dict[int, float] = {}
    values = dict(values)
    own = Purpose.port if port else Purpose.confirmation
    try:
        for seed in [s for s in a.seeds if s in values] + [s for s in a.seeds if s not in values]:
            got, bad = a.run_seeds(worker, exp_id, champ_wt, [seed], Purpose.champion,
                                   role=MeasurementRole.champion)
            if bad is not None:
                a.store.transition(exp_id, ES.measured, val_bpb=statistics.fmean(
                    values.values()) if values else None)
                return Outcome(values, {}, Decision(
                    verdict="discard", delta=None,
                    evidence={"stored": stored.evidence} if stored else {},
                    reason=f"discarded: the champion's re-measurement failed on seed "
                    f"{bad.seed} ({bad.status.value}): {one_line(bad.error)}"))
            control.update(got)
            if seed not in values:
                got, bad = a.run_seeds(worker, exp_id, cand.wt, [seed], own)
                if bad is not None:
                    return Outcome(values, control, None, bad)
                values.update(got)
    finally:
        a.ws.remove_worktree(exp_id, name="champion")
    verdict = judge(a, cand, values, control, source="re-measured alongside")
    verdict = alongside_evidence(verdict, stored)
    if note:
        verdict = verdict.model_copy(update={"reason": f"{verdict.reason}; {note}"})
    return Outcome(values, control, verdict, stored=stored)


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


# -- the port onto a moved champion ---------------------------------------------------------------
def port(a: ActiveRun, proposer: Proposer, cand: Candidate, onto: str, onto_id: int
         ) -> Candidate:
    """The candidate's change on champion ``onto``: its diff applied three-way and checked;
    when it does not carry over, the agent is asked once to port it; else ``Rejected``
    (the caller records it superseded)."""
    exp_id = cand.exp_id
    base = a.ws.read_files(onto)
    diff = (a.ws.exp_dir(exp_id) / "diff.patch").read_text(encoding="utf-8")
    p = cand.proposal
    try:
        done = a.ws.apply_files(
            exp_id, onto, diff, branch=cand.branch,
            message=f"#{exp_id}: {p.title} (on #{onto_id}, applied cleanly)\n\n{p.rationale}",
            check=lambda files: proposer.checked(exp_id, base, files))
    except (ApplyConflict, Rejected) as e:
        if isinstance(e, Rejected) and e.duplicate_of is not None:
            raise
        why = e.message if isinstance(e, Rejected) else str(e)
        a.reporter.phase(exp_id, cand.seq, p.title,
                         f"asking the agent to port it onto #{onto_id}")
        context = context_mod.build(a, base).model_copy(update={
            "repair": (f"The champion moved to experiment #{onto_id} while this change "
                       f"was measured, and the change does not carry over as it is "
                       f"({why}). Port this change onto the new champion's code shown "
                       "above: same idea, edits that apply to the new code."),
            "previous_answer": p.model_dump_json(indent=1),
        })
        answer = proposer.answer(context, exp_id, attempt=0)
        try:
            p, files = proposer.usable(exp_id, context, base, answer, repairs=0)
        except Rejected:
            # the experiment stays what was measured: not the port that failed
            a.store.update_experiment(exp_id, title=cand.proposal.title[:200],
                                      rationale=cand.proposal.rationale,
                                      proposal=cand.proposal.model_dump_json())
            raise
        done = a.ws.apply_files(
            exp_id, onto, files, branch=cand.branch,
            message=f"#{exp_id}: {p.title} (on #{onto_id}, ported by the agent)\n\n"
                    f"{p.rationale}")
    (a.ws.exp_dir(exp_id) / "diff.patch").write_text(done.diff, encoding="utf-8")
    a.store.update_experiment(exp_id, commit=done.commit, diff=done.diff, parent_commit=onto,
                              parent_id=onto_id)
    return Candidate(exp_id, cand.seq, p, done.files, onto, onto_id, done.commit,
                     cand.branch, done.wt)


def _restage_folders(a: ActiveRun, exp_id: int) -> None:
    """Keep the files of the measurements on an older champion beside the new ones, in their
    restaged role's folders (seed-N -> stale-seed-N, champion-seed-N -> stale-champion-seed-N)."""
    d = a.ws.exp_dir(exp_id)
    for m in a.store.measurements(exp_id):
        if m.role in (MeasurementRole.stale, MeasurementRole.stale_champion):
            was = MeasurementRole.candidate if m.role is MeasurementRole.stale else (
                MeasurementRole.champion)
            old, new = d / was.folder(m.seed), d / m.role.folder(m.seed)
            if old.is_dir():
                if new.exists():
                    shutil.rmtree(new)
                old.rename(new)
