"""The harness's two phases, run in this process for speed (the runner tests use processes).

The training side always talks to a real broker (autoresearch/runner/broker.py) over a real
socket pair, the broker in a thread of its own, as the runner runs it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import brokered, hello_run

from autoresearch import harness
from autoresearch.data import PreparedData
from autoresearch.harness import BudgetExhausted, NonFiniteLoss, command, graph
from autoresearch.harness import evaluate as evaluation
from autoresearch.harness import train as training
from autoresearch.metrics import Budget, EvalReport
from autoresearch.models import RunStatus
from autoresearch.runner import broker as broker_mod
from autoresearch.runner.broker import Served

SOURCES = Path(__file__).parent / "sources"
TrainFn = Callable[..., tuple[int, Served, Path]]


# --- Run: what train() sees, as the broker serves it ------------------------------------------


def test_get_batch_serves_shifted_train_windows_from_the_seed(tmp_path: Path) -> None:
    data = np.arange(1000, dtype=np.int64).astype(np.uint8)
    budget = Budget(kind="tokens", amount=10_000)
    xs = []
    for seed in (1, 1, 2):
        with brokered(data, budget, tmp_path, seed=seed) as (channel, served):
            run = hello_run(channel, budget, seed)
            x, y = run.get_batch(4, 32)
            xs.append(x)
        assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
        assert (run.tokens, run.steps) == (128, 1)
        assert (served[0].tokens, served[0].steps) == (128, 1)  # the broker's own count
    assert torch.equal(xs[0], xs[1]) and not torch.equal(xs[0], xs[2])


def test_token_budget_refuses_a_batch_it_cannot_cover(tmp_path: Path) -> None:
    budget = Budget(kind="tokens", amount=100)
    with brokered(np.zeros(1000, np.uint8), budget, tmp_path) as (channel, served):
        run = hello_run(channel, budget)
        assert run.time_left() == math.inf
        run.get_batch(2, 32)
        assert run.tokens_left() == 36
        with pytest.raises(BudgetExhausted, match="36 left"):
            run.get_batch(2, 32)
        run.finish()  # refusing a batch is not a failure when train() stops there
    assert served[0].tokens == 64  # nothing served past the budget


def test_the_client_cannot_count_for_the_broker(tmp_path: Path) -> None:
    """Whatever the training process does to its own Run, the broker counts what it served."""
    budget = Budget(kind="tokens", amount=100)
    with brokered(np.zeros(1000, np.uint8), budget, tmp_path) as (channel, served):
        run = hello_run(channel, budget)
        run.get_batch(2, 32)
        run.tokens = -10_000  # a lie to itself
        with pytest.raises(BudgetExhausted):
            run.get_batch(2, 32)
    assert (served[0].tokens, served[0].steps) == (64, 1)


def test_time_budget_clock_starts_at_the_first_batch(tmp_path: Path) -> None:
    budget = Budget(kind="time", amount=5)
    with brokered(np.zeros(1000, np.uint8), budget, tmp_path) as (channel, _):
        run = hello_run(channel, budget)
        assert run.time_left() == 5 and run.tokens_left() == math.inf
        run.get_batch(1, 8)
        assert 4 < run.time_left() <= 5


def test_under_a_time_budget_the_next_batch_is_asked_for_ahead(tmp_path: Path) -> None:
    """A step's batch is drawn while the previous step trains; one asked for in another shape
    is dropped, and finish() takes the last one off the channel. The broker counts all it
    served (under a time budget its tokens are bookkeeping)."""
    budget = Budget(kind="time", amount=30)
    data = np.arange(1000, dtype=np.int64).astype(np.uint8)
    with brokered(data, budget, tmp_path) as (channel, served):
        run = hello_run(channel, budget)
        run.get_batch(2, 8)
        run.get_batch(2, 8)  # the one asked for ahead
        x, y = run.get_batch(3, 8)  # another shape: the one asked ahead is dropped
        assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])
        run.finish()  # takes the last one asked for ahead off the channel
        channel.sendall(b"")  # still open: nothing was left half-read
    assert run.steps == 3
    assert (served[0].steps, served[0].tokens) == (5, 3 * 2 * 8 + 2 * 3 * 8)


def test_non_finite_loss_is_kept_even_if_train_swallows_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    budget = Budget(kind="tokens", amount=100)
    with brokered(np.zeros(1000, np.uint8), budget, tmp_path) as (channel, _):
        run = hello_run(channel, budget)
        run.log(step=1, loss=torch.tensor(2.5), note="warmup")
        assert "loss 2.5" in capsys.readouterr().out
        with pytest.raises(NonFiniteLoss):
            run.log(loss=float("inf"))
        with pytest.raises(NonFiniteLoss):
            run.finish()


# --- phase 1: training, by purpose-written sources ------------------------------------------


@pytest.fixture
def train_phase(tmp_path: Path, prepared_data: PreparedData,
                monkeypatch: pytest.MonkeyPatch) -> TrainFn:
    """train_phase(source, *extra_args, setup_cap=) -> (exit code, what the broker served,
    the artifact it received)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    monkeypatch.setitem(sys.modules, "train", None)  # restored (removed) afterwards
    monkeypatch.chdir(tmp_path)  # the curve file lands in the working folder
    data = np.memmap(prepared_data.path / "train.bin", dtype=np.uint8, mode="r")

    def run(source: str, *extra: str, setup_cap: float = 60.0) -> tuple[int, Served, Path]:
        sys.modules.pop("train", None)
        budget_args = [] if any("budget" in a for a in extra) else ["--token-budget", "20480"]
        args = command.parse_args(["--phase", "train", "--source", str(SOURCES / source),
                                   "--channel", "fd:-1", "--device", "cpu", *budget_args,
                                   *extra])
        folder = tmp_path / source
        folder.mkdir()
        with brokered(data, training.budget_of(args), folder, setup_cap=setup_cap) as (
                channel, served):
            args.channel = f"fd:{os.dup(channel.fileno())}"  # train_phase closes its own
            code = training.train_phase(args)
        return code, served[0], folder / "model.pt"

    return run


