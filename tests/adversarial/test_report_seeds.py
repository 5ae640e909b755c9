"""The report's fresh seeds against a model that tunes to the seeds it has seen.

A shortcut a reward-hacking model could try next, now that a report judges the night: code
that reads ``run.seed`` and does well only on the seeds the loop measures (a learning rate per
seed, a schedule that suits seed 0's data order). Every decision would see it win; the report
must then measure on seeds no measurement of the run ever used, fillers and replays included,
or it would repeat the loop's own selection.
"""

from __future__ import annotations

from pathlib import Path

from autoresearch.findings import fresh_seeds
from autoresearch.metrics import Metrics
from autoresearch.models import ExperimentKind, MeasurementRole, Purpose, RunStatus
from autoresearch.store import Store


def test_the_reports_seeds_are_none_the_run_ever_measured(tmp_path: Path) -> None:
    store = Store(tmp_path / "results.db")
    run = store.add_run(agent="mock", budget_kind="tokens", budget_amount=10, seeds="[0, 1, 2]",
                        device="cpu", dataset="x", dataset_sha256="x", experiments_planned=2,
                        branch="run/1", baseline_commit="a", champion_commit="a")
    assert run.id is not None
    base = store.add_experiment(run_id=run.id, kind=ExperimentKind.baseline, seq=0,
                                title="baseline")
    replay = store.add_experiment(run_id=run.id, kind=ExperimentKind.replay, seq=1, title="r")
    assert base.id is not None and replay.id is not None
    used = {0: (base.id, MeasurementRole.candidate, Purpose.baseline),
            7: (base.id, MeasurementRole.filler, Purpose.filler),  # a spare seed, no value
            1003: (replay.id, MeasurementRole.candidate, Purpose.replay)}  # replay --seed
    for seed, (exp_id, role, purpose) in used.items():
        store.add_measurement(exp_id, Metrics(status=RunStatus.ok, seed=seed, val_bpb=3.0),
                              role=role, purpose=purpose)
    fresh = fresh_seeds(store, run, 3)
    assert len(fresh) == 3 and not set(fresh) & (set(used) | set(run.seed_list))
    assert min(fresh) > max(used)  # above every seed the run used, not just its planned ones
