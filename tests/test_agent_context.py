"""What the agent is shown, built by the loop's own ``context.build`` from a real SQLite store:
the run's facts with the champion's numbers, each experiment's numbers and a reason written
for a researcher, the near-misses and the dry spell, the notebook and the user's guidance,
and a prompt that stays under its bound at 1,000 experiments, kept changes included."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import Session

from autoresearch import data, notebook
from autoresearch.agents.prompts import prompt_size, render_conversation
from autoresearch.config import Settings
from autoresearch.decide import decide
from autoresearch.edits import parse_answer
from autoresearch.loop import context as context_mod
from autoresearch.loop.run import ActiveRun
from autoresearch.metrics import Metrics
from autoresearch.models import (
    ExperimentKind,
    ExperimentStatus,
    MeasurementRole,
    Purpose,
    RunStatus,
)
from autoresearch.progress import PlainReporter
from autoresearch.store import BaselineNoise, Experiment, Judged, Measurement, Store
from autoresearch.workspace import Workspace, init_workspace

ES = ExperimentStatus
SEEDS = [0, 1, 2]
SOURCE = "import torch\n\n\ndef train(run):\n    return torch.nn.Linear(2, 2)\n"


def metrics(val: float, seed: int, steps: int = 400, tokens: int = 400 * 8 * 64,
            seconds: float = 20.0) -> Metrics:
    return Metrics(status=RunStatus.ok, val_bpb=val, val_loss=val * 0.69, seed=seed,
                   steps=steps, train_tokens=tokens, train_seconds=seconds, params=870_000,
                   peak_memory_mb=512.0, device="cpu", torch_version="2.13.0+cpu",
                   seq_len=256, setup_seconds=1.5)


def judged(cand: dict[int, float], champ: dict[int, float], seeds: list[int]) -> Judged:
    d = decide(cand, champ, noise_std=0.02, noise_df=2, min_delta=0.0, seeds=seeds)
    return Judged(**d.model_dump())


def fill(store: Store, n: int, *, kept_every: int = 100) -> tuple[int, int]:
    """A run of ``n`` candidates in one transaction: (run id, champion id). Every
    ``kept_every``-th is kept; every 7th is a near-miss at the final test; the rest are
    discarded at the screen or crashed. Each has a diff, a measurement, a decision."""
    run = store.add_run(agent="anthropic", model="m", budget_kind="time", budget_amount=300,
                        seeds=json.dumps(SEEDS), device="cpu", dataset="corpus",
                        dataset_sha256="x", experiments_planned=n, branch="b",
                        baseline_commit="c0", champion_commit="c0", noise_std=0.02)
    assert run.id is not None
    champ_vals = dict.fromkeys(SEEDS, 3.2)
    with Session(store.engine) as s:
        base = Experiment(run_id=run.id, kind=ExperimentKind.baseline, title="baseline",
                          status=ES.kept, val_bpb=3.2, commit="c0",
                          decision=BaselineNoise(values=champ_vals, noise_std=0.02)
                          .model_dump_json())
        s.add(base)
        s.flush()
        for seed in SEEDS:
            s.add(Measurement(experiment_id=base.id, **_cols(metrics(3.2, seed)),
                              purpose=Purpose.baseline))
        champion = base.id
        level = 3.2
        for i in range(1, n + 1):
            kept = i % kept_every == 0
            near = not kept and i % 7 == 0
            crashed = not kept and not near and i % 5 == 0
            if kept:
                cand = {sd: level - 0.2 for sd in SEEDS}
            elif near:
                cand = {sd: level - 0.02 for sd in SEEDS}
            else:
                cand = {0: level + 0.01}
            dec = None if crashed else judged(cand, {sd: level for sd in SEEDS},
                                              SEEDS if (kept or near) else SEEDS[:1])
            exp = Experiment(
                run_id=run.id, seq=i, title=f"idea number {i}: change something specific",
                rationale=f"because reason {i} says so",
                status=ES.kept if kept else ES.crashed if crashed else ES.discarded,
                reason="RuntimeError: CUDA out of memory" if crashed else (dec.reason if dec
                                                                           else ""),
                parent_id=champion, commit=f"c{i}", val_bpb=None if crashed else
                sum(cand.values()) / len(cand), delta=None if dec is None else dec.delta,
                decision="" if dec is None else dec.model_dump_json(),
                diff=f"--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = {i}\n+LR = {i + 1}\n"
                     + "+# a comment line of a longer diff\n" * 30)
            s.add(exp)
            s.flush()
            if not crashed:
                for seed, v in cand.items():
                    s.add(Measurement(experiment_id=exp.id, **_cols(metrics(v, seed, steps=380)),
                                      purpose=Purpose.screen))
            if kept:
                champion, level = exp.id, level - 0.2
        s.commit()
    store.update_run(run.id, champion_experiment_id=champion, champion_commit=f"c{champion}")
    return run.id, int(champion or 0)


def _cols(m: Metrics) -> dict[str, object]:
    return {"seed": m.seed, "status": m.status, "val_bpb": m.val_bpb, "val_loss": m.val_loss,
            "train_tokens": m.train_tokens, "steps": m.steps, "train_seconds": m.train_seconds,
            "params": m.params, "peak_memory_mb": m.peak_memory_mb, "device": m.device,
            "metrics": m.model_dump_json(), "role": MeasurementRole.candidate}


def active_run(tmp_path: Path, store: Store, run_id: int, prepared: data.PreparedData,
               **settings: object) -> ActiveRun:
    init_workspace(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws", ["train.py"])
    run = store.get_run(run_id)
    assert run is not None
    s = Settings.exactly({"workspace": str(tmp_path / "ws"), **settings})
    return ActiveRun(s, store, ws, PlainReporter(None, Console(stderr=True)), run, prepared,
                     run_id)


@pytest.fixture
def prepared(make_dataset: Callable[..., data.PreparedData]) -> data.PreparedData:
    return make_dataset("the cat sat on the mat. " * 4000, "cats")


# -- 1,000 experiments ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bound", [8_000, 30_000])
def test_a_thousand_experiments_stay_under_the_bound_with_every_keep(
        tmp_path: Path, prepared: data.PreparedData, bound: int) -> None:
    store = Store(tmp_path / "results.db")
    run_id, _champion = fill(store, 1000)
    active = active_run(tmp_path, store, run_id, prepared, prompt_tokens=bound)
    ctx = context_mod.build(active, {"train.py": SOURCE})
    system, messages = render_conversation(ctx)
    user = messages[0]["content"]
    assert prompt_size(system, messages) <= bound
    for i in range(100, 1001, 100):  # every kept change, in full
        assert re.search(rf"^- #{i + 1} \[kept\] idea number {i}:", user, re.M), i
    assert "older attempts omitted" in user
    newest = ctx.history[-1]
    assert f"- #{newest.id} [" in user  # the newest attempt is there
    assert "```diff" in user  # with its diff and rationale
    # (the newest, #1001, is kept: its change is in the code; #1000 shows its diff)
    assert "  rationale: because reason 999 says so\n```diff" in user
    # the keep rule's formula is not the history's reason; the numbers are
    assert "t2·se" not in user and "needs < -" not in user
    assert "better on average, short of the bar on all 3 seeds" in user
    # a larger bound shows more of the run
    if bound == 30_000:
        assert prompt_size(system, messages) > 20_000
    store.close()


# -- facts, history numbers, near-misses, dry spell ------------------------------------------------


def test_facts_and_history_carry_the_runs_numbers(tmp_path: Path,
                                                  prepared: data.PreparedData) -> None:
    store = Store(tmp_path / "results.db")
    run_id, champion = fill(store, 30, kept_every=20)
    active = active_run(tmp_path, store, run_id, prepared, plateau_after=8)
    ctx = context_mod.build(active, {"train.py": SOURCE})
    f = ctx.facts
    assert f is not None
    assert (f.vocab_size, f.train_tokens, f.val_tokens) == (
        prepared.vocab_size, prepared.train_tokens, prepared.val_tokens)
    assert f.champion_id == champion == 21  # the 20th candidate (id 21) was kept
    assert f.steps == 380 and f.params == 870_000 and f.seq_len == 256
    assert f.tokens_per_s == pytest.approx(400 * 8 * 64 / 20.0)
    assert f.torch_version == "2.13.0+cpu"
    system, messages = render_conversation(ctx)
    user = messages[0]["content"]
    # beside the floor bar, what the run's newest final tests actually needed
    finals = [it.threshold for it in ctx.history if it.stage == "final"]
    assert ctx.keep_bar is not None and ctx.keep_bar.recent == finals[-5:]
    assert f"The last final tests in this run needed {finals[-5]:.4f}" in system
    epochs = 400 * 8 * 64 / prepared.train_tokens
    assert f"{epochs:.3g} epochs of the train split" in user
    assert "vocabulary 256" in user and "evaluation context 256 tokens" in user
    # each line: value, Δ against its own champion and the bar, throughput, resources
    line = next(ln for ln in user.splitlines() if ln.startswith("- #23 "))
    assert "val_bpb 3.0100" in line and "vs #21" in line and "380 steps" in line
    assert "10.2k tok/s" in line and "870k params" in line and "512 MB" in line
    assert "worse than its champion (1 seed)" in line
    # dry spell and near-misses (#29 = candidate 28 is a near-miss at the final test)
    assert ctx.since_keep == 10
    assert "- 10 experiments finished since the last kept change." in user
    assert "#29 idea number 28: change something specific: Δ -0.0200" in user.split(
        "Near-misses")[1]
    assert "bolder, structural change" in user
    quiet = context_mod.build(active_run(tmp_path / "b", store, run_id, prepared,
                                         plateau_after=11), {"train.py": SOURCE})
    assert "bolder" not in render_conversation(quiet)[1][0]["content"]
    store.close()


# -- the notebook ----------------------------------------------------------------------------------


ANSWER = ("Let me think about the loss curve first.\n"
          "NOTES:\n- hypothesis: the LR is far too low\n- next: warmup\n"
          "TITLE: Raise the learning rate\nRATIONALE: too low.\n\ntrain.py\n"
          "<<<<<<< SEARCH\nLR = 1\n=======\nLR = 2\n>>>>>>> REPLACE\n")


def test_notes_block_is_read_and_the_answer_still_parses() -> None:
    assert notebook.notes_of(ANSWER) == "- hypothesis: the LR is far too low\n- next: warmup"
    proposal = parse_answer(ANSWER)
    assert proposal.title == "Raise the learning rate" and proposal.rationale == "too low."
    assert notebook.notes_of("NOTES: one line\nTITLE: x") == "one line"
    assert notebook.notes_of("TITLE: x\n...") is None  # no block: the old notes stay
    assert notebook.notes_of("**NOTES:**\n\nTITLE: x") is None  # an empty block is none
    long = notebook.notes_of("NOTES:\n" + "x" * 50_000 + "\nTITLE: t")
    assert long is not None and len(long) < notebook.MAX_NOTES_CHARS + 200
