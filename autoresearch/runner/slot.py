"""Warm slots: a worker's next job's processes, started while the current job trains.

A ``Slot`` takes the processes' start-up off the device's time: it starts the next job's pair
(training and evaluation, torch imported, waiting for their job on a pipe) while the current
job trains. Each process still serves one measurement and exits; see docs/integrity.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from autoresearch import integrity
from autoresearch.runner import forks
from autoresearch.runner.processes import PID_FILE, BoundedLog, Proc

WARM_DIR = "warm"  # under a slot's folder: one folder (with a pid file) per waiting process
_SLOTS = itertools.count(1)  # slots made by this process
_T = TypeVar("_T")
# The evaluation process runs trusted code only, never anything from its working directory: it
# starts with -S -E (no site-packages .pth files or sitecustomize run, no PYTHON* variables
# read) and gets the import path this process had, as an argument.
_EVAL_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv.pop(1)); "
              "from autoresearch.harness.command import main; "
              "from autoresearch.harness.warm import exit_now; exit_now(main())")


@dataclass
class Evaluator:
    """An evaluation process and the read end of the pipe it answers through."""

    proc: Proc
    fd: int  # the write end's number, the same in the child
    read_end: int
    cwd: Path

    def answer(self) -> bytes:
        with os.fdopen(self.read_end, "rb") as pipe:
            self.read_end = -1
            return pipe.read()

    def close(self) -> None:
        self.proc.kill()
        if self.read_end >= 0:
            os.close(self.read_end)
            self.read_end = -1
        shutil.rmtree(self.cwd, ignore_errors=True)


def start_eval(env: dict[str, str], warm: Path | None = None, wait: float = 60.0,
                server: forks.ForkServer | None = None) -> Evaluator:
    """An evaluation process of trusted code only, waiting for its arguments: in a new empty
    folder, started with -S -E -B and this process's import path. ``warm``: the folder for its
    pid file while it waits (else it is handed its job at once); ``wait``: how long it waits;
    ``server``: the evaluation fork server to fork it from (started the same way)."""
    cwd = Path(tempfile.mkdtemp(prefix="autoresearch-eval-"))
    read_end, write_end = os.pipe()
    try:
        proc = Proc(eval_cmd("--wait-for-job", wait), cwd=cwd, env=env,
                     pass_fds=(write_end,), job_pipe=True, pid_file=(warm or cwd) / PID_FILE,
                     server=server)
    except BaseException:
        os.close(read_end)
        shutil.rmtree(cwd, ignore_errors=True)
        raise
    finally:
        os.close(write_end)  # only the child holds it: its exit ends our read
    return Evaluator(proc, write_end, read_end, cwd)


def eval_cmd(warm: str, wait: float) -> list[str]:
    return [sys.executable, "-S", "-E", "-B", "-u", "-c", _EVAL_BOOT,
            json.dumps(integrity.eval_path()), "--phase", "eval", warm, str(os.getpid()),
            "--wait-seconds", f"{wait:g}"]


def train_cmd(warm: str, wait: float) -> list[str]:
    return [sys.executable, "-m", "autoresearch.harness", "--phase", "train", warm,
            str(os.getpid()), "--wait-seconds", f"{wait:g}"]


@dataclass
class Trainer:
    """A training process and the runner's end of its channel (the broker talks on it);
    ``fd``: the number of the process's own end, for its job's ``--channel``."""

    proc: Proc
    channel: socket.socket
    fd: int

    def close(self) -> None:
        self.proc.kill()
        self.channel.close()


def start_trainer(cmd: list[str], *, cwd: Path, env: dict[str, str], pid_file: Path,
                  server: forks.ForkServer | None = None, log: BoundedLog | None = None,
                  cold: bool = False) -> Trainer:
    """A training process with a new channel. A warm one is told the channel's descriptor
    with its job; a ``cold`` one gets its job (``cmd``) with ``--channel fd:N`` at once."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if cold:
        cmd = [*cmd, "--channel", f"fd:{theirs.fileno()}"]
    try:
        proc = Proc(cmd, cwd=cwd, env=env, pid_file=pid_file, job_pipe=not cold, server=server,
                    pass_fds=(theirs.fileno(),), log=log)
    except BaseException:
        ours.close()
        raise
    finally:
        fd = theirs.fileno()
        theirs.close()  # only the child holds it: its exit ends the broker's read
    return Trainer(proc, ours, fd)


