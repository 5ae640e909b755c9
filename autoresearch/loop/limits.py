"""The run's limits, counted in one place under one lock.

- the budget (``--budget``): an ask for a proposal starts only while the experiments recorded
  plus the asks still open stay within it (an open ask may already have its row: counted
  twice until it ends, so the budget is never crossed), and a new candidate's number in the
  budget (its ``seq``) is taken under the same lock;
- the cost cap (``--max-cost``): an agent call starts only if the spending so far, plus the
  dearest call's price for it and for each call still in flight, stays within the cap; calls
  run one at a time unless the agent may be called concurrently and prices are known.

The workers are the third limit: a lane is busy or free, and only the scheduler's own thread
hands out work, so it needs no lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from autoresearch.loop.run import ActiveRun, LoopStopped
from autoresearch.models import ExperimentKind
from autoresearch.store import Experiment


class Limits:
    def __init__(self, active: ActiveRun, *, concurrent_calls: bool) -> None:
        self.active = active
        self.concurrent_calls = concurrent_calls
        self._lock = threading.Condition()
        self._asks = 0  # asks for a proposal started and not yet ended
        self._calls = 0  # agent calls in flight

    # -- the budget -------------------------------------------------------------------------
    def start_ask(self) -> bool:
        """Claim room in the budget for one more ask; False when there is none."""
        a = self.active
        with self._lock:
            if a.store.count_candidates(a.id) + self._asks >= a.run.experiments_planned:
                return False
            self._asks += 1
            return True

    def end_ask(self) -> None:
        with self._lock:
            self._asks -= 1

    @property
    def open_asks(self) -> int:
        with self._lock:
            return self._asks

    def new_candidate(self, parent_commit: str, parent_id: int, title: str) -> Experiment:
        """A candidate's row, numbered next in the budget."""
        a = self.active
        with self._lock:
            return a.store.add_experiment(
                run_id=a.id, kind=ExperimentKind.candidate,
                seq=a.store.count_candidates(a.id) + 1, parent_commit=parent_commit,
                parent_id=parent_id, title=title)

    # -- the cost cap -----------------------------------------------------------------------
    @contextmanager
    def agent_call(self) -> Iterator[None]:
        """Around one agent call (``enter_call`` and ``leave_call``)."""
        self.enter_call()
        try:
            yield
        finally:
            self.leave_call()

    def enter_call(self) -> None:
        """Wait for this call's turn; LoopStopped when it could cross the cost cap."""
        with self._lock:
            # one at a time, unless the agent allows more and the price of a call is known
            while self._calls and (not self.concurrent_calls or not self._priced()):
                self._lock.wait()
            self._check_cost()
            self._calls += 1

    def leave_call(self) -> None:
        with self._lock:
            self._calls -= 1
            self._lock.notify_all()

    def _priced(self) -> bool:
        a = self.active
        return a.settings.max_cost is None or a.store.spending(a.id)[1] > 0

    def _check_cost(self) -> None:
        a = self.active
        cap = a.settings.max_cost
        if cap is None:
            return
        spent, dearest = a.store.spending(a.id)
        # the next call, and each still in flight, is assumed to cost the dearest one's price
        if spent + (self._calls + 1) * dearest > cap:
            raise LoopStopped(f"cost cap reached: ${spent:.4f} spent, the next call would cost "
                              f"about ${dearest:.4f}, cap ${cap:.4f}")
