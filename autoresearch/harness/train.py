"""The training process (``--phase train``): the only place agent code runs.

``Run`` is what ``train(run)`` gets: the train split, the budget clock, batches and a progress
printer. ``train_phase`` seeds everything, enters the Landlock sandbox *before* importing the
source's train.py, calls ``train(run)``, and hands the returned model to
:func:`autoresearch.harness.export.export_model`; it writes only a bookkeeping report, never a
metric.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoresearch import speed
from autoresearch.curves import CURVE_FILE, CurveWriter
from autoresearch.harness import (
    BudgetExhausted,
    HarnessFailure,
    InvalidModel,
    NonFiniteLoss,
    describe,
    eval_plan,
    seed_everything,
)
from autoresearch.harness.export import export_model, snapshot, unwrap
from autoresearch.metrics import SETUP_CAP, TIME_GRACE, Budget, TrainReport
from autoresearch.models import RunStatus


class Run:
    """What ``train(run)`` gets: the train split, the clock, and a progress printer."""

    BudgetExhausted = BudgetExhausted  # so train.py can `except run.BudgetExhausted`

    def __init__(self, train_tokens: np.ndarray, *, device: str, seed: int, vocab_size: int,
                 seq_len: int, budget: Budget, setup_cap: float = SETUP_CAP) -> None:
        self.device = device
        self.seed = seed
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.tokens = 0  # tokens served by get_batch
        self.steps = 0  # batches served by get_batch
        self.setup_seconds = 0.0
        self.failure: HarnessFailure | None = None  # kept even if train() catches it
        self.curve: CurveWriter | None = None  # where log() records its numbers, if set
        self._data = train_tokens
        self._rng = np.random.default_rng(seed)  # batches depend on the seed and nothing else
        self._budget = budget
        self._setup_cap = setup_cap
        self._t_setup = time.monotonic()
        self._t_first: float | None = None  # the budget clock starts at the first batch
        self._t_stop: float | None = None  # and stops when train() returns (finish)

    def get_batch(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): ``batch_size`` random windows of the train split; y is x shifted by one."""
        if self._t_first is None:
            self.setup_seconds = time.monotonic() - self._t_setup
            self._check_setup()
            self._t_first = time.monotonic()
        n = batch_size * seq_len
        # the counters themselves, not tokens_left(): a method on the class can be replaced
        left = self._budget.amount - self.tokens
        if self._budget.kind == "tokens" and n > left:
            raise BudgetExhausted(
                f"get_batch({batch_size}, {seq_len}) refused: {n:,} tokens asked, "
                f"{int(left):,} left of the {self._budget.describe()} budget"
            )
        if self._budget.kind == "time" and -self.time_left() > self._grace():
            raise self._fail(BudgetExhausted(
                f"get_batch refused: the {self._budget.describe()} budget ran out "
                f"{-self.time_left():.1f} s ago"))
        if batch_size < 1 or not 1 <= seq_len < len(self._data):
            raise ValueError(f"get_batch({batch_size}, {seq_len}): need batch_size >= 1 and "
                             f"1 <= seq_len < {len(self._data)} (the train split's size)")
        starts = self._rng.integers(0, len(self._data) - seq_len, size=batch_size)
        windows = torch.from_numpy(self._data[starts[:, None] + np.arange(seq_len + 1)])
        windows = windows.to(torch.long)
        self.tokens += n
        self.steps += 1
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        return x.to(self.device), y.to(self.device)

    def time_left(self) -> float:
        """Seconds left of a time budget (the whole budget before the first batch); inf for a
        token budget."""
        if self._budget.kind != "time":
            return math.inf
        used = 0.0 if self._t_first is None else time.monotonic() - self._t_first
        return self._budget.amount - used

    def tokens_left(self) -> float:
        """Tokens get_batch may still serve under a token budget; inf for a time budget."""
        return self._budget.amount - self.tokens if self._budget.kind == "tokens" else math.inf

    def log(self, **scalars: Any) -> None:
        """Print one progress line for humans; a non-finite ``*loss*`` value ends the run."""
        parts, numbers = [], {}
        for key, value in scalars.items():
            if isinstance(value, torch.Tensor | np.generic | int | float):
                value = float(value)
                if "loss" in key and not math.isfinite(value):
                    raise self._fail(NonFiniteLoss(
                        f"{key} is {value} after {self.steps} batches (train() logged it)"))
                parts.append(f"{key} {value:.4g}")
                numbers[key] = value
            else:
                parts.append(f"{key} {value}")
        print(f"[{self.seconds():7.1f}s {self.tokens:>11,} tok] " + " | ".join(parts),
              flush=True)
        if self.curve is not None:  # display data only (autoresearch/curves.py)
            self.curve.add(self.seconds(), self.tokens, self.steps, numbers)

    def seconds(self) -> float:
        """Seconds on the budget clock so far (up to train() returning, once it has)."""
        end = time.monotonic() if self._t_stop is None else self._t_stop
        return 0.0 if self._t_first is None else end - self._t_first

    def finish(self) -> None:
        """Called by the harness after train() returned: raise what train() may have hidden."""
        self._t_stop = time.monotonic()
        if self.curve is not None:
            self.curve.close()
        if self._t_first is None:
            self.setup_seconds = time.monotonic() - self._t_setup
            self._check_setup()
        if self.failure is not None:
            raise self.failure
        if self._budget.kind == "tokens" and self.tokens > self._budget.amount:
            raise BudgetExhausted(f"train() drew {self.tokens:,} tokens; the budget is "
                                  f"{self._budget.describe()}")
        if self._budget.kind == "time" and -self.time_left() > self._grace():
            raise BudgetExhausted(
                f"train() returned {self.seconds():.1f} s after its first batch; the budget "
                f"is {self._budget.describe()} (+{self._grace():.1f} s grace)")

    def _check_setup(self) -> None:
        if self.setup_seconds > self._setup_cap:
            raise self._fail(BudgetExhausted(
                f"setup took {self.setup_seconds:.1f} s before the first batch; the cap is "
                f"{self._setup_cap:g} s"))

    def _grace(self) -> float:
        return self._budget.amount * TIME_GRACE[0] + TIME_GRACE[1]

    def _fail(self, failure: HarnessFailure) -> HarnessFailure:
        self.failure = self.failure or failure
        return failure


