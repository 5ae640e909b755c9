"""Replay: a stored diff applied onto a base (the baseline, the champion, any git ref),
measured, and compared with the original's values."""

from __future__ import annotations

import statistics
from typing import Any

from autoresearch import decide as decide_mod
from autoresearch import guard, leak
from autoresearch import speed as speed_mod
from autoresearch.decide import Reproduction
from autoresearch.errors import UsageError, one_line
from autoresearch.jobs import Worker
from autoresearch.loop.active import ActiveRun
from autoresearch.models import ExperimentStatus
from autoresearch.store import Experiment, Store

ES = ExperimentStatus


def replay(a: ActiveRun, worker: Worker, exp: Experiment, *, onto: str, seeds: int | None
           ) -> dict[str, Any]:
    """Apply ``exp``'s stored diff onto a base, measure it on ``worker``, and compare."""
    run = a.run
    assert exp.id is not None
    if exp.kind != "candidate" or not exp.diff or not exp.commit:
        raise UsageError(f"experiment {exp.id} has no diff to replay ({exp.kind}, "
                         f"{exp.status.value})")
    base = {"baseline": run.baseline_commit, "champion": run.champion_commit}.get(onto)
    base = base or a.ws.resolve(onto)
    k = seeds if seeds is not None else len(run.seed_list)
    seed_list = [run.seed_list[0] + i for i in range(k)]
    new = a.store.add_experiment(
        run_id=a.id, kind="replay", seq=exp.seq, title=f"replay of #{exp.id}: {exp.title}",
        rationale=exp.rationale, proposal=exp.proposal, parent_commit=base, replay_of=exp.id)
    assert new.id is not None
    try:
        wt = a.ws.create_worktree(new.id, base, branch=None)
        try:
            a.ws.apply_diff(wt, exp.diff)
            files = {p: (wt / p).read_text(encoding="utf-8") for p in a.ws.editable}
            for path, text in files.items():
                guard.check_source(path, text)
            leak.check_files(a.data, a.ws.read_files(base), files)  # no validation text
        except (UsageError, guard.GuardViolation) as e:
            a.store.transition(new.id, ES.rejected, reason=one_line(str(e)))
            a.cleanup(new.id, None)
            raise UsageError(f"cannot replay experiment {exp.id} onto {onto}: {e}") from e
        commit, diff = a.ws.commit_files(wt, files, f"replay of #{exp.id}: {exp.title}")
        a.ws.pin(new.id, commit)
        a.store.transition(new.id, ES.applied, commit=commit, diff=diff)
        a.store.transition(new.id, ES.running)
        a.reporter.phase(new.id, exp.seq, new.title, f"measuring seeds {seed_list}")
        values, failed = a.measure(worker, new.id, wt, seed_list)
        a.cleanup(new.id, None)
    except KeyboardInterrupt:
        got = a.store.get_experiment(new.id)
        if got is not None and got.status not in (ES.rejected, ES.interrupted):
            a.store.transition(new.id, ES.interrupted, reason="interrupted by the user")
        a.cleanup(new.id, None)
        raise
    original = a.values(exp.id)
    result: dict[str, Any] = {
        "original": exp.id, "replay": new.id, "onto": onto, "base_commit": base,
        "original_values": original, "replay_values": values, "ok": failed is None,
    }
    if failed is not None:
        a.failed(new.id, failed)
        result["verdict"] = f"replay failed ({failed.status.value}): {one_line(failed.error)}"
        return result
    check = decide_mod.reproduces(original, values, noise_std=run.noise_std or 0.0)
    if not check.reproduces and a.budget.kind == "time":
        check = machine_note(a.store, check, exp.id, new.id)
    mean = statistics.fmean(values.values())
    a.store.transition(new.id, ES.measured, val_bpb=mean, reason=check.reason,
                       decision=check.model_dump_json(), seconds=a.seconds(new.id),
                       delta=check.delta)
    result["verdict"] = check.reason
    result["reproduces"] = check.reproduces
    return result


def machine_note(store: Store, check: Reproduction, original: int, replay: int
                 ) -> Reproduction:
    """A replay that differs under a wall-clock budget: was it the machine?"""
    def speeds(exp_id: int) -> list[float]:
        return [m.speed for m in store.measurements(exp_id, role="candidate")
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
