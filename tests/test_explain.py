"""A result is shown beside the champion's value on the same seeds, with its verdict in words."""

from __future__ import annotations

import json

from autoresearch import decide
from autoresearch.explain import compare
from autoresearch.metrics import Metrics
from autoresearch.models import ExperimentStatus as ES
from autoresearch.models import RunStatus
from autoresearch.progress import _result_line
from autoresearch.report import experiment_text, history_table
from autoresearch.store import Store

CHAMPION = {0: 4.6279, 1: 4.6689}


def _decided(store: Store, candidate: dict[int, float], status: ES, title: str) -> int:
    d = decide.decide(candidate, CHAMPION, noise_std=0.02, min_delta=0.0, seeds=[0, 1])
    e = store.add_experiment(run_id=1, kind="candidate", seq=1, title=title,
                             status=status, val_bpb=sum(candidate.values()) / len(candidate),
                             delta=d.delta, reason=d.reason, decision=json.dumps(d.model_dump()))
    assert e.id is not None
    for seed, v in candidate.items():
        store.add_measurement(e.id, Metrics(status=RunStatus.ok, seed=seed, val_bpb=v))
    return e.id


def _store() -> Store:
    store = Store(None)
    store.add_run(agent="mock", budget_kind="tokens", budget_amount=1, seeds="[0, 1]",
                  device="cpu", dataset="x", dataset_sha256="x", experiments_planned=2,
                  branch="run/1", baseline_commit="a", champion_commit="a")
    return store


def test_a_screened_candidate_is_shown_beside_the_champion_on_its_one_seed() -> None:
    store = _store()
    exp = store.get_experiment(_decided(store, {0: 4.6483}, ES.discarded, "Lower lr"))
    assert exp is not None
    c = compare(exp)
    assert c.seeds == [0] and c.champion == CHAMPION[0]
    assert c.words == ("seed 0: 4.6483 vs champion 4.6279 on seed 0: worse by 0.0204; "
                       "discarded at the screen")
    line = _result_line(exp, 4.6484)
    assert "4.6483 vs champion 4.6279 on seed 0" in line and "4.6484" not in line
    text = experiment_text(store, exp)
    assert "val_bpb  4.6483 vs champion 4.6279 on seed 0" in text
    assert "seed 0: ok            val_bpb 4.6483 (champion 4.6279)" in text


def test_a_kept_candidate_says_by_how_much_and_what_was_needed() -> None:
    store = _store()
    exp = store.get_experiment(_decided(store, {0: 3.9, 1: 3.95}, ES.kept, "Raise lr"))
    assert exp is not None
    c = compare(exp)
    assert c.seeds == [0, 1] and c.delta is not None and c.delta < 0
    assert c.words.startswith("seeds 0, 1: 3.9250 vs champion 4.6484 on seeds 0, 1 (means): "
                              "better by 0.7234, more than the ")
    assert c.words.endswith("kept: the new champion")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(history_table(store, [exp]))
    row = console.export_text()
    assert "3.9250" in row and "4.6484" in row and "0,1" in row and "better, kept" in row


def test_failures_and_in_flight_experiments_say_what_happened() -> None:
    store = _store()
    e = store.add_experiment(run_id=1, kind="candidate", title="x", status=ES.crashed,
                             reason="RuntimeError: boom")
    assert compare(e).words == "crashed: RuntimeError: boom"
    e = store.add_experiment(run_id=1, kind="candidate", title="y", status=ES.running)
    assert compare(e).words == "training"
