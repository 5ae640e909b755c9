"""Training curves: every ``run.log(...)`` scalar of a measurement, as bounded JSONL.

The training process writes one JSON line per ``run.log`` call (``CurveWriter``) into its
scratch folder; the runner copies the lines it can validate (``collect``) to
``out_dir/curve.jsonl``, beside run.log. The training process runs the agent's code, so a
curve is display data only (``show``, ``plot``, the dashboard, the agent's context): never a
metric, never read by a decision.

Bounded for long runs: the writer keeps every call until ``MAX_POINTS``, then drops every other
point and from there on keeps every 2nd call (then 4th, ...), so a curve never holds more than
``MAX_POINTS`` evenly spaced points plus the latest one; readers cap lines and bytes again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CURVE_FILE = "curve.jsonl"
MAX_POINTS = 1000  # points a curve keeps (plus the latest call)
MAX_KEYS = 16  # scalars kept per point
MAX_BYTES = 512 * 1024  # bytes read from a curve file
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,39}")
_SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Point:
    """One ``run.log`` call: the harness's clock and counters, and the numbers train() gave."""

    seconds: float  # on the budget clock
    tokens: int  # tokens served by get_batch so far
    batches: int  # batches served so far
    scalars: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return json.dumps({"seconds": round(self.seconds, 3), "tokens": self.tokens,
                           "batches": self.batches, "scalars": self.scalars},
                          separators=(",", ":"))


def clean_scalars(scalars: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric values under plain names, at most MAX_KEYS of them."""
    out: dict[str, float] = {}
    for key, value in scalars.items():
        if len(out) >= MAX_KEYS:
            break
        if not isinstance(key, str) or not _KEY.fullmatch(key) or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


class CurveWriter:
    """Appends points to ``path``; thins them in place when there are too many."""

    def __init__(self, path: Path, max_points: int = MAX_POINTS) -> None:
        self.path, self.max_points = path, max(2, max_points)
        self.kept: list[Point] = []
        self.stride = 1  # keep every stride-th call
        self.calls = 0
        self.latest: Point | None = None  # the newest call, if the stride skipped it
        self._file: IO[str] | None = None
        self.broken = False

    def add(self, seconds: float, tokens: int, batches: int, scalars: Mapping[str, Any]) -> None:
        values = clean_scalars(scalars)
        if not values or self.broken:
            return
        point = Point(float(seconds), int(tokens), int(batches), values)
        self.calls += 1
        if (self.calls - 1) % self.stride:
            self.latest = point
            return
        self.latest = None
        self.kept.append(point)
        try:  # a curve that cannot be written must not end the training
            if len(self.kept) > self.max_points:
                self.kept = self.kept[::2]
                self.stride *= 2
                self._rewrite()
            else:
                self._append(point)
        except OSError:
            self.broken = True

    def close(self) -> None:
        """Write the newest point if the stride skipped it (the end of the curve matters)."""
        if self.latest is not None and not self.broken:
            with contextlib.suppress(OSError):
                self._append(self.latest)
            self.latest = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, point: Point) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(point.line() + "\n")
        self._file.flush()

    def _rewrite(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(p.line() + "\n" for p in self.kept), encoding="utf-8")
        os.replace(tmp, self.path)


def parse(text: str, max_points: int = MAX_POINTS + 1) -> list[Point]:
    """The valid points of a curve file's text, in order; anything else is skipped."""
    points: list[Point] = []
    for line in text[:MAX_BYTES].splitlines():
        if len(points) >= max_points:
            break
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("scalars"), dict):
            continue
        try:
            seconds, tokens = float(obj.get("seconds", 0.0)), int(obj.get("tokens", 0))
            batches = int(obj.get("batches", 0))
        except (TypeError, ValueError, OverflowError):
            continue
        values = clean_scalars(obj["scalars"])
        if values and math.isfinite(seconds) and tokens >= 0 and batches >= 0:
            points.append(Point(seconds, tokens, batches, values))
    return points


