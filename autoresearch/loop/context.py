"""What the agent is shown for one proposal, from a few bounded reads: its cost stays flat as
the history grows (the rendered history is bounded in tokens anyway). Experiments in flight
are in the history with their status (proposed, applied, running), so it does not propose
them again.

Everything is read from the store at the moment of the call, so what changed meanwhile (a
result that came in, the user's ``steer``, the agent's own newest notes) reaches the next
prompt without the loop passing it along: the run's facts (data, device, what the champion's
training did), each experiment's numbers, the diffs of the last few and of the near-misses,
the dry spell since the last keep and the keep bar in the run's own noise.
"""

from __future__ import annotations

import os
import statistics
from functools import cache
from pathlib import Path

from autoresearch import contract
from autoresearch import curves as curves_mod
from autoresearch.loop.run import ActiveRun
from autoresearch.metrics import Metrics
from autoresearch.models import (
    Context,
    ExperimentKind,
    ExperimentStatus,
    HistoryItem,
    MeasurementRole,
    RunFacts,
    RunStatus,
    Stats,
)
from autoresearch.runner.broker import allowance
from autoresearch.store import Experiment

ES = ExperimentStatus
# non-kept attempts read for the agent's history (kept ones are always read): more than a
# history section's token budget can show, so the rendered text is the same as from all of them
HISTORY_RECENT = 400
DIFFS_RECENT = 3  # the newest experiments whose diffs are shown (near-misses too, up to:)
DIFFS_NEAR = 5
RECENT_BARS = 5  # the bars of the newest final tests quoted beside the keep bar


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
    curves = curves_mod.context_curves([e for e in (champ, last) if e is not None],
                                       run.champion_experiment_id, active.ws.exp_dir,
                                       active.seeds)
    history = _with_numbers(active, history)
    noise_std, noise_df = (active.noise(run.champion_experiment_id or 0) if baseline is not None
                           else (None, 0))
    s = active.settings
    notes = store.latest_notes(run_id)
    return Context(
        files=files, budget=active.budget.describe(), device=run.device,
        budget_kind=active.budget.kind, budget_amount=active.budget.amount,
        baseline=Stats(mean=baseline.val_bpb, std=noise, n=n)
        if baseline and baseline.val_bpb is not None else None,
        champion=Stats(mean=champ.val_bpb, std=noise, n=n)
        if champ and champ.val_bpb is not None else None,
        history=history, omitted=omitted, last_crash_log=crash_log, curves=curves,
        facts=facts(active, champ, curves),
        keep_bar=None if baseline is None else contract.keep_bar(
            noise_std, noise_df, n, run.min_delta, champ.val_bpb if champ else None
        ).model_copy(update={"recent": [it.threshold for it in history if it.stage == "final"
                                        and it.threshold is not None][-RECENT_BARS:]}),
        notes=(notes.notes or "") if notes is not None else "",
        guidance=[g.text for g in store.guidance(run_id)],
        since_keep=store.since_keep(run_id), plateau_after=s.plateau_after,
        prompt_tokens=s.prompt_tokens,
    )


def _with_numbers(active: ActiveRun, items: list[HistoryItem]) -> list[HistoryItem]:
    """History items with their throughput and resources, the near-misses marked, and the
    diffs of the newest few and of the near-misses (the diffs are the only texts read)."""
    numbers = active.store.throughput([it.id for it in items])
    out = []
    for it in items:
        got = numbers.get(it.id, {})
        near = (it.status == ExperimentStatus.discarded.value and it.delta is not None
                and it.delta < 0 and it.stage in ("second-stage", "final"))
        out.append(it.model_copy(update={
            "steps": round(got["steps"]) if got else None,
            "tokens_per_s": got.get("tokens_per_s") or None,
            "params": int(got["params"]) if got.get("params") else None,
            "peak_memory_mb": got.get("peak_memory_mb") or None,
            "near_miss": near}))
    done = [it for it in out if it.status not in _IN_FLIGHT]
    want = {it.id for it in done[-DIFFS_RECENT:]}
    want |= {it.id for it in [it for it in out if it.near_miss][-DIFFS_NEAR:]}
    texts = active.store.diffs(sorted(want))
    return [it.model_copy(update={"diff": texts[it.id][0] or None,
                                  "rationale": texts[it.id][1] or None})
            if it.id in texts else it for it in out]


_IN_FLIGHT = {ES.proposed.value, ES.applied.value, ES.running.value, ES.measured.value}


def facts(active: ActiveRun, champ: Experiment | None,
          curves: dict[str, list[tuple[int, float]]]) -> RunFacts:
    """The run's facts: its data, device and budget, and what the champion's training did
    (means over its own successful measurements, from the metrics the runner wrote)."""
    data, run, s = active.data, active.run, active.settings
    f = RunFacts(dataset=data.name, train_tokens=data.train_tokens, val_tokens=data.val_tokens,
                 bytes_per_token=data.bytes_per_token, vocab_size=data.vocab_size,
                 device=run.device, budget=active.budget.describe(), setup_cap=s.setup_cap,
                 allowance=allowance(active.budget), device_memory_mb=_memory_mb(run.device))
    if champ is None or champ.id is None:
        return f
    ms = [m for m in active.store.measurements(champ.id, role=MeasurementRole.candidate)
          if m.status == RunStatus.ok]
    if not ms:
        return f
    metrics = [Metrics.model_validate_json(m.metrics) for m in ms]
    tokens = statistics.fmean(m.train_tokens for m in ms)
    secs = sum(m.train_seconds for m in ms)
    mfus = [x.mfu for x in metrics if x.mfu is not None]
    losses = [pts[-1][1] for label, pts in curves.items() if label.startswith("champion") and pts]
    vals = [x.val_loss for x in metrics if x.val_loss is not None]
    return f.model_copy(update={
        "seq_len": metrics[-1].seq_len, "device_name": metrics[-1].device_name,
        "torch_version": metrics[-1].torch_version, "champion_id": champ.id,
        "steps": statistics.fmean(m.steps for m in ms), "tokens": tokens,
        "tokens_per_s": sum(m.train_tokens for m in ms) / secs if secs else None,
        "params": max(m.params for m in ms),
        "peak_memory_mb": max(m.peak_memory_mb for m in ms) or None,
        "mfu": statistics.fmean(mfus) if mfus else None,
        "train_loss": losses[0] if losses else None,
        "val_loss": statistics.fmean(vals) if vals else None,
        "setup_seconds": statistics.fmean(x.setup_seconds for x in metrics)})


@cache
def _memory_mb(device: str) -> float | None:
    """The device's memory: the first visible GPU's, else this machine's RAM (where the
    orchestrator runs: on a Ray cluster the nodes may differ, so only the local figure)."""
    if device == "cuda":
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_properties(0).total_memory / 2**20
        except Exception:  # a driver that answers nothing: the figure is only display
            return None
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def log_tail(exp_dir: Path, limit: int) -> str:
    """The last ``limit`` characters of an experiment's newest run.log."""
    logs = sorted(exp_dir.glob("seed-*/run.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    text = logs[-1].read_text(encoding="utf-8", errors="replace")
    return text[-limit:]
