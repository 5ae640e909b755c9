"""Run one measurement: the harness's training process, then its evaluation process.

Each process runs in its own session (process group) under a hard deadline; at the deadline,
or when it exits, the whole group is killed, children of the training code included.

The training process is only told about a scratch folder: a copy of the train split, the
source, and where to put its model artifact and its report. The evaluation process reads
the artifact and the real dataset and reports to a second folder the training process never
heard of. This function then writes ``out_dir/metrics.json`` from the two reports; nothing
the training process prints or writes can become the metric.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TypeVar

from pydantic import BaseModel, ValidationError

from autoresearch import curves, integrity
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
LOG_HEAD = LOG_TAIL = 64 * 1024  # bytes of run.log kept from the start and from the end
_M = TypeVar("_M", bound=BaseModel)
# The evaluation process runs trusted code only, never anything from its working directory: it
# starts with -S -E (no site-packages .pth files or sitecustomize run, no PYTHON* variables
# read) and gets the import path this process had, as an argument.
_EVAL_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv.pop(1)); "
              "from autoresearch.harness import main; sys.exit(main())")


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


def measure(
    *,
    source: Path,
    data: Path,
    budget: Budget,
    seed: int,
    device: str,
    out_dir: Path,
    setup_cap: float = SETUP_CAP,
    timeout: float | None = None,
    gpu: str | None = None,
    seq_len: int = 256,
    echo: bool = False,
    sandbox: bool = True,
    expect_sha256: str | None = None,
) -> Metrics:
    """Train ``source`` under ``budget`` and evaluate it; write out_dir/{run.log,metrics.json}.

    Never raises for a failed job: the returned Metrics has a non-ok status and an error.
    ``timeout`` overrides the training process's hard deadline; ``echo`` also copies the
    processes' output to this process's stdout; ``sandbox`` fences the training process in
    with Landlock where the OS has it (autoresearch/sandbox.py); ``expect_sha256`` refuses,
    before training, a dataset other than the one a run was measured on.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    metrics = Metrics(status=RunStatus.crash, seed=seed, device=device, seq_len=seq_len)
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
    env = integrity.child_env(gpu)
    sys.dont_write_bytecode = True  # our own late imports must not change the watched files
    installed = integrity.installed_signature()
    log = BoundedLog(out_dir / "run.log", echo=echo)
    with log, tempfile.TemporaryDirectory(prefix="autoresearch-train-") as scratch_name:
        scratch = Path(scratch_name)
        train_data = scratch / "data"
        train_data.mkdir()
        # a copy, not a link: the training code can neither learn where the dataset lives
        # nor write into it
        shutil.copyfile(data / "train.bin", train_data / "train.bin")
        shutil.copyfile(data / "meta.json", train_data / "meta.json")
        train_env = integrity.training_env(env, scratch)
        metrics.sandbox = sandbox_state(sandbox)
        if metrics.sandbox.startswith("landlock"):
            metrics.sandbox += integrity.dataset_exposed(data, source, scratch)
        caches = [train_env["TRITON_CACHE_DIR"], train_env["TORCHINDUCTOR_CACHE_DIR"]]
        for cache in caches:
            with contextlib.suppress(OSError):
                Path(cache).mkdir(parents=True, exist_ok=True)
        deadline = timeout if timeout is not None else _train_deadline(budget, setup_cap)
        code, timed_out = run_process(
            [sys.executable, "-m", "autoresearch.harness", "--phase", "train",
             "--source", str(Path(source).resolve()), "--data", str(train_data),
             *budget.cli_args(), "--seed", str(seed), "--device", device,
             "--seq-len", str(seq_len), "--setup-cap", f"{setup_cap:g}",
             "--artifact", str(scratch / "model.pt"), "--report", str(scratch / "report.json"),
             "--sandbox", "on" if sandbox else "off",
             *(a for cache in caches for a in ("--writable", cache))],
            cwd=scratch, env=train_env, timeout=deadline, log=log)
        train = _read(scratch / "report.json", TrainReport)
        curves.collect(scratch / curves.CURVE_FILE, out_dir / curves.CURVE_FILE)  # display only
        if train is not None:  # its bookkeeping only; status and error are judged below
            metrics = metrics.model_copy(update=train.model_dump(exclude={"status", "error"}))
        if changed := integrity.changed_path(installed, integrity.installed_signature()):
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
            metrics = _evaluate(metrics, scratch / "model.pt", data, prepared.sha256, env, log)
        metrics = _finish(metrics, out_dir, started)
        log.write(f"\n== {metrics.status.value}: val_bpb {metrics.val_bpb}, "
                  f"{metrics.total_seconds:.1f} s ==\n".encode())
    return metrics


def _evaluate(metrics: Metrics, artifact: Path, data: Path, sha256: str,
              env: dict[str, str], log: BoundedLog) -> Metrics:
    """Score the artifact in a fresh process of trusted code. It starts in a new empty folder
    (never on sys.path) and answers through a pipe only this process holds, so nothing the
    training process left behind can stand in for its report."""
    read_end, write_end = os.pipe()
    with tempfile.TemporaryDirectory(prefix="autoresearch-eval-") as cwd:
        try:
            code, timed_out = run_process(
                [sys.executable, "-S", "-E", "-B", "-u", "-c", _EVAL_BOOT,
                 json.dumps(integrity.eval_path()), "--phase", "eval", "--data",
                 str(Path(data).resolve()), "--expect-sha256", sha256, "--device",
                 metrics.device, "--seq-len", str(metrics.seq_len), "--artifact",
                 str(artifact), "--out", f"fd:{write_end}"],
                cwd=Path(cwd), env=env, timeout=EVAL_TIMEOUT, log=log, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read()
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
    return metrics


def run_process(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
                log: BoundedLog, pass_fds: tuple[int, ...] = ()) -> tuple[int, bool]:
    """Run cmd in a new session, output into log; (exit code, killed at the deadline)."""
    shown = " ".join(a for a in cmd[1:] if a != _EVAL_BOOT)
    log.write(f"\n== python {shown} ==\n".encode())
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, pass_fds=pass_fds)
    assert proc.stdout is not None
    # if this process is killed outright (SIGKILL), a resumed loop finds and ends the group
    pid_file = log.path.parent / PID_FILE
    timed_out = False
    try:  # from here on, Ctrl-C or any error still ends the group and removes the pid file
        pid_file.write_text(str(proc.pid), encoding="utf-8")
        reader = threading.Thread(target=_pump, args=(proc.stdout, log), daemon=True)
        reader.start()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)  # also when it exited: no child of the training code survives
        proc.wait()
        pid_file.unlink(missing_ok=True)
    reader.join(timeout=5.0)  # a child that left the group may hold the pipe: don't wait
    return proc.returncode, timed_out


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


def _pump(stream: IO[bytes], log: BoundedLog) -> None:
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        log.write(chunk)


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
    metrics = Metrics.model_validate(metrics.model_dump())  # re-check: no metric unless ok
    metrics.write(out_dir / "metrics.json")
    return metrics
