"""What the user sees while a loop runs: a live one-screen view on a terminal, lines otherwise."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from autoresearch.explain import compare
from autoresearch.store import Experiment


def _result_line(exp: Experiment, best: float | None) -> str:
    """The candidate beside the champion on the same seeds, and the verdict in words."""
    c = compare(exp)
    words = exp.reason if c.stage == "failed" and exp.reason else c.words
    return f"#{exp.id} [{exp.status.value}] {exp.title}: {words}"


class PlainReporter:
    """One line per event, for logs and pipes."""

    def __init__(self, console: Console | None, errors: Console) -> None:
        self.console = console or errors
        self.errors = errors

    def notice(self, message: str) -> None:
        self.errors.print(message, markup=False)

    def begin(self, planned: int, done: int) -> None:
        pass

    def phase(self, exp_id: int, seq: int, title: str, phase: str) -> None:
        self.console.print(f"#{exp_id} {title}: {phase}", markup=False)

    def finished(self, exp: Experiment, best: float | None) -> None:
        self.console.print(_result_line(exp, best), markup=False)

    def close(self) -> None:
        pass


class LiveReporter(PlainReporter):
    """A one-screen view: current experiment, phase, best so far, ETA; results scroll above."""

    def __init__(self, console: Console, errors: Console) -> None:
        super().__init__(console, errors)
        self.started = time.monotonic()
        self.current = "starting"
        self.phase_text = ""
        self.best: float | None = None
        self.done = 0
        self.durations: list[float] = []
        self.t_exp = time.monotonic()
        self.planned: int | None = None
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=True)
        self.live.start()

    def _render(self) -> Table:
        t = Table.grid(padding=(0, 2))
        t.add_row("experiment", self.current)
        t.add_row("phase", self.phase_text)
        t.add_row("champion", f"val_bpb {self.best:.4f} (mean over the run's seeds)"
                  if self.best is not None else "-")
        elapsed = time.monotonic() - self.started
        eta = "-"
        if self.planned and self.durations:
            left = max(0, self.planned - self.done)
            eta = f"{left * sum(self.durations) / len(self.durations) / 60:.1f} min"
        t.add_row("elapsed / ETA", f"{elapsed / 60:.1f} min / {eta}")
        return t

    def notice(self, message: str) -> None:
        self.live.console.print(message, markup=False)

    def begin(self, planned: int, done: int) -> None:
        self.planned, self.done = planned, done
        self.live.update(self._render())

    def phase(self, exp_id: int, seq: int, title: str, phase: str) -> None:
        label = f"#{exp_id} {title}"
        if label != self.current:
            self.t_exp = time.monotonic()
        self.current, self.phase_text = label, phase
        self.live.update(self._render())

    def finished(self, exp: Experiment, best: float | None) -> None:
        self.best = best
        if exp.kind == "candidate":
            self.done += 1
            self.durations.append(time.monotonic() - self.t_exp)
        self.t_exp = time.monotonic()
        self.live.console.print(_result_line(exp, best), markup=False)
        self.live.update(self._render())

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()


def make_reporter(console: Console | None, errors: Console) -> PlainReporter:
    if console is not None and console.is_terminal:
        return LiveReporter(console, errors)
    return PlainReporter(console, errors)