@pytest.mark.parametrize(("source", "extra", "setup_cap", "status", "reason"), [
    ("no_train", [], 60, RunStatus.crash, "train.py defines no train(run) function"),
    ("not_a_model", [], 60, RunStatus.invalid_model, "train() returned dict"),
    ("crash", [], 60, RunStatus.crash, "ValueError: boom from train"),
    ("sys_exit", [], 60, RunStatus.crash, "SystemExit: 3"),
    ("nan_log", [], 60, RunStatus.nan, "loss is nan"),
    ("overtime", ["--time-budget", "0.1"], 60, RunStatus.timeout, "no model handed back"),
    ("slow_setup", [], 0.2, RunStatus.overtime, "setup took"),
    ("greedy", ["--token-budget", "1000"], 60, RunStatus.overtime,
     "get_batch(4, 16) refused"),
    ("unexportable", [], 60, RunStatus.invalid_model, "cannot be exported"),
])
def test_each_broken_source_gets_its_status_and_reason(
    train_phase: TrainFn, monkeypatch: pytest.MonkeyPatch, source: str, extra: list[str],
    setup_cap: float, status: RunStatus, reason: str,
) -> None:
    monkeypatch.setattr(broker_mod, "ALLOWANCE", (0.0, 0.1))  # so a timeout needs no long sleep
    code, served, artifact = train_phase(source, *extra, setup_cap=setup_cap)
    assert (code, served.status) == (1, status), served.error
    assert served.error is not None and served.error.splitlines()[0].find(reason) >= 0
    assert served.artifact is None and not artifact.exists()