def fence(args: argparse.Namespace) -> None:
    """Put the training process in its Landlock sandbox (see autoresearch/sandbox.py)."""
    from autoresearch import sandbox

    read, write = sandbox.default_paths(Path(args.source), Path.cwd(), args.writable or [])
    read.append(str(Path(args.data)))
    write += [str(Path(args.artifact).parent), str(Path(args.report).parent)]
    try:
        state = sandbox.restrict(read, write)
    except sandbox.SandboxError as e:
        raise RuntimeError(f"the sandbox could not be set up ({e}); --no-sandbox (or "
                           "AUTORESEARCH_SANDBOX=0) trains without it") from e
    print(f"[harness] sandbox: {state}", flush=True)


def load_train(source: Path) -> Callable[[Run], Any]:
    """Import ``source/train.py`` as a module and return its ``train`` function."""
    path = source / "train.py"
    if not path.is_file():
        raise HarnessFailure(f"{path} does not exist")
    sys.path.insert(0, str(source))
    spec = importlib.util.spec_from_file_location("train", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    train = getattr(module, "train", None)
    if not callable(train):
        raise HarnessFailure("train.py defines no train(run) function")
    return train


def train_phase(args: argparse.Namespace) -> int:
    report = TrainReport()
    run: Run | None = None
    try:
        sys.dont_write_bytecode = True  # leave no __pycache__ in the experiment's worktree
        seed_everything(args.seed)
        # the machine's speed, timed before any agent code (and before the setup clock)
        report.speed_before = speed.reference_speed(args.device)
        train_data = np.memmap(Path(args.data) / "train.bin", dtype=np.uint8, mode="r")
        run = Run(train_data, device=args.device, seed=args.seed, vocab_size=256,
                  seq_len=args.seq_len, budget=budget_of(args), setup_cap=args.setup_cap)
        run.curve = CurveWriter(Path(args.report).with_name(CURVE_FILE))
        if args.sandbox == "on":
            fence(args)  # from here on, nothing outside the allowed folders can be opened
        train = load_train(Path(args.source))
        model = train(run)
        run.finish()
        if not isinstance(model, torch.nn.Module):
            raise InvalidModel(f"train() returned {type(model).__name__}, expected a "
                               "torch.nn.Module")
        model = unwrap(model)
        weights = snapshot(model)  # before any method of the model runs again
        t0 = time.monotonic()
        batch, _ = eval_plan(args.device)
        export_model(model, Path(args.artifact), batch, args.seq_len, args.device,
                     expect=weights)
        report.export_seconds = time.monotonic() - t0
        report.status = RunStatus.ok
    except (Exception, SystemExit) as e:  # agent code may raise anything, sys.exit included
        report.status = e.status if isinstance(e, HarnessFailure) else RunStatus.crash
        report.error = describe(e)
    if report.speed_before is not None:
        with contextlib.suppress(Exception):  # a model that broke the device: speed unknown
            report.speed_after = speed.reference_speed(args.device)
    if run is not None:
        report.steps, report.train_tokens = run.steps, run.tokens
        report.train_seconds, report.setup_seconds = run.seconds(), run.setup_seconds
    report.peak_memory_mb = _peak_memory_mb(args.device)
    report.ready_at = getattr(args, "ready_at", 0.0)
    Path(args.report).write_text(report.model_dump_json(indent=2), encoding="utf-8")
    print(f"[harness] training: {report.status.value} ({report.steps} batches, "
          f"{report.train_tokens:,} tokens, {report.train_seconds:.1f} s)", flush=True)
    return 0 if report.status == RunStatus.ok else 1



def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def budget_of(args: argparse.Namespace) -> Budget:
    if args.time_budget is not None:
        return Budget(kind="time", amount=args.time_budget)
    return Budget(kind="tokens", amount=args.token_budget)


