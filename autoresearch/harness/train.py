"""The training process (``--phase train``): the only place agent code runs, holding nothing
trusted.

``Run`` is what ``train(run)`` gets: a thin client of the runner's broker
(:mod:`autoresearch.runner.broker`). It asks the broker for every batch over the process's one
channel; the broker draws the batch, counts the tokens and keeps the clock, so nothing this
process does to its own objects changes what is counted. ``train_phase`` seeds everything,
enters the Landlock sandbox, says ``hello`` (the broker's setup clock starts), imports the
source's train.py, calls ``train(run)``, exports the returned model
(:func:`autoresearch.harness.export.export_model`) and hands its bytes back over the channel:
the budget's clock stops when they have all arrived.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import resource
import socket
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
from autoresearch.harness.channel import read_exact, read_header, send
from autoresearch.harness.export import export_model, unwrap
from autoresearch.metrics import Budget
from autoresearch.models import RunStatus


class Run:
    """What ``train(run)`` gets: batches, the budget's state, and a progress printer. Every
    figure here is a copy of what the broker said; the broker's own counts are the ones
    recorded."""

    BudgetExhausted = BudgetExhausted  # so train.py can `except run.BudgetExhausted`

    def __init__(self, channel: socket.socket, *, device: str, seed: int, vocab_size: int,
                 seq_len: int, budget: Budget) -> None:
        self.device = device
        self.seed = seed
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.tokens = 0  # tokens served so far (the broker's count, as it last said)
        self.steps = 0  # batches served so far
        self.failure: HarnessFailure | None = None  # kept even if train() catches it
        self.curve: CurveWriter | None = None  # where log() records its numbers, if set
        self._channel = channel
        self._budget = budget
        self._t0: float | None = None  # the broker's clock starts at the first batch
        self._t_stop: float | None = None
        self._pending: tuple[int, int] | None = None  # a batch asked for ahead, not read yet
        self._pinned: list[torch.Tensor] = []  # CUDA: two page-locked buffers, used in turn
        self._events: list[Any] = []

    def get_batch(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): ``batch_size`` random windows of the train split; y is x shifted by one."""
        if isinstance(batch_size, bool) or isinstance(seq_len, bool) \
                or not isinstance(batch_size, int) or not isinstance(seq_len, int):
            raise ValueError(f"get_batch({batch_size!r}, {seq_len!r}): integers please")
        want = (batch_size, seq_len)
        if self._pending is not None and self._pending != want:
            self._discard()  # asked for ahead in another shape: the broker counted it anyway
        if self._pending is None:
            self._ask(want)
        self._pending = None
        header, size = read_header(self._channel, max_payload=batch_size * (seq_len + 1))
        if not header.get("ok"):
            message = str(header.get("error"))
            if header.get("kind") == "budget":
                raise BudgetExhausted(message)
            raise ValueError(message)
        self._t0, self.tokens = float(header["t0"]), int(header["tokens"])
        self.steps += 1
        shape = (batch_size, seq_len + 1)
        if self.device.startswith("cuda"):
            windows = self._to_cuda(size, shape)
        else:
            raw = np.frombuffer(read_exact(self._channel, size), dtype=np.uint8)
            windows = torch.from_numpy(raw.reshape(shape).copy()).to(torch.long)
        if self._budget.kind == "time":
            # ask for the next batch of this shape now: the broker draws it while this one
            # trains, and the next get_batch finds it waiting (a round trip less per step,
            # where seconds are the budget; under a token budget nothing is asked ahead, so
            # every token served is a token train() took)
            self._ask(want)
            self._pending = want
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        return x.to(self.device), y.to(self.device)

    def _ask(self, shape: tuple[int, int]) -> None:
        send(self._channel, {"op": "batch", "batch_size": shape[0], "seq_len": shape[1]})

    def _discard(self) -> None:
        """Read and drop the answer to a batch asked for ahead."""
        assert self._pending is not None
        b, t = self._pending
        self._pending = None
        _, size = read_header(self._channel, max_payload=b * (t + 1))
        if size:
            read_exact(self._channel, size)

    def drain(self) -> None:
        """Take the answer to a batch asked for ahead off the channel (train() is done)."""
        if self._pending is not None:
            self._discard()

    def _to_cuda(self, size: int, shape: tuple[int, int]) -> torch.Tensor:
        """Read the batch into a page-locked buffer and copy it to the GPU asynchronously (two
        buffers in turn, each reused only once its copy is done), widening it there: the
        device never waits for a pageable copy or a CPU-side conversion."""
        if not self._pinned or self._pinned[0].numel() < size:
            self._pinned = [torch.empty(size, dtype=torch.uint8).pin_memory() for _ in range(2)]
            self._events = [None, None]
        i = self.steps % 2
        if self._events[i] is not None:
            self._events[i].synchronize()
        buf = self._pinned[i]
        read_exact(self._channel, size, into=memoryview(buf.numpy().data))
        on_device = buf[:size].to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[i] = event
        return on_device.view(shape).to(torch.long)

    def time_left(self) -> float:
        """Seconds left of a time budget (the whole budget before the first batch); inf for a
        token budget. The broker's clock runs until the model is handed back: leave time for
        the export."""
        if self._budget.kind != "time":
            return math.inf
        used = 0.0 if self._t0 is None else time.monotonic() - self._t0
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
        """Seconds since the first batch (up to train() returning, once it has)."""
        end = time.monotonic() if self._t_stop is None else self._t_stop
        return 0.0 if self._t0 is None else end - self._t0

    def finish(self) -> None:
        """Called after train() returned: raise what train() may have hidden."""
        self._t_stop = time.monotonic()
        if self.curve is not None:
            self.curve.close()
        self.drain()
        if self.failure is not None:
            raise self.failure

    def _fail(self, failure: HarnessFailure) -> HarnessFailure:
        self.failure = self.failure or failure
        return failure


