"""Training curves: every run.log scalar recorded per measurement, bounded, shown by `show`."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
from conftest import bigram_corpus, brokered, hello_run
from typer.testing import CliRunner

from autoresearch import curves, data, runner
from autoresearch.agents.prompts import variables
from autoresearch.cli import app
from autoresearch.metrics import Budget
from autoresearch.models import Context

LOOP_SOURCE = Path(__file__).parent / "loop_source"


def test_run_log_records_numeric_scalars_as_json_lines(tmp_path: Path) -> None:
    budget = Budget(kind="tokens", amount=10_000)
    with brokered(np.zeros(1000, np.uint8), budget, tmp_path) as (channel, _):
        run = hello_run(channel, budget)
        run.curve = curves.CurveWriter(tmp_path / "curve.jsonl")
        run.get_batch(2, 8)
        run.log(step=0, loss=5.5, lr=1e-3, note="warmup", flag=True)
        run.get_batch(2, 8)
        run.log(step=1, loss=np.float32(5.25))
        run.finish()
    lines = [json.loads(x) for x in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert [p["scalars"] for p in lines] == [{"step": 0, "loss": 5.5, "lr": 1e-3, "flag": 1},
                                             {"step": 1, "loss": 5.25}]  # not the text
    assert [(p["tokens"], p["batches"]) for p in lines] == [(16, 1), (32, 2)]


def test_a_long_run_stays_bounded_evenly_spaced_and_keeps_its_end(tmp_path: Path) -> None:
    path = tmp_path / "curve.jsonl"
    writer = curves.CurveWriter(path, max_points=100)
    for i in range(10_007):
        writer.add(i * 0.01, i * 64, i, {"step": i, "loss": 10 - i / 1000})
    writer.close()
    points = curves.read(path)
    assert 50 <= len(points) <= 101
    steps = [int(p.scalars["step"]) for p in points]
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
    assert steps[0] == 0 and steps[-1] == 10_006  # the start and the very end
    assert len(gaps) == 1  # evenly spaced (the very last point may come sooner)
    assert path.stat().st_size < 20_000


def test_reading_skips_what_is_not_a_valid_finite_point(tmp_path: Path) -> None:
    path = tmp_path / "curve.jsonl"
    good = curves.Point(1.0, 64, 1, {"loss": 3.0}).line()
    path.write_text("\n".join([
        good, "not json", "[1, 2]", '{"scalars": "x"}',
        '{"seconds": 1, "tokens": 5, "batches": 1, "scalars": {"loss": NaN, "lr": Infinity}}',
        '{"seconds": 1, "tokens": 5, "batches": 1, "scalars": {"bad key!": 1, "loss": "3"}}',
        '{"seconds": 1, "tokens": -5, "batches": 1, "scalars": {"loss": 1}}', good]))
    points = curves.read(path)
    assert [p.scalars for p in points] == [{"loss": 3.0}, {"loss": 3.0}, {"loss": 3.0}]
    assert curves.read(tmp_path / "missing.jsonl") == []
    assert all(math.isfinite(v) for p in points for v in p.scalars.values())


def test_a_measurement_writes_its_curve_beside_run_log_and_show_summarises_it(
        tmp_path: Path) -> None:
    prepared = data.prepare(str(bigram_corpus(tmp_path / "corpus.txt")), cache=tmp_path / "c")
    out = tmp_path / "experiments" / "1" / "seed-0"
    m = runner.measure(runner.Job(source=LOOP_SOURCE, data=prepared.path,
                                  budget=Budget(kind="tokens", amount=8192), seed=0,
                                  device="cpu", out_dir=out))
    assert m.ok, m.error
    assert (out / "run.log").is_file()
    points = curves.read(out / "curve.jsonl")
    assert len(points) >= 5 and curves.loss_key(points) == "loss"
    assert points[-1].tokens <= 8192 and points[0].scalars["step"] == 0
    text = curves.summary(points)
    assert "loss" in text and "→" in text


def test_show_prints_a_curve_summary_and_the_agent_sees_compact_curves(tmp_path: Path) -> None:
    from test_loop import RAISE_LR, loop_args, script

    from autoresearch.workspace import init_workspace

    root = tmp_path / "ws"
    init_workspace(root)
    (root / "baseline" / "train.py").write_text((LOOP_SOURCE / "train.py").read_text())
    bigram_corpus(tmp_path / "corpus.txt")
    s = script(tmp_path / "s.jsonl", [RAISE_LR])
    result = CliRunner().invoke(app, loop_args(root, "--budget", "1", "--script", str(s)),
                                env={"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    shown = CliRunner().invoke(app, ["--workspace", str(root), "show", "2"])
    assert shown.exit_code == 0, shown.output
    assert "curves" in shown.stdout and "seed 0:" in shown.stdout and "loss" in shown.stdout
    as_json = CliRunner().invoke(app, ["--workspace", str(root), "show", "2", "--json"])
    loss = json.loads(as_json.stdout)["curves"]["0"]["loss"]
    assert 5 <= len(loss) <= 32 and loss[-1][1] < loss[0][1]  # the raised lr learns

    from autoresearch.store import Store

    store = Store(root / "results.db")
    exps = store.experiments()
    ctx = curves.context_curves(exps, 2, lambda i: root / "experiments" / str(i), [0, 1])
    assert list(ctx) == ["champion #2"]  # the last experiment is the champion here
    assert 5 <= len(ctx["champion #2"]) <= 24
    text = variables(Context(files={"train.py": ""}, curves=ctx))["curves"]
    assert text.startswith("## Training loss curves") and "champion #2:" in text
    assert variables(Context(files={"train.py": ""}))["curves"] == ""
