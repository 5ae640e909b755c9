"""The trusted side of a training process: it serves the batches, counts the tokens and keeps
the clock.

The training process holds no data and no clock of its own that matters. Over its one channel
(:mod:`autoresearch.harness.channel`) it says ``hello`` when its trusted start-up is done (just
before it imports the agent's code), asks for every ``batch``, and ends with ``done`` (the
exported model as the payload) or ``failed``. This side:

- times setup from ``hello`` to the first batch, and refuses every batch past ``setup_cap``;
- draws every batch itself from the train split with the job's seed (the same windows, in the
  same order, as any honest process would have drawn), counts its tokens, and refuses a batch
  the token budget cannot cover or that is asked for after a time budget ran out (past the
  first half of the allowance, for the step under way);
- starts a time budget's clock at the first batch served and stops it when the model has been
  handed back, whole: what the agent's code does in between (``eval()``, ``to()``, the export,
  threads, children) is on the clock. A hand-back later than ``allowance`` after the budget is
  a timeout, and the process is killed there;
- reads the model's bytes into a file of its own that the training process never knew of.

The counts it returns are the measurement's; what the training process says about itself
(its speed, its export time, its GPU memory) is kept apart as ``reported``, for display.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoresearch.harness.channel import ChannelClosed, read_exact, read_header, send
from autoresearch.metrics import Budget
from autoresearch.models import RunStatus

# Everything after a time budget ran out must fit in this allowance (fraction of the budget,
# plus seconds): the step under way when it ran out (its remaining micro-batches are still
# served during the first half of the allowance, since a loop checks the time once per step,
# and a batch asked for just as the time runs out would otherwise fail an honest run), then
# the export and the hand-back (about 0.3 s on a CPU for the baseline). A hand-back later than
# that is a timeout. It is not a training budget of its own: at most half of it gets batches.
ALLOWANCE = (0.02, 1.0)
START_TIMEOUT = 120.0  # seconds from the hand-off to ``hello``: start-up under load (cold)
TOKEN_BUDGET_TIMEOUT = 600.0  # seconds a token-budget job may take after ``hello``, in all
MAX_BATCH_BYTES = 1 << 28  # one batch's windows: far beyond any real batch
MAX_ARTIFACT = 16 << 30  # bytes of an exported model
MAX_TEXT = 64 * 1024  # characters kept of a failure's message
_FAILURES = {s.value: s for s in (RunStatus.crash, RunStatus.nan, RunStatus.invalid_model,
                                  RunStatus.overtime)}


def allowance(budget: Budget) -> float:
    """Seconds a hand-back may come after a time budget ran out."""
    return budget.amount * ALLOWANCE[0] + ALLOWANCE[1] if budget.kind == "time" else 0.0


def train_deadline(budget: Budget, setup_cap: float) -> float:
    """The longest a training process can live from its hand-off (a bound for whoever waits
    on the runner from outside, such as a Ray task)."""
    after = (budget.amount + allowance(budget) if budget.kind == "time"
             else TOKEN_BUDGET_TIMEOUT)
    return START_TIMEOUT + setup_cap + after


@dataclass
class Served:
    """What the trusted side counted for one training process."""

    status: RunStatus = RunStatus.crash  # ok: a model was handed back in time
    error: str | None = None
    steps: int = 0  # batches served
    tokens: int = 0  # tokens served (batch_size * seq_len each)
    setup_seconds: float = 0.0  # hello -> first batch (or hand-back)
    train_seconds: float = 0.0  # first batch -> hand-back received
    artifact: Path | None = None  # the model's bytes, in a file of this side
    peak_memory_mb: float | None = None  # the process's resident peak, read from /proc
    reported: dict[str, Any] = field(default_factory=dict)  # what the process said of itself


class Broker:
    """One training process's batches and clock (one job; not reused)."""

    def __init__(self, sock: socket.socket, *, train: np.ndarray, budget: Budget, seed: int,
                 setup_cap: float, artifact: Path, pid: int | None = None,
                 timeout: float | None = None) -> None:
        self.sock, self.train, self.budget = sock, train, budget
        self.setup_cap, self.artifact, self.pid, self.timeout = setup_cap, artifact, pid, timeout
        self.rng = np.random.default_rng(seed)  # batches depend on the seed and nothing else
        self.out = Served()
        self.t_hello: float | None = None
        self.t0: float | None = None  # first batch served
        self.refused: str | None = None  # the last batch refused for the budget, and why

    def serve(self, handed_at: float) -> Served:
        """Answer the process until it hands back, fails, closes the channel or runs out of
        time; the caller ends the process group right after."""
        hard = None if self.timeout is None else handed_at + self.timeout
        try:
            while True:
                deadline, why = self._deadline(handed_at)
                if hard is not None and hard < deadline:
                    deadline, why = hard, (RunStatus.timeout, f"killed at the hard deadline: "
                                           f"{self.timeout:g} s after the job started")
                try:
                    header, size = read_header(self.sock, deadline, max_payload=MAX_ARTIFACT)
                except ChannelClosed as e:
                    if str(e) == "deadline":
                        return self._end(*why)
                    return self._end(RunStatus.crash, "the training process ended without "
                                     "handing back a model")
                if self._answer(header, size, deadline):
                    return self.out
        except (ValueError, TypeError, KeyError, OSError) as e:
            return self._end(RunStatus.crash, f"the training process broke the harness's "
                             f"protocol: {e}")

    def _deadline(self, handed_at: float) -> tuple[float, tuple[RunStatus, str]]:
        if self.t_hello is None:
            return handed_at + START_TIMEOUT, (
                RunStatus.timeout, f"the training process did not start within "
                f"{START_TIMEOUT:g} s")
        if self.t0 is None:
            return self.t_hello + self.setup_cap, (
                RunStatus.overtime, f"setup took more than {self.setup_cap:g} s before the "
                "first batch (the setup cap)")
        if self.budget.kind == "time":
            grace = allowance(self.budget)
            return self.t0 + self.budget.amount + grace, (
                RunStatus.timeout, f"no model handed back within {self.budget.describe()} + "
                f"{grace:.1f} s (the allowance for the last step and the export) of the first "
                "batch: the clock runs until the model is handed back, export included")
        return self.t_hello + TOKEN_BUDGET_TIMEOUT, (
            RunStatus.timeout, f"killed at the hard deadline: {TOKEN_BUDGET_TIMEOUT:g} s for a "
            f"{self.budget.describe()} budget")

    def _answer(self, header: dict[str, Any], size: int, deadline: float) -> bool:
        """Handle one message; True when the process is done (handed back or failed)."""
        op = header.get("op")
        if op != "done" and size:
            raise ValueError(f"a {op!r} message with a payload")
        if self.t_hello is None and op != "failed":
            if op != "hello":
                raise ValueError(f"{op!r} before hello")
            self.t_hello = time.monotonic()
            self._note("speed_before", header.get("speed_before"))
            self._note("ready_at", header.get("ready_at"))  # when its imports were done
            return False
        if op == "batch":
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))  # a reader that
            self._batch(header)  # stops reading cannot hold the broker past the deadline
            return False
        if op == "done":
            self._receive(size, deadline)
            for key in ("speed_after", "export_seconds", "peak_memory_mb"):
                self._note(key, header.get(key))
            return True
        if op == "failed":
            status = _FAILURES.get(str(header.get("status")), RunStatus.crash)
            error = str(header.get("error"))[:MAX_TEXT]
            if status == RunStatus.overtime and self.refused is not None:
                error = self.refused  # this side's own words for what it refused
            self._end(status, error)
            return True
        raise ValueError(f"an unknown message {op!r}")

    def _batch(self, header: dict[str, Any]) -> None:
        b, t = header.get("batch_size"), header.get("seq_len")
        now = time.monotonic()
        if type(b) is not int or type(t) is not int or b < 1 or not 1 <= t < len(self.train) \
                or b * (t + 1) > MAX_BATCH_BYTES:
            self._refuse("value", f"get_batch({b!r}, {t!r}): need integers batch_size >= 1 and "
                         f"1 <= seq_len < {len(self.train)} (the train split's size), at most "
                         f"{MAX_BATCH_BYTES:,} tokens a batch")
            return
        assert self.t_hello is not None
        if self.t0 is None and now - self.t_hello > self.setup_cap:
            self._refuse("budget", f"get_batch refused: setup took {now - self.t_hello:.1f} s "
                         f"before the first batch; the cap is {self.setup_cap:g} s")
            return
        n = b * t
        if self.budget.kind == "tokens" and self.out.tokens + n > self.budget.amount:
            left = int(self.budget.amount) - self.out.tokens
            self._refuse("budget", f"get_batch({b}, {t}) refused: {n:,} tokens asked, {left:,} "
                         f"left of the {self.budget.describe()} budget")
            return
        if self.budget.kind == "time" and self.t0 is not None \
                and now - self.t0 >= self.budget.amount + allowance(self.budget) / 2:
            self._refuse("budget", f"get_batch refused: the {self.budget.describe()} budget "
                         f"ran out {now - self.t0 - self.budget.amount:.1f} s ago")
            return
        if self.t0 is None:
            self.t0 = now
            self.out.setup_seconds = now - self.t_hello
        starts = self.rng.integers(0, len(self.train) - t, size=b)
        windows = np.ascontiguousarray(self.train[starts[:, None] + np.arange(t + 1)])
        self.out.tokens += n
        self.out.steps += 1
        send(self.sock, {"ok": True, "t0": self.t0, "tokens": self.out.tokens},
             memoryview(windows.data).cast("B"))

    def _refuse(self, kind: str, message: str) -> None:
        if kind == "budget":
            self.refused = message
        send(self.sock, {"ok": False, "kind": kind, "error": message})

    def _receive(self, size: int, deadline: float) -> None:
        """Read the model's bytes into this side's own file; the clock stops when the last
        byte is in."""
        self.artifact.parent.mkdir(parents=True, exist_ok=True)
        chunk = memoryview(bytearray(1 << 20))
        with self.artifact.open("wb") as f:
            left = size
            while left:
                n = min(left, len(chunk))
                f.write(read_exact(self.sock, n, deadline, into=chunk[:n]))
                left -= n
        now = time.monotonic()
        assert self.t_hello is not None
        if self.t0 is None:
            self.out.setup_seconds = now - self.t_hello
        else:
            self.out.train_seconds = now - self.t0
        self.out.peak_memory_mb = self._peak_rss()
        self.out.artifact = self.artifact
        self.out.status = RunStatus.ok

    def _end(self, status: RunStatus, error: str) -> Served:
        now = time.monotonic()
        if self.t0 is not None:
            self.out.train_seconds = now - self.t0
        elif self.t_hello is not None:
            self.out.setup_seconds = now - self.t_hello
        self.out.peak_memory_mb = self._peak_rss()
        self.out.status, self.out.error = status, error
        return self.out

    def _note(self, key: str, value: object) -> None:
        """A figure the process reports about itself: kept only if it is a finite number."""
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value):
            self.out.reported[key] = float(value)

    def _peak_rss(self) -> float | None:
        """The training process's peak resident memory (VmHWM), read from outside."""
        if self.pid is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None
