"""Run one measurement: the harness's training process, then its evaluation process.

Each process runs in its own session (process group) under a hard deadline; at the deadline,
or when it exits, the whole group is killed, children of the training code included.

The training process is only told about a scratch folder: a copy of the train split, the
source, and where to put its model artifact and its report. The evaluation process reads
the artifact and the real dataset and reports to a second folder the training process never
heard of. This function then writes ``out_dir/metrics.json`` from the two reports; nothing
the training process prints or writes can become the metric.

A ``Slot`` takes the processes' start-up off the device's time: it starts the next job's pair
(training and evaluation, torch imported, waiting for their job on a pipe) while the current
job trains. Each process still serves one measurement and exits; see docs/integrity.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from pydantic import BaseModel, ValidationError

from autoresearch import curves, forks, integrity
from autoresearch import sandbox as sandbox_mod
from autoresearch.data import load_prepared
from autoresearch.errors import DataError, UsageError
from autoresearch.metrics import (
    SETUP_CAP,
    TIME_GRACE,
    Budget,
    EvalReport,
    Metrics,
    TrainReport,
)
from autoresearch.models import RunStatus

TOKEN_BUDGET_TIMEOUT = 600.0  # seconds a token-budget training process may take in all
EXPORT_ALLOWANCE = 60.0  # seconds for torch.export after train() returns
EVAL_TIMEOUT = 180.0  # seconds for the evaluation process
GRACE = 10.0  # process start, imports, writing reports
PID_FILE = "job.pid"  # the running job's process group, while it runs
WARM_DIR = "warm"  # under a slot's folder: one folder (with a pid file) per waiting process
LOG_HEAD = LOG_TAIL = 64 * 1024  # bytes of run.log kept from the start and from the end
_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")
# The evaluation process runs trusted code only, never anything from its working directory: it
# starts with -S -E (no site-packages .pth files or sitecustomize run, no PYTHON* variables
# read) and gets the import path this process had, as an argument.
_EVAL_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv.pop(1)); "
              "from autoresearch.harness.command import exit_now, main; exit_now(main())")


def resolve_device(device: str) -> str:
    """"auto" -> the best device here (cuda, mps, cpu); other names are checked and kept."""
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        return device
    raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class Job:
    """One training + evaluation of ``source`` on one seed: everything a measurement needs to
    know, as one value (a worker adds where it runs: its GPU, its threads, its warm slot)."""

    source: Path  # a folder with the editable files (a worktree)
    data: Path  # the prepared dataset's folder
    budget: Budget
    seed: int
    device: str  # "cpu", "cuda", "mps": a worker's GPU is given by its CUDA_VISIBLE_DEVICES
    out_dir: Path  # run.log, metrics.json (and the curve) are written here
    setup_cap: float = SETUP_CAP
    timeout: float | None = None  # overrides the training process's hard deadline
    sandbox: bool = True  # fence the training process in with Landlock where the OS has it
    expect_sha256: str | None = None  # refuse any other dataset, before training
    seq_len: int = 256  # the evaluation's context length


def measure(job: Job, *, slot: Slot | None = None, gpu: str | None = None,
            threads: int | None = None, echo: bool = False) -> Metrics:
    """Train ``job.source`` under its budget and evaluate it; write
    ``job.out_dir``/{run.log,metrics.json}.

    Never raises for a failed job: the returned Metrics has a non-ok status and an error.
    With a ``slot``, the job runs in processes the slot started earlier where it can, and the
    slot starts the next job's while this one trains. ``gpu``: the only GPU its processes see;
    ``threads``: torch/OpenMP threads of each process (jobs side by side on shared cores);
    ``echo`` also copies the processes' output to this process's stdout.
    """
    source, data, budget, seed, device = job.source, job.data, job.budget, job.seed, job.device
    out_dir, setup_cap, timeout, seq_len = job.out_dir, job.setup_cap, job.timeout, job.seq_len
    sandbox, expect_sha256 = job.sandbox, job.expect_sha256
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    metrics = Metrics(status=RunStatus.crash, seed=seed, device=device, seq_len=seq_len,
                      threads=threads)
    try:
        device = resolve_device(device)
        prepared = load_prepared(data)
    except (UsageError, DataError) as e:
        metrics.error = str(e)
        return _finish(metrics, out_dir, started)
    metrics.device = device
    metrics.dataset, metrics.dataset_sha256 = prepared.name, prepared.sha256
    if expect_sha256 is not None and prepared.sha256 != expect_sha256:
        metrics.error = (f"the dataset in {data} is {prepared.name} ({prepared.sha256[:12]}), "
                         f"not the run's ({expect_sha256[:12]}): metrics from different "
                         "corpora are never compared")
        return _finish(metrics, out_dir, started)
    env = integrity.child_env(gpu, threads)
    sys.dont_write_bytecode = True  # our own late imports must not change the watched files
    metrics.sandbox = sandbox_state(sandbox)
    # warm processes only behind the OS fence: it keeps this job's code away from the next
    # job's waiting processes (no ptrace, signals or files outside its own scratch)
    key = _warm_key(env, device) if slot is not None and metrics.sandbox.startswith(
        "landlock") else None
    pair = slot.take(key) if slot is not None and key is not None else None
    installed = pair.installed if pair is not None else integrity.installed_signature()
    if slot is not None and key is not None and pair is None:
        pair = slot.spawn(key, env, installed)  # cold, but through the same path
    log = BoundedLog(out_dir / "run.log", echo=echo)
    scratch = pair.scratch if pair is not None else Path(
        tempfile.mkdtemp(prefix="autoresearch-train-"))
    try:
        with log:
            metrics = _train_and_evaluate(
                metrics, log, scratch, pair, slot, key, installed, env, source=source,
                data=data, sha256=prepared.sha256, budget=budget, seed=seed, device=device,
                setup_cap=setup_cap, timeout=timeout, seq_len=seq_len, sandbox=sandbox,
                out_dir=out_dir)
            metrics = _finish(metrics, out_dir, started)
            log.write(f"\n== {metrics.status.value}: val_bpb {metrics.val_bpb}, "
                      f"{metrics.total_seconds:.1f} s ==\n".encode())
    finally:
        if pair is not None:
            pair.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return metrics


def _train_and_evaluate(metrics: Metrics, log: BoundedLog, scratch: Path, pair: _Pair | None,
                        slot: Slot | None, key: tuple[object, ...] | None,
                        installed: integrity.Signature, env: dict[str, str], *, source: Path,
                        data: Path, sha256: str, budget: Budget, seed: int, device: str,
                        setup_cap: float, timeout: float | None, seq_len: int, sandbox: bool,
                        out_dir: Path) -> Metrics:
    train_data = scratch / "data"
    train_data.mkdir()
    # a copy, not a link: the training code can neither learn where the dataset lives nor
    # write into it
    shutil.copyfile(data / "train.bin", train_data / "train.bin")
    shutil.copyfile(data / "meta.json", train_data / "meta.json")
    train_env = integrity.training_env(env, scratch)
    if metrics.sandbox.startswith("landlock"):
        metrics.sandbox += integrity.dataset_exposed(data, source, scratch)
    caches = [train_env["TRITON_CACHE_DIR"], train_env["TORCHINDUCTOR_CACHE_DIR"]]
    for cache in caches:
        with contextlib.suppress(OSError):
            Path(cache).mkdir(parents=True, exist_ok=True)
    deadline = timeout if timeout is not None else _train_deadline(budget, setup_cap)
    job = ["--phase", "train", "--source", str(Path(source).resolve()), "--data",
           str(train_data), *budget.cli_args(), "--seed", str(seed), "--device", device,
           "--seq-len", str(seq_len), "--setup-cap", f"{setup_cap:g}",
           "--artifact", str(scratch / "model.pt"), "--report", str(scratch / "report.json"),
           "--sandbox", "on" if sandbox else "off",
           *(a for cache in caches for a in ("--writable", cache))]
    if pair is not None:
        metrics.warm = True
        proc = pair.train
        started = proc.started
        proc.hand(job, log, out_dir / PID_FILE)
        if slot is not None and key is not None:
            slot.start_pair(key, env, installed)  # the next job's, while this one trains
        code, timed_out = proc.wait(deadline)
    else:
        started = time.monotonic()
        code, timed_out = run_process([sys.executable, "-m", "autoresearch.harness", *job],
                                      cwd=scratch, env=train_env, timeout=deadline, log=log)
    train = _read(scratch / "report.json", TrainReport)
    curves.collect(scratch / curves.CURVE_FILE, out_dir / curves.CURVE_FILE)  # display only
    if train is not None:  # its bookkeeping only; status and error are judged below
        metrics = metrics.model_copy(update=train.model_dump(
            exclude={"status", "error", "ready_at"}))
        metrics.start_seconds = max(0.0, train.ready_at - started) if train.ready_at else 0.0
    if changed := integrity.changed_path(installed, integrity.installed_signature()):
        if slot is not None:
            slot.discard(servers=True)  # they may have imported what changed
        metrics.error = ("the training process changed installed code the evaluation runs: "
                         f"{changed}")
    elif timed_out:
        metrics.status = RunStatus.timeout
        metrics.error = (f"killed at the hard deadline: the training process ran past "
                         f"{deadline:g} s ({budget.describe()} budget, {setup_cap:g} s "
                         f"setup cap)\n{log.recent()}")
    elif train is None or (train.status == RunStatus.ok and code != 0):
        metrics.error = (f"the training process exited with code {code} and no valid "
                         f"report\n{log.recent()}")
    elif train.status != RunStatus.ok:
        metrics.status, metrics.error = train.status, train.error
    else:
        metrics = _evaluate(metrics, scratch / "model.pt", data, sha256, env, log,
                            slot.eval_for(pair, env) if slot and pair else None,
                            then=None if slot is None else lambda: slot.add_eval(env))
    return metrics


def _evaluate(metrics: Metrics, artifact: Path, data: Path, sha256: str,
              env: dict[str, str], log: BoundedLog, warm: _Eval | None = None,
              then: Callable[[], None] | None = None) -> Metrics:
    """Score the artifact in a fresh process of trusted code. It starts in a new empty folder
    (never on sys.path) and answers through a pipe only this process holds, so nothing the
    training process left behind can stand in for its report. ``warm``: that process, started
    earlier, waiting for these arguments; ``then``: what to start once it has answered."""
    own = warm is None
    ev = warm if warm is not None else _start_eval(env)
    job = ["--phase", "eval", "--data", str(Path(data).resolve()), "--expect-sha256", sha256,
           "--device", metrics.device, "--seq-len", str(metrics.seq_len), "--artifact",
           str(artifact), "--out", f"fd:{ev.fd}"]
    try:
        ev.proc.hand(job, log, log.path.parent / PID_FILE)
        code, timed_out = ev.proc.wait(EVAL_TIMEOUT)
        if then is not None:
            then()
        answer = ev.answer()
    finally:
        if own:
            ev.close()
    try:
        result = EvalReport.model_validate_json(answer)
    except ValidationError:
        result = None
    if timed_out:
        metrics.status = RunStatus.timeout
        metrics.error = f"evaluation ran past {EVAL_TIMEOUT:g} s and was killed"
    elif result is None:
        metrics.error = (f"the evaluation process exited with code {code} and no valid "
                         f"report\n{log.recent()}")
    else:
        metrics = metrics.model_copy(update=result.model_dump(
            include={"status", "error", "val_loss", "val_bpb", "eval_tokens", "seq_len",
                     "params", "causal_ok", "eval_seconds", "torch_version"}))
        if result.ready_at:
            metrics.eval_start_seconds = max(0.0, result.ready_at - ev.proc.started)
    return metrics


def run_process(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
                log: BoundedLog, pass_fds: tuple[int, ...] = ()) -> tuple[int, bool]:
    """Run cmd in a new session, output into log; (exit code, killed at the deadline)."""
    proc = _Proc(cmd, cwd=cwd, env=env, pass_fds=pass_fds, pid_file=log.path.parent / PID_FILE,
                 log=log)
    return proc.wait(timeout)


class _Proc:
    """One harness process in its own session. Its output goes to a log (buffered until it
    has one); its pid file names its group for ``kill_stale`` from the moment it starts;
    ``wait`` or ``kill`` ends the whole group. A warm one (``job_pipe``) reads its job from a
    pipe this process holds (``hand``)."""

    def __init__(self, cmd: list[str], *, cwd: Path, env: dict[str, str], pid_file: Path,
                 log: BoundedLog | None = None, pass_fds: tuple[int, ...] = (),
                 job_pipe: bool = False, server: forks.ForkServer | None = None) -> None:
        self.cmd, self.pid_file, self.forked = cmd, pid_file, server is not None
        self._log: BoundedLog | None = None
        self._early = bytearray()  # output before a log is attached
        self._lock = threading.Lock()
        self.started = time.monotonic()
        if log is not None:
            self._attach(log)
        self.proc: subprocess.Popen[bytes] | forks.Forked
        if server is not None:  # forked by a warm server: each pass_fds stays its number
            self.proc = server.fork(cwd=cwd, env=env, fds={fd: fd for fd in pass_fds},
                                    args=cmd)
        else:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.PIPE if job_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=pass_fds)
        try:  # if this process is killed outright, a resumed loop finds and ends the group
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(str(self.proc.pid), encoding="utf-8")
        except BaseException:
            self.kill()
            raise
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _attach(self, log: BoundedLog) -> None:
        shown = " ".join(a for a in self.cmd[1:] if a != _EVAL_BOOT)
        if self.forked:
            shown += ", forked by its phase's fork server"
        with self._lock:
            log.write(f"\n== python {shown} ==\n".encode())
            if self._early:
                log.write(bytes(self._early))
                self._early.clear()
            self._log = log

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):  # type: ignore[attr-defined]
            with self._lock:
                if self._log is not None:
                    self._log.write(chunk)
                else:
                    self._early = (self._early + chunk)[-65536:]

    def hand(self, job: list[str], log: BoundedLog, pid_file: Path) -> None:
        """Give a waiting process its job (its arguments) and this job's log and pid file.
        A warm process that died meanwhile is simply found dead by ``wait``."""
        self._attach(log)
        log.write(f"[runner] job: {' '.join(job)}\n".encode())
        pid_file.write_text(str(self.proc.pid), encoding="utf-8")
        self.pid_file.unlink(missing_ok=True)
        self.pid_file = pid_file
        if self.proc.stdin is None:
            return
        with contextlib.suppress(OSError):  # BrokenPipe: it is gone, wait() says so
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.close()

    def wait(self, timeout: float) -> tuple[int, bool]:
        """(exit code, killed at the deadline); the group is ended either way."""
        timed_out = False
        try:  # Ctrl-C or any error still ends the group and removes the pid file
            _wait_exit(self.proc, timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self.kill()
        self._reader.join(timeout=5.0)  # a child that left the group may hold the pipe
        assert self.proc.returncode is not None
        return self.proc.returncode, timed_out

    def kill(self) -> None:
        _kill_group(self.proc.pid)  # also when it exited: no child of the training code survives
        self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.pid_file.unlink(missing_ok=True)


@dataclass
class _Eval:
    """An evaluation process and the read end of the pipe it answers through."""

    proc: _Proc
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


def _start_eval(env: dict[str, str], warm: Path | None = None, wait: float = 60.0,
                server: forks.ForkServer | None = None) -> _Eval:
    """An evaluation process of trusted code only, waiting for its arguments: in a new empty
    folder, started with -S -E -B and this process's import path. ``warm``: the folder for its
    pid file while it waits (else it is handed its job at once); ``wait``: how long it waits;
    ``server``: the evaluation fork server to fork it from (started the same way)."""
    cwd = Path(tempfile.mkdtemp(prefix="autoresearch-eval-"))
    read_end, write_end = os.pipe()
    try:
        proc = _Proc(_eval_cmd("--wait-for-job", wait), cwd=cwd, env=env,
                     pass_fds=(write_end,), job_pipe=True, pid_file=(warm or cwd) / PID_FILE,
                     server=server)
    except BaseException:
        os.close(read_end)
        shutil.rmtree(cwd, ignore_errors=True)
        raise
    finally:
        os.close(write_end)  # only the child holds it: its exit ends our read
    return _Eval(proc, write_end, read_end, cwd)


def _eval_cmd(warm: str, wait: float) -> list[str]:
    return [sys.executable, "-S", "-E", "-B", "-u", "-c", _EVAL_BOOT,
            json.dumps(integrity.eval_path()), "--phase", "eval", warm, str(os.getpid()),
            "--wait-seconds", f"{wait:g}"]


def _train_cmd(warm: str, wait: float) -> list[str]:
    return [sys.executable, "-m", "autoresearch.harness", "--phase", "train", warm,
            str(os.getpid()), "--wait-seconds", f"{wait:g}"]


@dataclass
class _Pair:
    """The processes of one future job: training (in its scratch folder, with that folder's
    environment) and evaluation (None until started), waiting."""

    key: tuple[object, ...]
    scratch: Path
    folder: Path  # for the pid files
    train: _Proc
    eval: _Eval | None
    installed: integrity.Signature  # taken before either started

    def close(self) -> None:
        self.train.kill()
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
    _next: _Pair | None = field(default=None, init=False)
    _count: int = field(default=0, init=False)
    _servers: dict[str, forks.ForkServer] = field(default_factory=dict, init=False)
    _retired: list[forks.ForkServer] = field(default_factory=list, init=False)
    _server_key: tuple[object, ...] | None = field(default=None, init=False)

    def take(self, key: tuple[object, ...]) -> _Pair | None:
        """The waiting pair, if it was started for jobs like this one and is still alive."""
        pair, self._next = self._next, None
        if pair is not None and (pair.key != key or pair.train.proc.poll() is not None
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

    def eval_for(self, pair: _Pair, env: dict[str, str]) -> _Eval:
        """The pair's evaluation process, started now if it has none or it is gone (a warm one
        stops waiting after ``wait`` seconds, which a long training job can outlast)."""
        if pair.eval is not None and pair.eval.proc.proc.poll() is not None:
            pair.eval.close()
            pair.eval = None
        if pair.eval is None:
            pair.eval = self._eval(pair.key, pair.folder, env)
        return pair.eval

    def spawn(self, key: tuple[object, ...], env: dict[str, str],
              installed: integrity.Signature, with_eval: bool = True) -> _Pair:
        """Start a pair for a job: training in a new scratch folder, with that folder's
        environment, and evaluation; ``installed`` is a signature taken before agent code
        could have run since."""
        self._count += 1
        warm = self.folder / WARM_DIR / f"{os.getpid()}-{self._count}"
        # the evaluation first: training is what the job is handed next, so nothing (such as
        # a fork server's imports) should stand between its start and its job
        ev = self._eval(key, warm, env) if with_eval else None
        scratch = Path(tempfile.mkdtemp(prefix="autoresearch-train-"))
        try:
            server = self._server("train", key, env)
            train = self._proc(_train_cmd("--wait-for-job", self.wait), scratch,
                               integrity.training_env(env, scratch), warm / "train", server)
        except BaseException:
            if ev is not None:
                ev.close()
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return _Pair(key, scratch, warm, train, ev, installed)

    def _proc(self, cmd: list[str], cwd: Path, env: dict[str, str], warm: Path,
              server: forks.ForkServer | None) -> _Proc:
        return self._forked(server, lambda srv: _Proc(
            cmd, cwd=cwd, env=env, pid_file=warm / PID_FILE, job_pipe=True, server=srv))

    def _eval(self, key: tuple[object, ...], folder: Path, env: dict[str, str]) -> _Eval:
        return self._forked(self._server("eval", key, env),
                            lambda srv: _start_eval(env, folder / "eval", self.wait, srv))

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
            folder = self.folder / WARM_DIR / f"{os.getpid()}-server-{self._count}"
            self._server_key = key
            for name, cmd, server_env in (
                    ("train", _train_cmd("--fork-server", self.wait),
                     lambda home: integrity.training_env(env, home)),
                    ("eval", _eval_cmd("--fork-server", self.wait), lambda home: env)):
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
        shutil.rmtree(self.folder / WARM_DIR, ignore_errors=True)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warm_key(env: dict[str, str], device: str) -> tuple[object, ...]:
    """What a pair's processes were started with: a job with other settings starts its own."""
    return (tuple(sorted(env.items())), tempfile.gettempdir(), device, sys.executable)


