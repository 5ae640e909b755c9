"""The harness's two phases, run in this process for speed (the runner tests use processes)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoresearch import harness
from autoresearch.data import PreparedData
from autoresearch.harness import BudgetExhausted, NonFiniteLoss, command, export
from autoresearch.harness import evaluate as evaluation
from autoresearch.harness import train as training
from autoresearch.harness.train import Run
from autoresearch.metrics import Budget, EvalReport, TrainReport
from autoresearch.models import RunStatus

SOURCES = Path(__file__).parent / "sources"
TrainFn = Callable[..., tuple[int, TrainReport, Path]]


def make_run(data: np.ndarray, budget: Budget, seed: int = 0, **kw: float) -> Run:
    return Run(data, device="cpu", seed=seed, vocab_size=256, seq_len=16, budget=budget, **kw)


# --- Run: what train() sees ---------------------------------------------------------------


def test_get_batch_serves_shifted_train_windows_from_the_seed() -> None:
    data = np.arange(1000, dtype=np.int64).astype(np.uint8)
    budget = Budget(kind="tokens", amount=10_000)
    a, b, c = (make_run(data, budget, seed=s) for s in (1, 1, 2))
    xa, ya = a.get_batch(4, 32)
    xb, _ = b.get_batch(4, 32)
    xc, _ = c.get_batch(4, 32)
    assert xa.shape == ya.shape == (4, 32) and xa.dtype == torch.long
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert torch.equal(xa[:, 1:], ya[:, :-1])  # y is x shifted by one
    assert (a.tokens, a.steps) == (128, 1)


def test_token_budget_refuses_a_batch_it_cannot_cover() -> None:
    run = make_run(np.zeros(1000, np.uint8), Budget(kind="tokens", amount=100))
    assert run.time_left() == math.inf
    run.get_batch(2, 32)
    assert run.tokens_left() == 36
    with pytest.raises(BudgetExhausted, match="36 left"):
        run.get_batch(2, 32)
    assert run.tokens == 64  # nothing served past the budget
    run.finish()  # refusing a batch is not a failure when train() stops there


def test_time_budget_clock_starts_at_the_first_batch() -> None:
    run = make_run(np.zeros(1000, np.uint8), Budget(kind="time", amount=5))
    assert run.time_left() == 5 and run.tokens_left() == math.inf
    run.get_batch(1, 8)
    assert 4 < run.time_left() <= 5


def test_non_finite_loss_is_kept_even_if_train_swallows_it(capsys: pytest.CaptureFixture) -> None:
    run = make_run(np.zeros(1000, np.uint8), Budget(kind="tokens", amount=100))
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
    """train_phase(source, *extra_args) -> (exit code, report, artifact path)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    monkeypatch.setitem(sys.modules, "train", None)  # restored (removed) afterwards

    def run(source: str, *extra: str) -> tuple[int, TrainReport, Path]:
        sys.modules.pop("train", None)
        artifact, report = tmp_path / f"{source}.pt", tmp_path / f"{source}.json"
        budget = [] if any("budget" in a for a in extra) else ["--token-budget", "20480"]
        args = command.parse_args([
            "--phase", "train", "--source", str(SOURCES / source), "--data",
            str(prepared_data.path), "--device", "cpu", "--artifact", str(artifact),
            "--report", str(report), *budget, *extra])
        code = training.train_phase(args)
        return code, TrainReport.model_validate_json(report.read_text()), artifact

    return run


@pytest.mark.parametrize(("source", "extra", "status", "reason"), [
    ("no_train", [], RunStatus.crash, "train.py defines no train(run) function"),
    ("not_a_model", [], RunStatus.invalid_model, "train() returned dict"),
    ("crash", [], RunStatus.crash, "ValueError: boom from train"),
    ("sys_exit", [], RunStatus.crash, "SystemExit: 3"),
    ("nan_log", [], RunStatus.nan, "loss is nan"),
    ("overtime", ["--time-budget", "0.1"], RunStatus.overtime, "train() returned"),
    ("slow_setup", ["--setup-cap", "0.2"], RunStatus.overtime, "setup took"),
    ("greedy", ["--token-budget", "1000"], RunStatus.overtime, "get_batch(4, 16) refused"),
    ("unexportable", [], RunStatus.invalid_model, "cannot be exported"),
])
def test_each_broken_source_gets_its_status_and_reason(
    train_phase: TrainFn, monkeypatch: pytest.MonkeyPatch, source: str, extra: list[str],
    status: RunStatus, reason: str,
) -> None:
    monkeypatch.setattr(training, "TIME_GRACE", (0.1, 0.0))  # so overtime needs no long sleep
    code, report, artifact = train_phase(source, *extra)
    assert (code, report.status) == (1, status)
    assert report.error is not None and report.error.splitlines()[0].find(reason) >= 0
    assert not artifact.exists()


def test_traceback_tail_points_at_the_agent_code(train_phase: TrainFn) -> None:
    _, report, _ = train_phase("crash")
    assert report.error is not None
    assert "crash/train.py" in report.error and 'raise ValueError("boom from train")' in \
        report.error


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
    code, _, artifact = train_phase("tiny")
    assert code == 0
    report = evaluate(artifact, prepared_data.path, tmp_path)
    assert report.status == RunStatus.ok and report.causal_ok is True
    assert report.val_loss is not None and report.val_bpb is not None
    assert report.val_bpb == pytest.approx(report.val_loss / math.log(2))
    batch, _ = harness.eval_plan("cpu")
    assert report.eval_tokens == (prepared_data.val_tokens - 1) // (256 * batch) * 256 * batch
    assert 10_000 < report.params < 100_000  # the tiny model's parameters, from the artifact


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
        model = export.GraphModel(artifact, "cpu")
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
    ("not_causal", RunStatus.not_causal, "when tokens at positions >="),
    ("peek_rows", RunStatus.not_causal, "when other rows of the batch changed"),
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
    blob: dict[str, object] = {"format": export.ARTIFACT_FORMAT, "graph": json.dumps(nodes),
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
