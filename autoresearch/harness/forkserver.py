"""A fork server: one process of trusted code that imports a phase once and forks a fresh
child for every job, so that no job pays Python and torch start-up (seconds of CPU each).

``python -m autoresearch.harness --phase P --fork-server PID`` imports what a warm process of
that phase imports (``command._prewarm``), then serves requests from the runner
(``runner._ForkServer``) on its stdin, a Unix socket: each request carries the working folder
and environment of one process and the file descriptors it is to hold (stdin, stdout and
stderr, and for evaluation its answer pipe). The server forks; the child drops the socket,
takes those descriptors, folder and environment, and from there on is exactly a warm process
of the phase: it waits for its one job on stdin (``command.run_warm``) and exits. The server
tells the runner each child's pid, and its exit code once it has reaped it.

The server itself never runs a job, never imports agent code and keeps nothing a child sends
it: it closes the descriptors of each request as soon as it has forked. A child therefore
starts from the server's state, never from another job's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

from autoresearch.harness.warm import die_with, exit_now

MAX_FDS = 8


def serve(parent: int, wait: float, run_child: Callable[[], int]) -> int:
    """Fork a child per request until the runner stops asking (then wait for the children
    still running), dies, or sends nothing for ``wait`` seconds with no child alive; returns
    the server's exit code. In a child,
    ``run_child`` runs and the process ends with its code: this function never returns there."""
    sock = socket.socket(fileno=0)
    me, home = os.getpid(), os.getcwd()
    children: dict[int, int] = {}  # pidfd -> pid
    idle_since = time.monotonic()
    serving = True  # until the runner retires it: then it only sees its children out
    while True:
        if os.getppid() != parent:
            return 0
        timeout = 1.0 if children else max(0.0, min(1.0, idle_since + wait - time.monotonic()))
        if not children and (timeout <= 0 or not serving):
            return 0
        watched = [sock.fileno()] if serving else []
        readable: list[int] = select.select([*watched, *children], [], [], timeout)[0]
        for pidfd in [r for r in readable if r != sock.fileno()]:
            pid = children.pop(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
            idle_since = time.monotonic()
        if sock.fileno() not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, MAX_FDS)
        except OSError:
            data, fds = b"", []
        if not data:  # the runner is done asking: its children still run, and die with it
            serving = False
            continue
        idle_since = time.monotonic()
        try:
            req = json.loads(data)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except BaseException as e:
            for fd in fds:
                os.close(fd)
            _send(sock, {"error": f"{type(e).__name__}: {e}"})
            continue
        if pid == 0:
            sock.close()
            for pidfd in children:  # its siblings are none of its business
                os.close(pidfd)
            _child(run_child, req, fds, me, home)
        for fd in fds:  # the next child must not hold this one's pipes
            os.close(fd)
        with contextlib.suppress(OSError):  # its own process group, before the runner hears of it
            os.setpgid(pid, pid)
        children[os.pidfd_open(pid)] = pid
        _send(sock, {"pid": pid})


def _child(run: Callable[[], int], req: dict[str, object], fds: list[int], server: int,
           home: str) -> None:
    """Set up a forked child and run it to its end: it never returns into the server's loop."""
    code = 70
    try:
        code = run() if _become(req, fds, server, home) else 0
    except SystemExit as e:  # as the interpreter would report it
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        exit_now(code)


def _become(req: dict[str, object], fds: list[int], server: int, home: str) -> bool:
    """In a new child: its own process group, dying with the server; the request's descriptors
    as 0, 1, 2 (and 3, ...), folder and environment. False if the server is already gone."""
    with contextlib.suppress(OSError):  # the server also sets it: whichever runs first
        os.setpgid(0, 0)
    targets = req["fds"]
    assert isinstance(targets, list) and len(targets) == len(fds)
    # out of the way first: a target may be the number one of the others arrived as
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 256) for fd in fds]
    for fd in fds:
        os.close(fd)
    for fd, target in zip(high, targets, strict=True):
        os.dup2(fd, int(target))
    for fd in high:
        os.close(fd)
    if not die_with(server):
        return False
    cwd = str(req["cwd"])
    os.chdir(cwd)
    env = req["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    tempfile.tempdir = None  # TMPDIR is the job's now
    # as if started in the job's folder: ``-m`` put the start folder first on the path
    sys.path[:] = [cwd if p == home else p for p in sys.path]
    return True


def _send(sock: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):  # the runner is gone: the next select says so
        sock.send(json.dumps(message).encode())
