"""Shared fixtures and helpers: a small generated dataset, a tiny fast training source, a
workspace for loop tests, the CLI invoked in-process, and waiting on a condition."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from typer.testing import CliRunner

from autoresearch import data
from autoresearch.metrics import Budget
from autoresearch.workspace import init_workspace

if TYPE_CHECKING:
    from autoresearch.harness.train import Run
    from autoresearch.runner.broker import Served

# One thread per process: on a shared, busy machine two OpenMP threads that spin-wait for each
# other make a tiny model 20x slower. Set before torch is imported here or in any child.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The Ray tests start a head of their own on 127.0.0.1: a ~/.ray/auth_token left by any earlier
# Ray on the machine turns token authentication on in this process but not in the head.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SOURCES = Path(__file__).parent / "sources"
LOOP_SOURCE = Path(__file__).parent / "loop_source" / "train.py"  # the loop tests' baseline
WORDS = [
    "the", "a", "one", "two", "three", "red", "green", "blue", "small", "large", "quick",
    "slow", "cat", "dog", "bird", "fish", "tree", "river", "stone", "house", "runs", "jumps",
    "sleeps", "sings", "eats", "sees", "under", "over", "near", "with",
]


def generated_text(n_bytes: int = 120_000, seed: int = 0) -> str:
    """Sentences of a small vocabulary: easy to learn, far below their unigram entropy."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_bytes:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
        line = sentence.capitalize() + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_bytes]


def bigram_corpus(path: Path) -> Path:
    """A small corpus with strong bigram structure, so a learning model is easy to tell apart."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "bed"]
    state, out = 12345, []
    for _ in range(12000):
        state = (1103515245 * state + 12345) % 2**31
        out.append(words[state % len(words)])
    path.write_text(" ".join(out) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def make_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., data.PreparedData]:
    """make_dataset(text, name) -> PreparedData, prepared in a session-wide temporary cache."""
    root = tmp_path_factory.mktemp("datasets")

    def make(text: str, name: str = "corpus") -> data.PreparedData:
        path = root / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        return data.prepare(str(path), cache=root / "cache")

    return make


@pytest.fixture(scope="session")
def prepared_data(make_dataset: Callable[..., data.PreparedData]) -> data.PreparedData:
    """A ~120 KB generated-text dataset (108 KB train, 12 KB validation)."""
    return make_dataset(generated_text(), "generated")


@pytest.fixture
def tiny_source(tmp_path: Path) -> Path:
    """A folder holding a tiny, fast train.py (1-layer causal model, ~50k params)."""
    dst = tmp_path / "tiny_source"
    shutil.copytree(SOURCES / "tiny", dst)
    return dst


@contextmanager
def brokered(data: np.ndarray, budget: Budget, tmp: Path, *, seed: int = 0,
             setup_cap: float = 60.0) -> Iterator[tuple[socket.socket, list[Served]]]:
    """A broker serving ``data`` in a thread; yields the client's end and, once the block is
    left and the broker is done, what it served."""
    from autoresearch.runner.broker import Broker  # torch: imported after the settings above

    ours, theirs = socket.socketpair()
    served: list[Served] = []
    b = Broker(ours, train=data, budget=budget, seed=seed, setup_cap=setup_cap,
               artifact=tmp / "model.pt")
    def serve() -> None:
        served.append(b.serve(time.monotonic()))
        ours.shutdown(socket.SHUT_RDWR)  # as the runner's kill would: the client hears no more

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield theirs, served
    finally:
        theirs.close()
        t.join(timeout=30)
        ours.close()


def hello_run(channel: socket.socket, budget: Budget, seed: int = 0) -> Run:
    """A Run on the client's end of ``brokered``, after the hello the harness sends."""
    from autoresearch.harness.channel import send
    from autoresearch.harness.train import Run

    send(channel, {"op": "hello"})
    return Run(channel, device="cpu", seed=seed, vocab_size=256, seq_len=16, budget=budget)


def loop_workspace(tmp: Path, source: str | None = None) -> Path:
    """tmp/ws: a workspace whose baseline is the loop tests' source (or ``source``), beside a
    bigram corpus at tmp/corpus.txt."""
    ws = tmp / "ws"
    init_workspace(ws)
    text = source if source is not None else LOOP_SOURCE.read_text(encoding="utf-8")
    (ws / "baseline" / "train.py").write_text(text, encoding="utf-8")
    bigram_corpus(tmp / "corpus.txt")
    return ws


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and stdout+stderr of one CLI call, in this process."""
    from autoresearch.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def invoke_json(*args: str) -> Any:
    """The JSON a CLI call prints with --json (it must succeed)."""
    from autoresearch.cli import app

    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_for(what: str, check: Callable[[], object], timeout: float = 120.0) -> object:
    """Poll ``check`` until it is true (its value is returned), or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return got
