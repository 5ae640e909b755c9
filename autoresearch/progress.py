"""What the user sees while a loop runs: a live one-screen view on a terminal, lines otherwise."""

from __future__ import annotations

import threading
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
    """A one-screen view: the experiments in flight and their phases, best so far, ETA;
    results scroll above. Workers report from their own threads: one lock guards the view."""

    def __init__(self, console: Console, errors: Console) -> None:
        super().__init__(console, errors)
        self.started = time.monotonic()
        self.lock = threading.RLock()
        self.current: dict[int, tuple[str, str]] = {}  # exp id -> (label, phase)
        self.best: float | None = None
        self.done = 0
        self.done_at_start = 0
        self.planned: int | None = None
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=True)
        self.live.start()

    def _render(self) -> Table:
        t = Table.grid(padding=(0, 2))
        if not self.current:
            t.add_row("experiment", "starting")
        for label, phase in self.current.values():
            t.add_row(label, phase)
        t.add_row("champion", f"val_bpb {self.best:.4f} (mean over the run's seeds)"
                  if self.best is not None else "-")
        elapsed = time.monotonic() - self.started
        eta = "-"
        finished = self.done - self.done_at_start
        if self.planned and finished:
            left = max(0, self.planned - self.done)
            eta = f"{left * elapsed / finished / 60:.1f} min"
        t.add_row("elapsed / ETA", f"{elapsed / 60:.1f} min / {eta}")
        return t

    def notice(self, message: str) -> None:
        with self.lock:
            self.live.console.print(message, markup=False)

    def begin(self, planned: int, done: int) -> None:
        with self.lock:
            self.planned, self.done, self.done_at_start = planned, done, done
            self.started = time.monotonic()
            self.live.update(self._render())

    def phase(self, exp_id: int, seq: int, title: str, phase: str) -> None:
        with self.lock:
            label = f"#{exp_id} {title}" if title != "repair" or exp_id not in self.current \
                else self.current[exp_id][0]
            self.current[exp_id] = (label, phase)
            self.live.update(self._render())

    def finished(self, exp: Experiment, best: float | None) -> None:
        with self.lock:
            self.best = best
            if exp.kind == "candidate":
                self.done += 1
            if exp.id is not None:
                self.current.pop(exp.id, None)
            self.live.console.print(_result_line(exp, best), markup=False)
            self.live.update(self._render())

    def close(self) -> None:
        with self.lock:
            if self.live.is_started:
                self.live.stop()


def make_reporter(console: Console | None, errors: Console) -> PlainReporter:
    if console is not None and console.is_terminal:
        return LiveReporter(console, errors)
    return PlainReporter(console, errors)
