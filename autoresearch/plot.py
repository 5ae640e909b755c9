"""Figures of a run: its progress (every experiment, the running best, the baseline band) and
training-loss curves. matplotlib's object API only (a bare Figure: no pyplot, no window, no
global state), so the dashboard can draw from several threads; PNG or SVG by the extension.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from autoresearch import curves
from autoresearch.errors import UsageError
from autoresearch.models import ExperimentStatus
from autoresearch.store import Experiment, Run, Store

ES = ExperimentStatus
FAILED = {ES.rejected, ES.crashed, ES.timeout, ES.invalid, ES.interrupted, ES.superseded}
KEPT_COLOR = "#1a7f37"
BEST_COLOR = "#0b5cad"
FAIL_COLOR = "#c62828"
GREY = "#9aa0a6"
CURVE_COLORS = ("#0b5cad", "#e8710a", "#1a7f37", "#9334e6", "#c62828", "#12a4af", "#795548")
FORMATS = (".png", ".svg")


def _label(text: str, limit: int = 38) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def progress_axes(ax: Axes, run: Run, exps: Sequence[Experiment]) -> None:
    """Every experiment of ``run`` in order on ``ax``."""
    base = next((e for e in exps if e.kind == "baseline"), None)
    cands = [e for e in exps if e.kind == "candidate"]
    valued = [e.val_bpb for e in exps if e.val_bpb is not None
              and e.kind not in ("replay", "report")]
    # what each decided candidate was compared with: the champion on the same seeds (under a
    # time budget, re-measured alongside it), which can sit far from the running best
    paired = [e for e in cands if e.status in (ES.kept, ES.discarded)
              and e.val_bpb is not None and e.champion_bpb is not None]
    valued += [e.champion_bpb for e in paired if e.champion_bpb is not None]
    if base is not None and base.val_bpb is not None:
        noise = run.noise_std or 0.0
        ax.axhspan(base.val_bpb - noise, base.val_bpb + noise, color=BEST_COLOR, alpha=0.10,
                   lw=0, label=f"baseline {base.val_bpb:.4f} ± {noise:.4f}")
        ax.axhline(base.val_bpb, color=BEST_COLOR, lw=0.8, ls=":", alpha=0.7)
    if not valued:
        ax.text(0.5, 0.5, "nothing measured yet", transform=ax.transAxes, ha="center",
                va="center", color=GREY, fontsize=12)
    lo = min(valued, default=0.0)
    hi = max(valued, default=1.0)
    pad = (hi - lo) * 0.08 or 0.05
    top = hi + pad  # where failed experiments are marked
    xs = {e.id: i for i, e in enumerate(cands, start=1)}
    # running best: the champion's value, a step at every keep
    if base is not None and base.val_bpb is not None:
        steps_x, steps_y = [0], [base.val_bpb]
        for e in cands:
            if e.status == ES.kept and e.val_bpb is not None:
                steps_x.append(xs[e.id])
                steps_y.append(e.val_bpb)
        steps_x.append(max(len(cands), 1))
        steps_y.append(steps_y[-1])
        ax.step(steps_x, steps_y, where="post", color=BEST_COLOR, lw=2, label="running best")
        ax.scatter([0], [base.val_bpb], s=60, color=BEST_COLOR, zorder=4, marker="D")
    groups: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("discarded", "kept", "failed", "in flight")}
    for e in cands:
        x = xs[e.id]
        if e.status in FAILED:
            groups["failed"][0].append(x)
            groups["failed"][1].append(top)
        elif e.val_bpb is None:
            groups["in flight"][0].append(x)
            groups["in flight"][1].append(top)
        else:
            key = "kept" if e.status == ES.kept else (
                "discarded" if e.status == ES.discarded else "in flight")
            groups[key][0].append(x)
            groups[key][1].append(e.val_bpb)
    style = {
        "discarded": dict(color=GREY, s=28, marker="o", zorder=3),
        "kept": dict(color=KEPT_COLOR, s=80, marker="o", zorder=5, edgecolor="white"),
        "failed": dict(color=FAIL_COLOR, s=36, marker="x", zorder=3),
        "in flight": dict(facecolor="none", edgecolor=BEST_COLOR, s=50, marker="o", zorder=3),
    }
    for key, (gx, gy) in groups.items():
        if gx:
            ax.scatter(gx, gy, label=f"{key} ({len(gx)})", **style[key])  # type: ignore[arg-type]
    if paired:
        px = [xs[e.id] for e in paired]
        mine = [float(e.val_bpb or 0.0) for e in paired]
        theirs = [float(e.champion_bpb or 0.0) for e in paired]
        ax.vlines(px, mine, theirs, colors=GREY, lw=0.8, alpha=0.6, zorder=2)
        ax.scatter(px, theirs, s=90, marker="_", linewidths=1.6, color="#3c4043", zorder=3,
                   label="champion on the same seeds")
    for n, e in enumerate(e for e in cands if e.status == ES.kept and e.val_bpb is not None):
        ax.annotate(f"#{e.id} {_label(e.title)}", (xs[e.id], e.val_bpb),
                    xytext=(8, 10 if n % 2 == 0 else -14), textcoords="offset points",
                    fontsize=8.5, color=KEPT_COLOR, fontweight="bold")
    if valued:
        ax.set_ylim(lo - pad, top + pad * 0.6)
    ax.set_xlim(-0.5, max(len(cands), 1) + 0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment (in order; 0 = baseline)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(True, alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)


def curves_axes(ax: Axes, lines: Sequence[tuple[str, list[tuple[float, float]], dict[str, object]]],
                title: str = "training loss") -> None:
    """Loss curves on ``ax``: (label, [(tokens, loss)], line style)."""
    for label, pairs, style in lines:
        if pairs:
            xs, ys = zip(*pairs, strict=True)
            # a curve of one logged point (a short budget) is a dot, not an invisible line
            marker = {"marker": "o", "ms": 4} if len(pairs) == 1 else {}
            ax.plot(xs, ys, label=label, lw=1.5, **(marker | style))  # type: ignore[arg-type]
    if not any(pairs for _, pairs, _ in lines):
        ax.text(0.5, 0.5, "no training curves recorded", transform=ax.transAxes, ha="center",
                va="center", color=GREY, fontsize=12)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (as train() logged it)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.25)
    if any(pairs for _, pairs, _ in lines):
        ax.legend(fontsize=8, framealpha=0.9)


def experiment_lines(workspace: Path, exps: Sequence[Experiment], *,
                     dashed: bool = False) -> list[tuple[str, list[tuple[float, float]],
                                                         dict[str, object]]]:
    """One line per seed of each experiment's loss curve."""
    out: list[tuple[str, list[tuple[float, float]], dict[str, object]]] = []
    for i, e in enumerate(exps):
        assert e.id is not None
        color = CURVE_COLORS[i % len(CURVE_COLORS)]
        found = curves.experiment_curves(workspace / "experiments" / str(e.id))
        for j, (seed, points) in enumerate(found.items()):
            key = curves.loss_key(points)
            pairs = curves.series(points, key) if key else []
            label = f"#{e.id} {_label(e.title, 30)} seed {seed}"
            style: dict[str, object] = {"color": color, "alpha": 1.0 if j == 0 else 0.55}
            if dashed:
                style["ls"] = "--"
            out.append((label, pairs, style))
    return out