def read(path: Path) -> list[Point]:
    """A curve file's points; [] when there is none or it cannot be read."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return parse(f.read(MAX_BYTES))
    except OSError:
        return []


def collect(src: Path, dst: Path) -> int:
    """Copy the valid points of the training process's curve to ``dst`` (the runner's side);
    returns how many. A missing or empty curve removes a stale ``dst``."""
    points = read(src)
    if not points:
        dst.unlink(missing_ok=True)
        return 0
    dst.write_text("".join(p.line() + "\n" for p in points), encoding="utf-8")
    return len(points)


# -- reading curves back -------------------------------------------------------------------------


def experiment_curves(exp_dir: Path) -> dict[int, list[Point]]:
    """seed -> points, for every seed folder of an experiment that has a curve."""
    out: dict[int, list[Point]] = {}
    for path in sorted(exp_dir.glob(f"seed-*/{CURVE_FILE}")):
        try:
            seed = int(path.parent.name.removeprefix("seed-"))
        except ValueError:
            continue
        points = read(path)
        if points:
            out[seed] = points
    return dict(sorted(out.items()))


def loss_key(points: Sequence[Point]) -> str | None:
    """The scalar to draw as the training loss: ``loss``, else the first name with "loss"."""
    names: dict[str, None] = {}
    for p in points:
        names.update(dict.fromkeys(p.scalars))
    if "loss" in names:
        return "loss"
    return next((n for n in names if "loss" in n.lower()), None)


def series(points: Sequence[Point], key: str, x: str = "tokens") -> list[tuple[float, float]]:
    """(x, value) pairs of one scalar; x is tokens, seconds, batches or another scalar."""
    out = []
    for p in points:
        if key not in p.scalars:
            continue
        xv = {"tokens": p.tokens, "seconds": p.seconds, "batches": p.batches}.get(x)
        xv = p.scalars.get(x) if xv is None else xv
        if xv is not None:
            out.append((float(xv), p.scalars[key]))
    return out


def thin(pairs: Sequence[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    """At most ``n`` evenly spaced pairs, the first and the last included."""
    if len(pairs) <= n:
        return list(pairs)
    if n <= 1:
        return [pairs[-1]]
    idx = sorted({round(i * (len(pairs) - 1) / (n - 1)) for i in range(n)})
    return [pairs[i] for i in idx]


def sparkline(values: Sequence[float], width: int = 24) -> str:
    vals = [v for _, v in thin([(0.0, v) for v in values], width)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(_SPARK[min(7, int((v - lo) / span * 7.999))] for v in vals)


def _num(v: float) -> str:
    if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4g}"


def summary(points: Sequence[Point]) -> str:
    """One line per scalar: first -> last, min, and a sparkline over tokens."""
    if not points:
        return "no curve (train() called run.log with no numbers)"
    first, last = points[0], points[-1]
    head = (f"{len(points)} points, {first.tokens:,}–{last.tokens:,} tokens, "
            f"{first.seconds:.1f}–{last.seconds:.1f} s")
    names: dict[str, None] = {}
    for p in points:
        names.update(dict.fromkeys(p.scalars))
    lines = [head]
    for name in list(names)[:6]:
        vals = [v for _, v in series(points, name)]
        if not vals:
            continue
        low = min(vals)
        lines.append(f"{name:>8} {_num(vals[0])} → {_num(vals[-1])} (min {_num(low)})  "
                     f"{sparkline(vals)}")
    return "\n".join(lines)


def compact_loss(points: Sequence[Point], n: int = 24) -> list[tuple[int, float]]:
    """A few dozen (tokens, loss) points of a curve, for the agent's context."""
    key = loss_key(points)
    if key is None:
        return []
    return [(int(x), round(y, 4)) for x, y in thin(series(points, key), n)]


def first_seed_curve(exp_dir: Path, seeds: Sequence[int]) -> list[Point]:
    """The curve of the first of ``seeds`` an experiment has one for."""
    found = experiment_curves(exp_dir)
    for seed in seeds:
        if seed in found:
            return found[seed]
    return next(iter(found.values()), [])


def context_curves(exps: Sequence[Any], champion_id: int | None,
                   exp_dir: Callable[[int], Path], seeds: Sequence[int],
                   n: int = 24) -> dict[str, list[tuple[int, float]]]:
    """label -> (tokens, loss) of the champion's and the last candidate's first-seed curves,
    for the agent's context (``exps`` are store experiments, oldest first)."""
    champion = next((e for e in exps if e.id == champion_id), None)
    last = next((e for e in reversed(exps) if e.kind == "candidate" and e.commit), None)
    out: dict[str, list[tuple[int, float]]] = {}
    for e, label in ((champion, "champion"), (last, "last experiment")):
        if e is None or e.id is None or (label != "champion" and e.id == champion_id):
            continue
        points = compact_loss(first_seed_curve(exp_dir(e.id), seeds), n)
        if points:
            title = f" [{e.status.value}] {e.title[:80]}" if label != "champion" else ""
            out[f"{label} #{e.id}{title}"] = points
    return out