@dataclass
class Pair:
    """The processes of one future job: training (in its scratch folder, with that folder's
    environment) and evaluation (None until started), waiting."""

    key: tuple[object, ...]
    scratch: Path
    folder: Path  # for the pid files
    train: Trainer
    eval: Evaluator | None
    installed: integrity.Signature  # taken before either started

    def close(self) -> None:
        self.train.close()
        if self.eval is not None:
            self.eval.close()


@dataclass
class Slot:
    """One worker slot's warm processes: after handing a job to the pair started for it, the
    slot starts the next job's training process, so that Python and torch start-up (and the
    imports the first optimizer step and the export would do) overlap the current job's
    training; the next job's evaluation process starts when the current one's has finished
    (``add_eval``), and overlaps the next job's training.

    On CPU (Linux), where start-ups compete with the job itself for the cores, the slot keeps
    one fork server per phase (``fork``, autoresearch/harness/forkserver.py): it imports once,
    and each process of a pair is a fork of it, ready in milliseconds instead of seconds of
    CPU. A GPU job forks nothing: a process that has touched the CUDA driver cannot be forked.

    A spare pair is ended by ``close`` (use the slot as a context manager), by its own wait
    deadline, or with this process (its stdin closes; on Linux it also dies with it); a fork
    server too. Their pid files lie under ``folder``/warm, for ``kill_stale`` after a
    SIGKILL."""

    folder: Path
    wait: float = 1800.0  # seconds a spare pair waits for its job before it exits
    fork: bool = True  # fork servers where they can serve
    _next: Pair | None = field(default=None, init=False)
    _count: int = field(default=0, init=False)
    # this slot's prefix for its folders under folder/warm: the workers of one loop share a
    # folder, and one slot's close must not take another's pid files with it
    _tag: str = field(default_factory=lambda: f"{os.getpid()}-{next(_SLOTS)}", init=False)
    _servers: dict[str, forks.ForkServer] = field(default_factory=dict, init=False)
    _retired: list[forks.ForkServer] = field(default_factory=list, init=False)
    _server_key: tuple[object, ...] | None = field(default=None, init=False)

    def take(self, key: tuple[object, ...]) -> Pair | None:
        """The waiting pair, if it was started for jobs like this one and is still alive."""
        pair, self._next = self._next, None
        if pair is not None and (pair.key != key or pair.train.proc.proc.poll() is not None
                                 or (pair.eval is not None
                                     and pair.eval.proc.proc.poll() is not None)):
            pair.close()
            shutil.rmtree(pair.scratch, ignore_errors=True)
            return None
        return pair

    def start_pair(self, key: tuple[object, ...], env: dict[str, str],
                   installed: integrity.Signature) -> None:
        """Start the next job's pair (ending a spare one first)."""
        self.discard()
        self._next = self.spawn(key, env, installed, with_eval=False)

    def add_eval(self, env: dict[str, str]) -> None:
        """Start the next pair's evaluation process, if it has none yet."""
        pair = self._next
        if pair is not None and pair.eval is None:
            pair.eval = self._eval(pair.key, pair.folder, env)

    def eval_for(self, pair: Pair, env: dict[str, str]) -> Evaluator:
        """The pair's evaluation process, started now if it has none or it is gone (a warm one
        stops waiting after ``wait`` seconds, which a long training job can outlast)."""
        if pair.eval is not None and pair.eval.proc.proc.poll() is not None:
            pair.eval.close()
            pair.eval = None
        if pair.eval is None:
            pair.eval = self._eval(pair.key, pair.folder, env)
        return pair.eval

    def spawn(self, key: tuple[object, ...], env: dict[str, str],
              installed: integrity.Signature, with_eval: bool = True) -> Pair:
        """Start a pair for a job: training in a new scratch folder, with that folder's
        environment, and evaluation; ``installed`` is a signature taken before agent code
        could have run since."""
        self._count += 1
        warm = self.folder / WARM_DIR / f"{self._tag}-{self._count}"
        # the evaluation first: training is what the job is handed next, so nothing (such as
        # a fork server's imports) should stand between its start and its job
        ev = self._eval(key, warm, env) if with_eval else None
        scratch = Path(tempfile.mkdtemp(prefix="autoresearch-train-"))
        try:
            server = self._server("train", key, env)
            train = self._forked(server, lambda srv: start_trainer(
                train_cmd("--wait-for-job", self.wait), cwd=scratch,
                env=integrity.training_env(env, scratch), pid_file=warm / "train" / PID_FILE,
                server=srv))
        except BaseException:
            if ev is not None:
                ev.close()
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return Pair(key, scratch, warm, train, ev, installed)

    def _eval(self, key: tuple[object, ...], folder: Path, env: dict[str, str]) -> Evaluator:
        return self._forked(self._server("eval", key, env),
                            lambda srv: start_eval(env, folder / "eval", self.wait, srv))

    def _forked(self, server: forks.ForkServer | None,
                start: Callable[[forks.ForkServer | None], _T]) -> _T:
        """``start`` through ``server`` where there is one; if it cannot fork, the servers are
        retired (new ones for the next process) and this one is started on its own."""
        if server is not None:
            try:
                return start(server)
            except forks.ForkFailed:
                self._end_servers(now=False)
        return start(None)

    def _server(self, phase: str, key: tuple[object, ...], env: dict[str, str]
                ) -> forks.ForkServer | None:
        """This phase's fork server for jobs like ``key`` (both phases' are started together,
        the evaluation's importing while training runs), or None where forking is not used."""
        if not (self.fork and key[2] == "cpu" and forks.available()):
            return None
        if key != self._server_key or not all(s.alive() for s in self._servers.values()):
            self._end_servers(now=False)  # a job may still run in a child of one of them
            folder = self.folder / WARM_DIR / f"{self._tag}-server-{self._count}"
            self._server_key = key
            for name, cmd, server_env in (
                    ("train", train_cmd("--fork-server", self.wait),
                     lambda home: integrity.training_env(env, home)),
                    ("eval", eval_cmd("--fork-server", self.wait), lambda home: env)):
                self._servers[name] = forks.ForkServer(
                    cmd, env=server_env, pid_file=folder / name / PID_FILE,
                    log=folder / f"{name}.log")
        return self._servers[phase]

    def _end_servers(self, now: bool = True) -> None:
        """End the fork servers, or (``now=False``) retire them: they exit once their children
        have, so that replacing a dead or outdated server cuts no running job short."""
        if now:
            for server in [*self._servers.values(), *self._retired]:
                server.close()
            self._retired.clear()
        else:
            for server in self._servers.values():
                server.retire()
            self._retired.extend(self._servers.values())
        self._servers.clear()
        self._server_key = None

    def discard(self, servers: bool = False) -> None:
        """End the waiting pair, if any (``servers``: the fork servers too)."""
        pair, self._next = self._next, None
        if pair is not None:
            pair.close()
            shutil.rmtree(pair.scratch, ignore_errors=True)
        if servers:
            self._end_servers()

    def close(self) -> None:
        self.discard(servers=True)
        for mine in (self.folder / WARM_DIR).glob(f"{self._tag}-*"):
            shutil.rmtree(mine, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last slot out removes the folder
            (self.folder / WARM_DIR).rmdir()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def warm_key(env: dict[str, str], device: str) -> tuple[object, ...]:
    """What a pair's processes were started with: a job with other settings starts its own."""
    return (tuple(sorted(env.items())), tempfile.gettempdir(), device, sys.executable)