def _title(store: Store, run: Run, exps: Sequence[Experiment]) -> str:
    kept = sum(e.kind == "candidate" and e.status == ES.kept for e in exps)
    n = sum(e.kind == "candidate" for e in exps)
    base = next((e for e in exps if e.kind == "baseline"), None)
    champ = next((e for e in exps if e.id == run.champion_experiment_id), None)
    gain = ""
    if base and champ and base.val_bpb is not None and champ.val_bpb is not None:
        gain = f" · baseline {base.val_bpb:.4f} → champion {champ.val_bpb:.4f}"
    tag = f" ({run.tag})" if run.tag else ""
    return f"run {run.id}{tag}: {n} experiments, {kept} kept{gain}"


def progress_figure(store: Store, run: Run, workspace: Path | None = None,
                    curve_ids: Sequence[int] = ()) -> Figure:
    """The run's progress; with ``curve_ids``, their loss curves in a second panel below."""
    assert run.id is not None
    exps = store.experiments(run_id=run.id)
    chosen = []
    for i in curve_ids:
        e = store.get_experiment(i)
        if e is None:
            raise UsageError(f"no experiment {i}")
        chosen.append(e)
    fig = Figure(figsize=(11, 8.5 if chosen else 5.5), dpi=110, layout="constrained")
    if chosen:
        ax, cax = fig.subplots(2, 1, height_ratios=[3, 2])
    else:
        ax, cax = fig.subplots(1, 1), None
    progress_axes(ax, run, exps)
    ax.set_title(_title(store, run, exps), fontsize=12, loc="left")
    if cax is not None:
        assert workspace is not None
        curves_axes(cax, experiment_lines(workspace, chosen),
                    title="training loss of " + ", ".join(f"#{e.id}" for e in chosen))
    return fig


def curve_figure(workspace: Path, exp: Experiment, champion: Experiment | None) -> Figure:
    """An experiment's loss curve per seed, against the champion's (dashed)."""
    fig = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    ax = fig.subplots(1, 1)
    lines = experiment_lines(workspace, [exp])
    if champion is not None and champion.id != exp.id:
        lines += [(f"champion {label}", pairs, {**style, "color": GREY})
                  for label, pairs, style in experiment_lines(workspace, [champion], dashed=True)]
    curves_axes(ax, lines, title=f"training loss: #{exp.id} per seed"
                + (f" vs champion #{champion.id}" if champion and champion.id != exp.id else ""))
    return fig


def to_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


def save(fig: Figure, path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"{path}: the figure is written as .png or .svg, by its extension")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    fig.savefig(path, format=path.suffix.lower().lstrip("."))
