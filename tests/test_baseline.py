"""baseline/train.py, the file the agent improves, measured through the real runner.

Seconds of budget on generated text: the baseline learns, stops on its own under a time
budget, is bit-reproducible under a token budget, and differs between seeds. Its figures on
tiny-shakespeare come from benchmarks/train_speed.py.
"""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autoresearch import runner
from autoresearch.data import PreparedData
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import RunStatus

pytestmark = pytest.mark.slow  # the real baseline trains

BASELINE = Path(__file__).resolve().parents[1] / "baseline"
TOKENS = Budget(kind="tokens", amount=200 * 1024)  # 200 steps of the CPU preset, ~8 s
UNIGRAM_BITS = 4.31  # entropy of the generated corpus's byte frequencies


def measure(data: PreparedData, out: Path, budget: Budget = TOKENS, seed: int = 0) -> Metrics:
    return runner.measure(runner.Job(source=BASELINE, data=data.path, budget=budget, seed=seed,
                                     device="cpu", out_dir=out))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory, prepared_data: PreparedData,
          ) -> list[Metrics]:
    """Seeds 0 and 1, side by side (one thread each)."""
    out = tmp_path_factory.mktemp("baseline")
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda seed: measure(prepared_data, out / str(seed), seed=seed),
                             (0, 1)))


def test_the_baseline_learns_within_a_small_token_budget(seeds: list[Metrics]) -> None:
    for m in seeds:
        assert m.status == RunStatus.ok, m.error
        assert m.val_bpb is not None and m.val_bpb < UNIGRAM_BITS - 2.0
        assert m.causal_ok is True
        assert m.train_tokens == TOKENS.amount and m.steps == 200


def test_a_token_budget_run_is_bit_identical_and_seeds_differ(
    seeds: list[Metrics], prepared_data: PreparedData, tmp_path: Path,
) -> None:
    again = measure(prepared_data, tmp_path / "again")
    assert (again.val_bpb, again.val_loss) == (seeds[0].val_bpb, seeds[0].val_loss)
    assert seeds[1].val_bpb != seeds[0].val_bpb


def test_the_baseline_stops_on_its_own_under_a_time_budget(
    prepared_data: PreparedData, tmp_path: Path,
) -> None:
    m = measure(prepared_data, tmp_path, budget=Budget(kind="time", amount=3.0))
    assert m.status == RunStatus.ok, m.error  # not overtime: it stopped by itself
    # it plans by the clock: it uses the whole budget, then stops within a step or two
    assert 3.0 <= m.train_seconds <= 4.0
    assert m.steps > 10 and m.val_bpb is not None


def test_the_knobs_are_plain_constants_with_a_preset_per_device() -> None:
    tree = ast.parse((BASELINE / "train.py").read_text(encoding="utf-8"))
    presets = {
        node.targets[0].id: {kw.arg for kw in node.value.keywords}
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "dict"
    }
    assert set(presets) >= {"CPU", "CUDA"} and presets["CPU"] == presets["CUDA"]
    assert {"N_LAYER", "N_EMBD", "LR", "BF16", "COMPILE"} <= presets["CPU"]
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "train" in functions