def test_traceback_tail_points_at_the_agent_code(train_phase: TrainFn) -> None:
    _, served, _ = train_phase("crash")
    assert served.error is not None
    assert "crash/train.py" in served.error and 'raise ValueError("boom from train")' in \
        served.error


# --- phase 2: evaluation of the exported model -----------------------------------------------


def evaluate(artifact: Path, data: Path, tmp_path: Path, *extra: str) -> EvalReport:
    out = tmp_path / "eval.json"
    args = command.parse_args(["--phase", "eval", "--artifact", str(artifact), "--data",
                               str(data), "--device", "cpu", "--out", str(out), *extra])
    code = evaluation.eval_phase(args)
    report = EvalReport.model_validate_json(out.read_text())
    assert code == (0 if report.status == RunStatus.ok else 1)
    return report


def test_tiny_model_is_scored_on_the_fixed_windows(
    train_phase: TrainFn, prepared_data: PreparedData, tmp_path: Path,
) -> None:
    code, served, artifact = train_phase("tiny")
    assert code == 0 and served.status == RunStatus.ok, served.error
    report = evaluate(artifact, prepared_data.path, tmp_path)
    assert report.status == RunStatus.ok and report.causal_ok is True
    assert report.val_loss is not None and report.val_bpb is not None
    assert report.val_bpb == pytest.approx(report.val_loss / math.log(2))
    batch, _ = harness.eval_plan("cpu")
    assert report.eval_tokens == (prepared_data.val_tokens - 1) // (256 * batch) * 256 * batch
    assert 10_000 < report.params < 100_000  # the tiny model's parameters, from the artifact


def test_the_test_split_is_scored_only_when_asked_for(
    train_phase: TrainFn, prepared_data: PreparedData, tmp_path: Path,
) -> None:
    _, _, artifact = train_phase("tiny")
    plain = evaluate(artifact, prepared_data.path, tmp_path)
    assert plain.test_bpb is None and plain.test_loss is None
    both = evaluate(artifact, prepared_data.path, tmp_path, "--split", "test")
    assert both.val_bpb == plain.val_bpb  # the same validation score beside it
    batch, tokens = harness.eval_plan("cpu")
    held = torch.frombuffer(bytearray((prepared_data.path / "test.bin").read_bytes()),
                            dtype=torch.uint8)
    model = graph.GraphModel(artifact, "cpu")
    total, n = 0.0, 0
    with torch.inference_mode():
        for x, y in evaluation.eval_windows(held, batch, 256, tokens):
            total += float(torch.nn.functional.cross_entropy(
                model(x).float().flatten(0, 1), y.flatten(), reduction="sum"))
            n += y.numel()
    assert both.test_loss == pytest.approx(total / n, rel=1e-6)
    assert both.test_bpb == pytest.approx(both.test_loss / math.log(2))
    assert both.test_bpb != both.val_bpb  # other text


def test_batches_side_by_side_score_what_one_at_a_time_would(
    train_phase: TrainFn, prepared_data: PreparedData,
) -> None:
    _, _, artifact = train_phase("tiny")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two workers, one thread each
        report = evaluation.evaluate(artifact, prepared_data.path, "cpu", 256)
        assert torch.get_num_threads() == 2  # given back
        torch.set_num_threads(1)  # one batch after another, as the evaluation once ran
        batch, tokens = harness.eval_plan("cpu")
        val = evaluation.load_val(prepared_data.path, None)
        model = graph.GraphModel(artifact, "cpu")
        total = 0.0
        with torch.inference_mode():
            for x, y in evaluation.eval_windows(val, batch, 256, tokens):
                total += float(torch.nn.functional.cross_entropy(
                    model(x).float().flatten(0, 1), y.flatten(), reduction="sum"))
    finally:
        torch.set_num_threads(threads)
    assert report.val_loss == total / report.eval_tokens


