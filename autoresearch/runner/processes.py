"""Process lifecycle: one harness process in its own session, its bounded log, its deadline.

Each process runs in its own session (process group); ``kill`` ends the whole group, children
of the training code included, and its pid file names the group from the moment it starts, so
a loop that was killed outright finds and ends it on ``--resume`` (``kill_stale``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from autoresearch.runner import forks

PID_FILE = "job.pid"  # the running job's process group, while it runs
LOG_HEAD = LOG_TAIL = 64 * 1024  # bytes of run.log kept from the start and from the end


def run_process(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
                log: BoundedLog, pass_fds: tuple[int, ...] = ()) -> tuple[int, bool]:
    """Run cmd in a new session, output into log; (exit code, killed at the deadline)."""
    proc = Proc(cmd, cwd=cwd, env=env, pass_fds=pass_fds, pid_file=log.path.parent / PID_FILE,
                 log=log)
    return proc.wait(timeout)


class Proc:
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
        self.handed_at = self.started  # when it was given its job (a warm one: by ``hand``)
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
        shown = " ".join(a for a in self.cmd[1:] if not a.startswith("import sys"))
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
        self.handed_at = time.monotonic()
        if self.proc.stdin is None:
            return
        with contextlib.suppress(OSError):  # BrokenPipe: it is gone, wait() says so
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.close()

    def wait(self, timeout: float) -> tuple[int, bool]:
        """(exit code, killed at the deadline); the group is ended either way."""
        timed_out = False
        try:  # Ctrl-C or any error still ends the group and removes the pid file
            wait_exit(self.proc, timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self.kill()
        self._reader.join(timeout=5.0)  # a child that left the group may hold the pipe
        assert self.proc.returncode is not None
        return self.proc.returncode, timed_out

    def kill(self) -> None:
        kill_group(self.proc.pid)  # also when it exited: no child of the training code survives
        self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.pid_file.unlink(missing_ok=True)


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


def wait_exit(proc: subprocess.Popen[bytes] | forks.Forked, timeout: float) -> None:
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


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