def fence(args: argparse.Namespace) -> None:
    """Put the training process in its Landlock sandbox (see autoresearch/sandbox.py)."""
    from autoresearch import sandbox

    read, write = sandbox.default_paths(Path(args.source), Path.cwd())
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
    channel = socket.socket(fileno=int(args.channel.removeprefix("fd:")))
    status, error = RunStatus.crash, ""
    run: Run | None = None
    try:
        sys.dont_write_bytecode = True  # leave no __pycache__ in the experiment's worktree
        seed_everything(args.seed)
        # the machine's speed, timed before any agent code (bookkeeping, see speed.py)
        speed_before = speed.reference_speed(args.device)
        if args.sandbox == "on":
            fence(args)  # from here on, nothing outside the allowed folders can be opened
        send(channel, {"op": "hello", "speed_before": speed_before,
                       "ready_at": getattr(args, "ready_at", 0.0)})
        run = Run(channel, device=args.device, seed=args.seed, vocab_size=256,
                  seq_len=args.seq_len, budget=budget_of(args))
        run.curve = CurveWriter(Path.cwd() / CURVE_FILE)
        train = load_train(Path(args.source))
        model = train(run)
        run.finish()
        if not isinstance(model, torch.nn.Module):
            raise InvalidModel(f"train() returned {type(model).__name__}, expected a "
                               "torch.nn.Module")
        t0 = time.monotonic()
        batch, _ = eval_plan(args.device)
        artifact = io.BytesIO()
        export_model(unwrap(model), artifact, batch, args.seq_len, args.device)
        done = {"op": "done", "export_seconds": time.monotonic() - t0,
                "speed_after": speed.reference_speed(args.device),
                "peak_memory_mb": _peak_memory_mb(args.device)}
        send(channel, done, artifact.getbuffer())
        channel.close()
        print(f"[harness] training: handed back the model ({run.steps} batches, "
              f"{run.tokens:,} tokens)", flush=True)
        return 0
    except (Exception, SystemExit) as e:  # agent code may raise anything, sys.exit included
        status = e.status if isinstance(e, HarnessFailure) else RunStatus.crash
        error = describe(e)
    if run is not None:
        with contextlib.suppress(Exception):
            run.drain()
    with contextlib.suppress(OSError):  # the broker stopped listening: it already knows
        send(channel, {"op": "failed", "status": status.value, "error": error})
    channel.close()
    print(f"[harness] training: {status.value}: {error.splitlines()[0] if error else ''}",
          flush=True)
    return 1


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def budget_of(args: argparse.Namespace) -> Budget:
    if args.time_budget is not None:
        return Budget(kind="time", amount=args.time_budget)
    return Budget(kind="tokens", amount=args.token_budget)


