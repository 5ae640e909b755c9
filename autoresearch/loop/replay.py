"""Replay: a stored diff applied onto a base (the baseline, the champion, any git ref),
measured, and compared with the original's values."""

from __future__ import annotations

from typing import Any

from autoresearch import decide as decide_mod
from autoresearch import guard, leak
from autoresearch.backends import Worker
from autoresearch.errors import UsageError, one_line
from autoresearch.loop import record
from autoresearch.loop.drift import machine_note
from autoresearch.loop.run import ActiveRun
from autoresearch.models import ExperimentKind, ExperimentStatus, Purpose
from autoresearch.store import Experiment
from autoresearch.workspace import ApplyConflict

ES = ExperimentStatus


def _guarded(files: dict[str, str]) -> None:
    for path, text in files.items():
        guard.check_source(path, text)


def replay(a: ActiveRun, worker: Worker, exp: Experiment, *, onto: str, seeds: int | None
           ) -> dict[str, Any]:
    """Apply ``exp``'s stored diff onto a base, measure it on ``worker``, and compare."""
    run = a.run
    assert exp.id is not None
    if exp.kind != ExperimentKind.candidate or not exp.diff or not exp.commit:
        raise UsageError(f"experiment {exp.id} has no diff to replay ({exp.kind}, "
                         f"{exp.status.value})")
    base = {"baseline": run.baseline_commit, "champion": run.champion_commit}.get(onto)
    base = base or a.ws.resolve(onto)
    k = seeds if seeds is not None else len(run.seed_list)
    seed_list = [run.seed_list[0] + i for i in range(k)]
    new = a.store.add_experiment(
        run_id=a.id, kind=ExperimentKind.replay, seq=exp.seq,
        title=f"replay of #{exp.id}: {exp.title}", rationale=exp.rationale,
        proposal=exp.proposal, parent_commit=base, replay_of=exp.id)
    assert new.id is not None
    try:
        try:
            before = a.ws.read_files(base)

            def checked(files: dict[str, str]) -> None:
                _guarded(files)
                leak.check_files(a.data, before, files)  # no validation text (leak.py)

            done = a.ws.apply_files(new.id, base, exp.diff, message=f"replay of #{exp.id}: "
                                    f"{exp.title}", check=checked)
        except (ApplyConflict, guard.GuardViolation) as e:
            record.rejected(a, new.id, one_line(str(e)), announce=False)
            raise UsageError(f"cannot replay experiment {exp.id} onto {onto}: {e}") from e
        a.store.transition(new.id, ES.applied, commit=done.commit, diff=done.diff)
        a.store.transition(new.id, ES.running)
        a.reporter.phase(new.id, exp.seq, new.title, f"measuring seeds {seed_list}")
        values, failed = a.run_seeds(worker, new.id, done.wt, seed_list, Purpose.replay)
        a.cleanup(new.id, None)
    except KeyboardInterrupt as e:
        record.interrupted(a, new.id, e)
        raise
    original = a.values(exp.id)
    result: dict[str, Any] = {
        "original": exp.id, "replay": new.id, "onto": onto, "base_commit": base,
        "original_values": original, "replay_values": values, "ok": failed is None,
    }
    if failed is not None:
        record.failed(a, new.id, failed)
        result["verdict"] = f"replay failed ({failed.status.value}): {one_line(failed.error)}"
        return result
    check = decide_mod.reproduces(original, values, noise_std=run.noise_std or 0.0)
    if not check.reproduces and a.budget.kind == "time":
        check = machine_note(a.store, check, exp.id, new.id)
    record.replayed(a, new.id, values, check)
    result["verdict"] = check.reason
    result["reproduces"] = check.reproduces
    return result
