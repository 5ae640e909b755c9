"""The runner's side of a fork server (:mod:`autoresearch.harness.forkserver`).

A ``ForkServer`` is one harness process of one phase that has imported torch and the phase's
trusted modules once; ``fork`` asks it for a child, a warm process of that phase waiting for
its job, and returns it as a ``Forked``: enough of ``subprocess.Popen`` (pid, stdin, stdout,
poll, wait, returncode) for ``runner._Proc`` to treat it like a process it started itself.
The server reaps its children and reports their exit codes; this side waits on a pidfd.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

READY_TIMEOUT = 300.0  # seconds a fork request waits (the first one waits for the imports)
CODE_TIMEOUT = 10.0  # seconds to hear an exited child's code from the server


class ForkFailed(Exception):
    pass


def available() -> bool:
    """Fork servers need Linux's pidfds and descriptor passing."""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") \
        and hasattr(socket, "send_fds")


class ForkServer:
    """A fork server started in a new empty folder of its own (removed by ``close``), with the
    environment ``env`` makes for that folder."""

    def __init__(self, cmd: list[str], *, env: Callable[[Path], dict[str, str]],
                 pid_file: Path, log: Path) -> None:
        self.cmd, self.pid_file = cmd, pid_file
        self.home = Path(tempfile.mkdtemp(prefix="autoresearch-forkserver-"))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self._lock = threading.Lock()  # one request at a time
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._codes: dict[int, int] = {}
        self._heard = threading.Condition()
        self.dead = False
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with theirs, log.open("ab") as out:
                self.proc = subprocess.Popen(cmd, cwd=self.home, env=env(self.home),
                                             stdin=theirs.fileno(), stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            ours.close()
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(str(self.proc.pid), encoding="utf-8")
        threading.Thread(target=self._listen, name="fork server", daemon=True).start()

    def _listen(self) -> None:
        try:
            while data := self.sock.recv(65536):
                message = json.loads(data)
                if "exit" in message:
                    with self._heard:
                        self._codes[int(message["exit"])] = int(message["code"])
                        self._heard.notify_all()
                else:
                    self._replies.put(message)
        except (OSError, ValueError):
            pass
        with self._heard:
            self.dead = True
            self._heard.notify_all()
        self._replies.put({"error": "the fork server has ended"})

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def fork(self, *, cwd: Path, env: dict[str, str], fds: dict[int, int],
             args: list[str]) -> Forked:
        """A child in folder ``cwd`` with environment ``env``, holding ``fds`` (the number it
        will see -> ours), its stdin and stdout/stderr being pipes to us."""
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        sent = {0: stdin_r, 1: out_w, 2: out_w, **fds}
        try:
            with self._lock:
                if not self.alive():
                    raise ForkFailed("the fork server has ended")
                request = {"cwd": str(cwd), "env": env, "fds": list(sent)}
                try:
                    socket.send_fds(self.sock, [json.dumps(request).encode()],
                                    list(sent.values()))
                    reply = self._replies.get(timeout=READY_TIMEOUT)
                except (OSError, queue.Empty) as e:
                    raise ForkFailed(f"the fork server did not answer: {e}") from e
            if "pid" not in reply:
                raise ForkFailed(str(reply.get("error")))
        except BaseException:
            for fd in (stdin_w, out_r):
                os.close(fd)
            raise
        finally:
            os.close(stdin_r)
            os.close(out_w)
        return Forked(self, int(reply["pid"]), os.fdopen(stdin_w, "wb"),
                      os.fdopen(out_r, "rb"), args)

    def code(self, pid: int, timeout: float = CODE_TIMEOUT) -> int:
        """An exited child's exit code (-SIGKILL if the server could not say)."""
        with self._heard:
            self._heard.wait_for(lambda: pid in self._codes or self.dead, timeout)
            return self._codes.pop(pid, -signal.SIGKILL)

    def retire(self) -> None:
        """Ask for nothing more: the server exits once its children have (a job still running
        in one of them is not cut short), telling us their exit codes meanwhile."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """End the server now; its children die with it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.pid_file.unlink(missing_ok=True)
        shutil.rmtree(self.home, ignore_errors=True)


class Forked:
    """A fork server's child, seen as a ``subprocess.Popen``."""

    def __init__(self, server: ForkServer, pid: int, stdin: IO[bytes], stdout: IO[bytes],
                 args: list[str]) -> None:
        self.server, self.pid, self.stdin, self.stdout, self.args = (server, pid, stdin,
                                                                     stdout, args)
        self.returncode: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # already gone (it cannot have been replaced: it waits for its job)
            self._pidfd = -1

    def poll(self) -> int | None:
        if self.returncode is None and (
                self._pidfd < 0 or select.select([self._pidfd], [], [], 0)[0]):
            self._reap()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if self._pidfd >= 0 and not select.select([self._pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        self._reap()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        self.returncode = self.server.code(self.pid)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