@pytest.mark.parametrize(("source", "status", "reason"), [
    ("wrong_shape", RunStatus.invalid_model, "returned (8, 1, 256)"),
    ("nan_logits", RunStatus.nan, "not finite"),
    ("not_causal", RunStatus.not_causal, "looks ahead or across the batch"),
    ("peek_rows", RunStatus.not_causal, "looks ahead or across the batch"),
])
def test_evaluation_catches_bad_models(
    train_phase: TrainFn, prepared_data: PreparedData, tmp_path: Path, source: str,
    status: RunStatus, reason: str,
) -> None:
    code, _, artifact = train_phase(source)
    assert code == 0  # training itself went fine: only the evaluation can tell
    report = evaluate(artifact, prepared_data.path, tmp_path)
    assert report.status == status and report.val_bpb is None
    assert report.error is not None and reason in report.error.splitlines()[0]
    if status == RunStatus.not_causal:
        assert report.causal_ok is False


def test_evaluation_refuses_a_changed_dataset(
    train_phase: TrainFn, prepared_data: PreparedData, tmp_path: Path,
) -> None:
    _, _, artifact = train_phase("tiny")
    report = evaluate(artifact, prepared_data.path, tmp_path, "--expect-sha256", "0" * 64)
    assert report.status == RunStatus.crash
    assert report.error is not None and "changed" in report.error


def test_windows_are_contiguous_strided_and_fixed() -> None:
    val = torch.arange(10 * 4 * 8 + 1) % 256
    batches = evaluation.eval_windows(val.to(torch.uint8), batch=4, seq_len=8, max_tokens=64)
    assert len(batches) == 2  # 64 tokens: 8 windows of 8 in 2 batches of 4
    x0, y0 = batches[0]
    assert x0[:, 0].tolist() == [0, 16, 32, 48]  # windows 0, 2, 4, 6: never adjacent
    assert torch.equal(x0[:, 1:], y0[:, :-1])
    again = evaluation.eval_windows(val.to(torch.uint8), batch=4, seq_len=8, max_tokens=64)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


# --- the artifact is data: loading it never runs code ----------------------------------------


class _Payload:
    """Would create a file when unpickled, if the evaluator ever unpickled arbitrary objects."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))


def _artifact(path: Path, nodes: list[dict[str, Any]], extra: object = None) -> Path:
    blob: dict[str, object] = {"format": harness.ARTIFACT_FORMAT, "graph": json.dumps(nodes),
                               "tensors": {"w": torch.zeros(256, 256)}}
    if extra is not None:
        blob["extra"] = extra
    torch.save(blob, path)
    return path


_INPUT: dict[str, Any] = {"op": "input", "name": "x", "shape": [8, 256]}


@pytest.mark.parametrize("target", ["torch.os.system", "aten.from_file.default",
                                    "builtins.exec", "aten.no_such_op.default"])
def test_artifact_may_only_call_aten_operators(
    tmp_path: Path, prepared_data: PreparedData, target: str,
) -> None:
    call = {"op": "call", "name": "y", "target": target, "args": {"list": ["ls"]},
            "kwargs": {"dict": {}}}
    nodes = [_INPUT, call, {"op": "output", "args": {"node": "y"}}]
    report = evaluate(_artifact(tmp_path / "m.pt", nodes), prepared_data.path, tmp_path)
    assert report.status == RunStatus.invalid_model
    assert report.error is not None and target in report.error


def test_artifact_with_pickled_code_is_rejected_unrun(
    tmp_path: Path, prepared_data: PreparedData,
) -> None:
    marker = tmp_path / "pwned"
    nodes: list[dict[str, Any]] = [_INPUT, {"op": "output", "args": {"node": "x"}}]
    artifact = _artifact(tmp_path / "m.pt", nodes, extra=_Payload(marker))
    report = evaluate(artifact, prepared_data.path, tmp_path)
    assert report.status == RunStatus.invalid_model and "cannot be loaded" in str(report.error)
    assert not marker.exists()
