"""The record step: every way an experiment ends is written here, and nowhere else.

An experiment ends ``kept`` (the champion advances), ``discarded``, failed (``crashed``,
``timeout``, ``invalid``), ``rejected`` (the proposal could not be used), ``superseded`` (it
won on a champion that was replaced meanwhile and could not be carried over) or
``interrupted`` (the loop stopped in the middle of it; resume measures it again). A replay
ends ``measured``, with its reproduction check. Each function commits the final status with
its evidence, removes the experiment's worktrees and tells the reporter.
"""

from __future__ import annotations

import statistics
from typing import Any

from autoresearch.decide import Reproduction
from autoresearch.errors import one_line
from autoresearch.loop.run import ActiveRun, Candidate, Outcome
from autoresearch.metrics import Metrics
from autoresearch.models import ExperimentStatus, RunStatus
from autoresearch.store import (
    BaselineNoise,
    Experiment,
    Judged,
    Replayed,
    StaleWin,
    Superseded,
    is_done,
)

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


def judged(a: ActiveRun, cand: Candidate, outcome: Outcome, stale: list[StaleWin]
           ) -> Experiment:
    """Kept (the champion advances; the caller holds the champion lock and has checked the
    champion is still the one it was measured against), discarded, or failed."""
    exp_id = cand.exp_id
    if outcome.failed is not None:
        exp = a.store.transition(exp_id, JOB_STATUS[outcome.failed.status],
                                 reason=one_line(outcome.failed.error),
                                 seconds=a.seconds(exp_id))
    else:
        verdict = outcome.verdict
        assert verdict is not None
        values, champion = outcome.values, outcome.champion
        paired = [s for s in a.seeds if s in values and s in champion]
        champ_mean = statistics.fmean(champion[s] for s in paired) if paired else None
        reason = verdict.reason
        if stale:
            first = f"{stale[0].delta:+.4f}" if stale[0].delta is not None else "-"
            reason += (f" (measured on the new champion #{cand.parent_id} after winning on "
                       f"#{stale[0].champion}, Δ {first})")
        record = Judged(**verdict.model_dump(), stale=stale)
        fields: dict[str, Any] = dict(
            val_bpb=statistics.fmean(values.values()) if values else None,
            champion_bpb=champ_mean, delta=verdict.delta, reason=reason, decision=record,
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


def superseded(a: ActiveRun, cand: Candidate, stale: list[StaleWin], reason: str
               ) -> Experiment:
    """A winner on a champion replaced meanwhile that could not be kept on the new one."""
    exp = a.store.transition(cand.exp_id, ES.superseded, reason=reason,
                             decision=Superseded(stale=stale),
                             seconds=a.seconds(cand.exp_id))
    a.cleanup(cand.exp_id, cand.branch)
    a.reporter.finished(exp, a.best())
    return exp


def rejected(a: ActiveRun, exp_id: int, reason: str, *, message: str | None = None,
             announce: bool = True) -> Experiment:
    """A proposal that could not be used; ``message``: what the agent was told (kept in
    proposal.json beside the reason)."""
    exp = a.store.transition(exp_id, ES.rejected, reason=reason)
    if message is not None:
        a.write_json(exp_id, "proposal.json", {"rejected": reason, "message": message})
    a.cleanup(exp_id, None)
    if announce:
        a.reporter.finished(exp, a.best())
    return exp


def failed(a: ActiveRun, exp_id: int, m: Metrics) -> Experiment:
    """A training job that failed, as the experiment's final status (the baseline, a replay)."""
    return a.store.transition(exp_id, JOB_STATUS[m.status], reason=one_line(m.error))


def baseline_kept(a: ActiveRun, exp_id: int, values: dict[int, float], noise: float | None
                  ) -> Experiment:
    """The baseline measured on every seed: the run's first champion, and its noise."""
    avg = statistics.fmean(values.values())
    a.store.transition(exp_id, ES.measured, val_bpb=avg, seconds=a.seconds(exp_id))
    exp = a.store.transition(
        exp_id, ES.kept, delta=0.0, champion_bpb=avg,
        reason=f"baseline: {avg:.4f} ± {noise or 0:.4f} over {len(values)} seeds",
        decision=BaselineNoise(values=values, noise_std=noise),
    )
    a.update(champion_experiment_id=exp_id, noise_std=noise)
    a.reporter.finished(exp, avg)
    return exp


def replayed(a: ActiveRun, exp_id: int, values: dict[int, float], check: Reproduction
             ) -> Experiment:
    """A replay measured: it ends with whether it reproduces (never kept or discarded)."""
    return a.store.transition(exp_id, ES.measured, val_bpb=statistics.fmean(values.values()),
                              reason=check.reason, decision=Replayed(**check.model_dump()),
                              seconds=a.seconds(exp_id), delta=check.delta)


def interrupted(a: ActiveRun, exp_id: int, why: BaseException | str) -> None:
    """An experiment the loop stopped in the middle of (resume redoes its slot)."""
    exp = a.store.get_experiment(exp_id)
    if exp is not None and not is_done(exp):
        if isinstance(why, KeyboardInterrupt):
            why = "interrupted by the user"
        a.store.transition(exp_id, ES.interrupted, reason=one_line(str(why)))
    a.cleanup(exp_id, exp.branch if exp else None)


def all_interrupted(a: ActiveRun, why: str) -> list[Experiment]:
    """Every experiment of the run still in flight, interrupted; those it closed."""
    closed = []
    for exp in a.store.experiments(run_id=a.id):
        if not is_done(exp) and exp.id is not None:
            closed.append(exp)
            interrupted(a, exp.id, why)
    return closed