def kill_stale(folder: Path) -> int:
    """End the process groups of jobs whose orchestrator died (their pid files remain under
    ``folder``); returns how many were still alive."""
    killed = 0
    for pid_file in folder.rglob(PID_FILE):
        with contextlib.suppress(ValueError, OSError):
            pgid = int(pid_file.read_text(encoding="utf-8").strip())
            cmdline = Path(f"/proc/{pgid}/cmdline")
            # only a harness process: the pid may have been reused since
            if not cmdline.exists() or b"autoresearch.harness" in cmdline.read_bytes():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                    killed += 1
        pid_file.unlink(missing_ok=True)
    return killed


class BoundedLog:
    """A log file that keeps the first and the last ``head``/``tail`` bytes written to it,
    with a marker saying how much was cut in between."""

    def __init__(self, path: Path, *, head: int = LOG_HEAD, tail: int = LOG_TAIL,
                 echo: bool = False) -> None:
        self.path, self.head, self.tail, self.echo = path, head, tail, echo
        self._file: IO[bytes] = path.open("wb")
        self._written = 0
        self._tail = bytearray()
        self._cut = 0
        self._recent = bytearray()
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if self._file.closed:
                return
            if self.echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            self._recent = (self._recent + chunk)[-4096:]
            room = self.head - self._written
            if room > 0:
                self._file.write(chunk[:room])
                self._written += min(room, len(chunk))
                chunk = chunk[room:]
            self._tail += chunk
            if len(self._tail) > self.tail:
                self._cut += len(self._tail) - self.tail
                del self._tail[: len(self._tail) - self.tail]

    def recent(self, lines: int = 8) -> str:
        """The last lines of output, for error messages."""
        with self._lock:
            text = self._recent.decode("utf-8", "replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def close(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            if self._cut:
                self._file.write(f"\n[... {self._cut:,} bytes cut from the middle of this log "
                                 "...]\n".encode())
            self._file.write(bytes(self._tail))
            self._file.close()

    def __enter__(self) -> BoundedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_exit(proc: subprocess.Popen[bytes] | forks.Forked, timeout: float) -> None:
    """``proc.wait(timeout)``, woken by the exit itself where Linux offers a pidfd: Popen's
    own wait polls, sleeping up to 50 ms between looks, twice per measurement."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or already reaped
        proc.wait(timeout=timeout)
        return
    try:
        if not select.select([pidfd], [], [], max(0.0, timeout))[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    proc.wait()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _train_deadline(budget: Budget, setup_cap: float) -> float:
    if budget.kind == "tokens":
        return TOKEN_BUDGET_TIMEOUT
    overtime = budget.amount * (1 + TIME_GRACE[0]) + TIME_GRACE[1]  # where the harness stops it
    return setup_cap + overtime + EXPORT_ALLOWANCE + GRACE


def sandbox_state(enabled: bool) -> str:
    """What a training process started now will be fenced in by (the trusted side's view:
    the harness sets the fence up before any agent code runs, or fails)."""
    if not enabled:
        return "off"
    version = sandbox_mod.abi()
    return f"landlock v{version}" if version else "none (no Landlock on this system)"


def _read(path: Path, model: type[_M]) -> _M | None:
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError, ValueError):
        return None


def _finish(metrics: Metrics, out_dir: Path, started: float) -> Metrics:
    metrics.total_seconds = time.monotonic() - started
    metrics.exposed_seconds = max(0.0, metrics.total_seconds - metrics.train_seconds)
    metrics = Metrics.model_validate(metrics.model_dump())  # re-check: no metric unless ok
    metrics.write(out_dir / "metrics.json")
    return metrics
