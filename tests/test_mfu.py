"""MFU: FLOPs counted by trusted code on CPU against hand counts, the GPU peak table, the
formula, and how a measurement shows it (`train`'s metrics line, `show`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from autoresearch import mfu, report
from autoresearch.harness.export import export_model
from autoresearch.harness.graph import GraphModel
from autoresearch.metrics import Metrics
from autoresearch.models import RunStatus

B, T, V, D = 2, 8, 16, 12  # batch, time, vocabulary, width


class TinyLM(nn.Module):
    """Embedding, one causal attention, a linear head: its forward FLOPs by hand are
    qkv 2*N*D*3D, attention scores and values 2 * 2*B*T*T*D (torch counts SDPA in full, the
    causal mask does not halve it), head 2*N*D*V, with N = B*T tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.head = nn.Linear(D, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx)
        q, k, v = self.qkv(h).unsqueeze(1).split(D, dim=-1)  # one head: (B, 1, T, D)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(h + a.squeeze(1))


def tiny_lm_flops() -> int:
    n = B * T
    return 2 * n * D * 3 * D + 2 * (2 * B * T * T * D) + 2 * n * D * V


def test_forward_flops_of_linear_layers_match_the_hand_count() -> None:
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8, bias=False))
    x = torch.randn(4, 16)
    # 2 FLOPs per multiply-add; the bias, GELU and other elementwise ops count nothing
    assert mfu.forward_flops(mlp, x) == 2 * 4 * (16 * 32 + 32 * 8)
    assert mfu.forward_flops_per_token(mlp, x) == 2 * 4 * (16 * 32 + 32 * 8) / 64


def test_forward_flops_count_attention_and_leave_no_gradient_behind() -> None:
    model = TinyLM()
    x = torch.randint(0, V, (B, T))
    assert mfu.forward_flops(model, x) == tiny_lm_flops()
    assert all(p.grad is None for p in model.parameters())


def test_forward_flops_of_the_exported_graph_the_evaluator_runs(tmp_path: Path) -> None:
    """The evaluation process counts FLOPs on the aten graph (GraphModel), never on the
    agent's module: the count must be the same."""
    model = TinyLM()
    export_model(model, tmp_path / "model.pt", B, T, "cpu")
    graph = GraphModel(tmp_path / "model.pt", "cpu")
    x = torch.randint(0, V, (B, T))
    assert mfu.forward_flops(graph, x) == tiny_lm_flops()
    assert mfu.forward_flops_per_token(graph, x) == tiny_lm_flops() / (B * T)


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
    ("NVIDIA H100 80GB HBM3", torch.float32, 66.9),
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H100 NVL", "fp16", 835.0),
    ("NVIDIA H200", torch.bfloat16, 989.4),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100-PCIE-40GB", "tf32", 156.0),
    ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.0),
    ("NVIDIA A10G", "bf16", 70.0),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
    ("NVIDIA GeForce RTX 3090", "fp16", 71.0),
    ("Tesla V100-SXM2-16GB", "fp16", 125.0),
    ("Tesla T4", "fp32", 8.1),
])
def test_peak_flops_of_known_gpus(name: str, dtype: object, tflops: float) -> None:
    assert mfu.peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name, dtype", [
    ("NVIDIA Future GPU 9000", "bf16"),  # not in the table
    ("cpu", "fp32"),
    ("", "bf16"),
    ("Tesla T4", "bf16"),  # no bf16 tensor cores: no honest peak
    ("Tesla V100-PCIE-32GB", "tf32"),
])
def test_peak_flops_is_none_where_no_figure_would_be_honest(name: str, dtype: str) -> None:
    assert mfu.peak_flops(name, dtype) is None


def test_specific_variants_win_over_their_family() -> None:
    assert mfu.gpu_label("NVIDIA L40S") == "L40S"
    assert mfu.gpu_label("NVIDIA L40") == "L40"
    assert mfu.gpu_label("NVIDIA L4") == "L4"
    assert mfu.gpu_label("NVIDIA A10") == "A10"
    assert mfu.gpu_label("NVIDIA H200 NVL") == "H200 NVL"
    assert mfu.gpu_label("NVIDIA Future GPU 9000") is None


def test_unknown_dtype_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        mfu.peak_flops("NVIDIA H100 PCIe", "int8")


def test_mfu_is_three_forward_passes_per_token_over_the_peak() -> None:
    # 1 GFLOP forward per token, 100k tokens in 2 s: 3e9 * 1e5 / 2 = 1.5e14 FLOP/s of 1e15
    assert mfu.mfu(1e9, 100_000, 2.0, 1e15) == pytest.approx(0.15)
    assert mfu.mfu(0.0, 100_000, 2.0, 1e15) == 0.0
    with pytest.raises(ValueError):
        mfu.mfu(1e9, 100_000, 0.0, 1e15)
    with pytest.raises(ValueError):
        mfu.mfu(1e9, 100_000, 1.0, 0.0)


