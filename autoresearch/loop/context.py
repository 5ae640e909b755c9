"""What the agent is shown for one proposal, from a few bounded reads: its cost stays flat as
the history grows (the rendered history is bounded in tokens anyway). Experiments in flight
are in the history with their status (proposed, applied, running), so it does not propose
them again."""

from __future__ import annotations

from pathlib import Path

from autoresearch import curves as curves_mod
from autoresearch.loop.run import ActiveRun
from autoresearch.models import Context, ExperimentKind, ExperimentStatus, Stats

ES = ExperimentStatus
# non-kept attempts read for the agent's history (kept ones are always read): more than a
# history section's token budget can show, so the rendered text is the same as from all of them
HISTORY_RECENT = 400


def build(active: ActiveRun, files: dict[str, str]) -> Context:
    store, run, run_id = active.store, active.run, active.id
    baseline = next((e for e in store.experiments(run_id=run_id, kind=ExperimentKind.baseline)
                     if e.val_bpb is not None), None)
    champ = (None if run.champion_experiment_id is None
             else store.get_experiment(run.champion_experiment_id))
    noise = run.noise_std or 0.0
    n = len(active.seeds)
    history, omitted = store.history(run_id, recent=HISTORY_RECENT)
    last_crash = store.newest(run_id, status=[ES.crashed, ES.timeout, ES.invalid])
    crash_log = None
    if last_crash is not None and last_crash.id is not None:
        crash_log = log_tail(active.ws.exp_dir(last_crash.id), 3000)
    last = store.newest(run_id, kind=ExperimentKind.candidate, has_commit=True)
    return Context(
        files=files, budget=active.budget.describe(), device=run.device,
        baseline=Stats(mean=baseline.val_bpb, std=noise, n=n)
        if baseline and baseline.val_bpb is not None else None,
        champion=Stats(mean=champ.val_bpb, std=noise, n=n)
        if champ and champ.val_bpb is not None else None,
        history=history, omitted=omitted, last_crash_log=crash_log,
        curves=curves_mod.context_curves([e for e in (champ, last) if e is not None],
                                         run.champion_experiment_id, active.ws.exp_dir,
                                         active.seeds),
    )


def log_tail(exp_dir: Path, limit: int) -> str:
    """The last ``limit`` characters of an experiment's newest run.log."""
    logs = sorted(exp_dir.glob("seed-*/run.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    text = logs[-1].read_text(encoding="utf-8", errors="replace")
    return text[-limit:]
