"""A candidate beside the champion on the same seeds, and why it was kept or discarded, in words.

Every place that shows a result (the live lines, ``history``, ``show``, the dashboard) uses
these, so a reader always compares like with like: the candidate's value and the champion's on
exactly the seeds the candidate was measured on, never one seed beside a mean of several.
Everything comes from the decision evidence stored with the experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autoresearch.models import ExperimentStatus
from autoresearch.store import Experiment, read_decision

ES = ExperimentStatus
_FAILED = {ES.rejected, ES.crashed, ES.timeout, ES.invalid, ES.interrupted, ES.superseded}


@dataclass(frozen=True)
class Comparison:
    seeds: list[int]  # the paired seeds both values are measured on
    value: float | None  # the candidate's mean on those seeds
    champion: float | None  # the champion's mean on the same seeds
    delta: float | None  # value - champion (negative is better)
    needed: float | None  # the improvement the rule asked for
    stage: str  # screen | second-stage | final | baseline | replay | failed | in flight
    words: str  # the whole sentence
    short: str  # a few words, for a table cell


def _seeds(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _decision(e: Experiment) -> dict[str, Any]:
    record = read_decision(e)
    return {} if record is None else record.model_dump()


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if isinstance(x, int | float) and math.isfinite(x)]
    return sum(vals) / len(vals) if vals and len(vals) == len(xs) else None


def compare(e: Experiment) -> Comparison:
    """The comparison and its words for any experiment, in any status."""
    d = _decision(e)
    if e.kind == "baseline":
        values = d.get("values") or {}
        seeds = sorted(int(s) for s in values)
        noise = d.get("noise_std")
        spread = f" ± {noise:.4f}" if isinstance(noise, int | float) else ""
        if e.val_bpb is None:
            return Comparison(seeds, None, None, None, None, "baseline",
                              f"baseline {e.status.value}: {e.reason or 'not measured yet'}",
                              e.status.value)
        words = (f"baseline: {e.val_bpb:.4f}{spread} over {_seeds(seeds)}; the first champion"
                 if seeds else f"baseline: {e.val_bpb:.4f}")
        return Comparison(seeds, e.val_bpb, e.val_bpb, 0.0, None, "baseline", words,
                          "the first champion")
    if e.kind in ("replay", "report"):
        return Comparison([], e.val_bpb, None, e.delta, None, str(e.kind),
                          e.reason or e.status.value, e.status.value)
    if e.status in _FAILED:
        why = e.reason or "no reason given"
        return Comparison([], None, None, None, None, "failed", f"{e.status.value}: {why}",
                          e.status.value)
    ev = d.get("evidence") if isinstance(d.get("evidence"), dict) else None
    if ev is None or e.status not in (ES.kept, ES.discarded):
        phase = {ES.proposed: "asking the agent", ES.applied: "applied, about to train",
                 ES.running: "training", ES.measured: "measured, deciding"}.get(
                     e.status, e.status.value)
        return Comparison([], e.val_bpb, None, None, None, "in flight", phase, phase)
    seeds = [int(s) for s in ev.get("seeds") or []]
    value, champ = _mean(ev.get("candidate") or []), _mean(ev.get("champion") or [])
    delta = d.get("delta") if isinstance(d.get("delta"), int | float) else ev.get("mean")
    needed = ev.get("threshold")
    needed = float(needed) if isinstance(needed, int | float) and math.isfinite(needed) else None
    stage = str(ev.get("stage") or "final")
    where = _seeds(seeds)
    mean = " (means)" if len(seeds) > 1 else ""
    if value is None or champ is None or not isinstance(delta, int | float):
        return Comparison(seeds, value, champ, None, needed, stage,
                          e.reason or e.status.value, e.status.value)
    if delta < 0:
        how = f"better by {-delta:.4f}"
        if needed is not None:
            how += (f", more than the {needed:.4f} needed" if -delta > needed
                    else f", but not by the {needed:.4f} needed")
    elif delta > 0:
        how = f"worse by {delta:.4f}"
    else:
        how = "the same"
    if e.status == ES.kept:
        outcome, short_out = "kept: the new champion", "kept"
    elif stage == "screen":
        outcome, short_out = "discarded at the screen", "discarded at the screen"
    elif stage == "second-stage":
        outcome, short_out = (f"discarded at the second stage, on {where}",
                              "discarded at the second stage")
    else:
        outcome, short_out = f"discarded after confirming on {where}", "discarded"
    words = (f"{where}: {value:.4f} vs champion {champ:.4f} on {where}{mean}: {how}; "
             f"{outcome}")
    short = f"{'better' if delta < 0 else 'worse' if delta > 0 else 'same'}, {short_out}"
    return Comparison(seeds, value, champ, float(delta), needed, stage, words, short)
