"""The machine's speed: each measurement's, relative to the champion's measurements, recorded
with it; a drift under a wall-clock budget is said once when it starts and once when it ends
(its val_bpb is then not comparable with earlier ones), and a replay that differs is told
whether the machine, not the code, could explain it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Protocol

from autoresearch import speed as speed_mod
from autoresearch.decide import Reproduction
from autoresearch.metrics import Metrics
from autoresearch.models import MeasurementRole, RunStatus
from autoresearch.store import Run, Store


class Notices(Protocol):
    def notice(self, message: str) -> None: ...


@dataclass
class DriftWatch:
    """Whether the last measurement drifted (so a change of state is said once)."""

    drifting: bool = False

    def observe(self, store: Store, run: Run, reporter: Notices, exp_id: int, seed: int,
                m: Metrics) -> dict[str, Any]:
        """The measurement's machine speed, relative to the champion's: the fields stored
        with it (speed, speed_ratio, drift)."""
        speed = speed_mod.combined(m.speed_before, m.speed_after)
        ref = reference_speeds(store, run)
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
        if run.budget_kind == "time" and (why is not None) != self.drifting:
            self.drifting = why is not None
            where = f"experiment {exp_id} seed {seed}"
            reporter.notice(
                f"machine speed drift at {where}: {why}; under a wall-clock budget its "
                "val_bpb is not comparable with earlier measurements, so a promising "
                "candidate is confirmed against the champion re-measured alongside it"
                if why else f"machine speed back within ±{math.expm1(tol):.0%} of the "
                f"champion's at {where}")
        return {"speed": speed, "speed_ratio": ratio, "drift": why}


def reference_speeds(store: Store, run: Run) -> list[float]:
    """The champion's own measurements' speeds (none while the baseline is measured)."""
    if run.champion_experiment_id is None:
        return []
    return [m.speed for m in store.measurements(run.champion_experiment_id,
                                                role=MeasurementRole.candidate)
            if m.status == RunStatus.ok and m.speed is not None]


def machine_note(store: Store, check: Reproduction, original: int, replay: int
                 ) -> Reproduction:
    """A replay that differs under a wall-clock budget: was it the machine?"""
    def speeds(exp_id: int) -> list[float]:
        return [m.speed for m in store.measurements(exp_id, role=MeasurementRole.candidate)
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
