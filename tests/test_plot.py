"""`autoresearch plot`: a run's progress as one figure, kept experiments labelled."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch import plot
from autoresearch.cli import app
from autoresearch.curves import Point
from autoresearch.models import ExperimentStatus as ES
from autoresearch.store import Store


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A small recorded run: baseline, two keeps, a discard, a crash, and one curve."""
    store = Store(tmp_path / "results.db")
    run = store.add_run(agent="mock", budget_kind="tokens", budget_amount=1000, seeds="[0, 1]",
                        device="cpu", dataset="x", dataset_sha256="x", experiments_planned=4,
                        branch="run/1", baseline_commit="b0", champion_commit="c2",
                        noise_std=0.02)
    assert run.id is not None
    rows = [("baseline", "baseline", ES.kept, 3.00, "b0"),
            ("candidate", "Raise the learning rate", ES.kept, 2.80, "c1"),
            ("candidate", "Lower the learning rate", ES.discarded, 2.95, "c2x"),
            ("candidate", "Crash on purpose", ES.crashed, None, "c3"),
            ("candidate", "Deeper model", ES.kept, 2.60, "c2")]
    for kind, title, status, bpb, commit in rows:
        # the discard was compared with the champion re-measured next to it (2.70)
        champ = 2.70 if status == ES.discarded else None
        e = store.add_experiment(run_id=run.id, kind=kind, title=title, status=status,
                                 val_bpb=bpb, commit=commit, reason="r", champion_bpb=champ)
        assert e.id is not None
        folder = tmp_path / "experiments" / str(e.id) / "seed-0"
        folder.mkdir(parents=True)
        (folder / "curve.jsonl").write_text("".join(
            Point(i * 0.1, i * 100, i, {"loss": 6.0 - i * (0.1 if bpb else 0.01)}).line() + "\n"
            for i in range(20)))
    store.update_run(run.id, champion_experiment_id=5)
    store.close()
    return tmp_path


def test_the_progress_figure_labels_every_kept_experiment(ws: Path) -> None:
    store = Store(ws / "results.db")
    run = store.runs()[0]
    fig = plot.progress_figure(store, run, ws)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["#2 Raise the learning rate", "#5 Deeper model"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "baseline 3.0000 ± 0.0200"
    assert {"running best", "discarded (1)", "kept (2)", "failed (1)"} <= set(legend)
    assert "champion on the same seeds" in legend
    champion_marks = next(c for c in ax.collections
                          if c.get_label() == "champion on the same seeds")
    assert champion_marks.get_offsets().tolist() == [[2.0, 2.70]]
    assert "2 kept" in ax.get_title(loc="left")


def test_plot_writes_a_png_and_overlays_chosen_curves(ws: Path) -> None:
    out = ws / "progress.png"
    result = CliRunner().invoke(app, ["--workspace", str(ws), "plot", "--out", str(out)])
    assert result.exit_code == 0, result.output
    width, height = _png_size(out)
    assert (width, height) == (1210, 605) and 30_000 < out.stat().st_size < 500_000
    both = ws / "both.svg"
    result = CliRunner().invoke(app, ["--workspace", str(ws), "plot", "--out", str(both),
                                      "--curves", "2,3", "--curves", "5"])
    assert result.exit_code == 0, result.output
    svg = both.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    store = Store(ws / "results.db")
    fig = plot.progress_figure(store, store.runs()[0], ws, [2, 3, 5])
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["#2 Raise the learning rate seed 0", "#3 Lower the learning rate seed 0",
                      "#5 Deeper model seed 0"]


@pytest.mark.parametrize("args, message", [
    (["plot", "--run", "7"], "no run 7"),
    (["plot", "--curves", "99"], "no experiment 99"),
    (["plot", "--curves", "x"], "experiment ids"),
    (["plot", "--out", "p.pdf"], ".png or .svg"),
])
def test_plot_bad_input_is_exit_2(ws: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["--workspace", str(ws), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_run_with_nothing_measured_still_plots(tmp_path: Path) -> None:
    store = Store(tmp_path / "results.db")
    store.add_run(agent="mock", budget_kind="tokens", budget_amount=1, seeds=json.dumps([0]),
                  device="cpu", dataset="x", dataset_sha256="x", experiments_planned=1,
                  branch="run/1", baseline_commit="a", champion_commit="a")
    fig = plot.progress_figure(store, store.runs()[0], tmp_path)
    assert "nothing measured yet" in [t.get_text() for t in fig.axes[0].texts]


def test_a_curve_of_one_logged_point_is_drawn_as_a_dot() -> None:
    # under a short budget train() may log once: a line through one point would not show
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    plot.curves_axes(ax, [("seed 0", [(51200.0, 3.15)], {}),
                          ("seed 1", [(0.0, 5.5), (51200.0, 3.2)], {})])
    one, two = ax.get_lines()
    assert one.get_marker() == "o" and two.get_marker() in ("None", None, "")