def test_of_training_is_none_where_no_value_would_be_honest() -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    assert mfu.of_training(1e9, h100, 100_000, 2.0) == pytest.approx(
        3e9 * 100_000 / 2.0 / 989.4e12)
    assert mfu.of_training(1e9, h100, 100_000, 2.0, "fp32") == pytest.approx(
        3e9 * 100_000 / 2.0 / 66.9e12)
    assert mfu.of_training(None, h100, 100_000, 2.0) is None  # the evaluator counted nothing
    assert mfu.of_training(1e9, None, 100_000, 2.0) is None  # a CPU
    assert mfu.of_training(1e9, "NVIDIA Future GPU 9000", 100_000, 2.0) is None
    assert mfu.of_training(1e9, h100, 0, 0.0) is None  # no training time


def test_device_name_is_none_off_cuda() -> None:
    assert mfu.device_name("cpu") is None and mfu.device_name("mps") is None


def _metrics(**fields: object) -> Metrics:
    base: dict[str, object] = dict(status=RunStatus.ok, val_bpb=2.0, val_loss=1.4, steps=10,
                                   train_tokens=1000, train_seconds=1.0, total_seconds=2.0)
    return Metrics.model_validate({**base, **fields})


def test_the_metrics_line_shows_mfu_on_a_gpu_and_nothing_on_a_cpu() -> None:
    gpu = _metrics(device="cuda", device_name="NVIDIA H100 80GB HBM3", mfu=0.4127,
                   flops_per_token=2.5e7)
    assert "MFU 41.3% (NVIDIA H100 80GB HBM3)" in report.metrics_text(gpu)
    unknown = _metrics(device="cuda", device_name="NVIDIA Future GPU 9000")
    assert "MFU n/a (no peak FLOP/s known for NVIDIA Future GPU 9000)" in (
        report.metrics_text(unknown))
    assert "MFU" not in report.metrics_text(_metrics(device="cpu"))


def test_metrics_without_the_new_fields_still_read() -> None:
    """metrics.json files written before MFU existed load with the fields empty."""
    old = _metrics(device="cpu").model_dump()
    for key in ("mfu", "flops_per_token", "device_name"):
        old.pop(key)
    m = Metrics.model_validate(old)
    assert m.mfu is None and m.flops_per_token is None and m.device_name is None


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A workspace whose one run measured a baseline on a known and an unknown GPU, and a
    candidate on a CPU."""
    from autoresearch.models import ExperimentStatus
    from autoresearch.store import Store

    store = Store(tmp_path / "results.db")
    run = store.add_run(agent="mock", model="m", budget_kind="time", budget_amount=60,
                        seeds="[0, 1]", device="cuda", dataset="x", dataset_sha256="ab" * 32,
                        experiments_planned=1, branch="run/1", baseline_commit="b0",
                        champion_commit="b0")
    assert run.id is not None
    gpu = store.add_experiment(run_id=run.id, kind="baseline", title="baseline",
                               status=ExperimentStatus.kept, val_bpb=2.0, commit="b0")
    cpu = store.add_experiment(run_id=run.id, kind="candidate", seq=1, title="on a CPU",
                               status=ExperimentStatus.discarded, val_bpb=2.1, commit="c1",
                               parent_commit="b0")
    assert gpu.id is not None and cpu.id is not None
    store.add_measurement(gpu.id, _metrics(seed=0, device="cuda", mfu=0.4127,
                                           device_name="NVIDIA H100 80GB HBM3",
                                           flops_per_token=2.5e7))
    store.add_measurement(gpu.id, _metrics(seed=1, device="cuda",
                                           device_name="NVIDIA Future GPU 9000",
                                           flops_per_token=2.5e7))
    store.add_measurement(cpu.id, _metrics(seed=0, device="cpu"))
    store.close()
    return tmp_path


def test_show_prints_mfu_per_measurement_on_a_gpu(recorded: Path) -> None:
    from typer.testing import CliRunner

    from autoresearch.cli import app

    result = CliRunner().invoke(app, ["--workspace", str(recorded), "show", "1"])
    assert result.exit_code == 0, result.output
    seeds = [ln for ln in result.stdout.splitlines() if ln.strip().startswith("seed ")]
    assert "MFU 41.3% (NVIDIA H100 80GB HBM3)" in seeds[0]
    assert "MFU n/a (no peak FLOP/s known for NVIDIA Future GPU 9000)" in seeds[1]
    shown = json.loads(CliRunner().invoke(
        app, ["--workspace", str(recorded), "show", "1", "--json"]).stdout)
    assert [m["mfu"] for m in shown["measurements"]] == [0.4127, None]
    assert shown["measurements"][0]["flops_per_token"] == 2.5e7
    result = CliRunner().invoke(app, ["--workspace", str(recorded), "show", "2"])
    assert result.exit_code == 0 and "MFU" not in result.stdout


def test_the_dashboard_shows_an_mfu_column_for_gpu_measurements(recorded: Path) -> None:
    from fastapi.testclient import TestClient

    from autoresearch.dashboard.app import create_app

    client = TestClient(create_app(recorded, recorded / "results.db"))
    page = client.get("/experiments/1")
    assert page.status_code == 200
    assert '<th class="num">MFU</th>' in page.text
    assert ">41.3%</td>" in page.text and 'title="NVIDIA Future GPU 9000">n/a</td>' in page.text
    assert client.get("/experiments/1.json").json()["measurements"][0]["mfu"] == 0.4127
    cpu = client.get("/experiments/2")
    assert cpu.status_code == 200 and ">MFU<" not in cpu.text
