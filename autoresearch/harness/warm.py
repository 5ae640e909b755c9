"""How a harness process lives before and after its one job: dying with the runner, waiting
for the job's arguments, ending at once. Shared by warm processes
(:mod:`autoresearch.harness.command`) and fork servers (:mod:`autoresearch.harness.forkserver`).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def exit_now(code: int) -> None:
    """End the process at once, reports written: an interpreter's teardown with torch (and
    torch._dynamo, after an export) loaded takes ~0.7 s of the device's time, and nothing is
    left to clean (the runner ends the process group and removes the scratch folder)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def die_with(parent: int) -> bool:
    """From here on, die with the runner (Linux), also while still importing; False if the
    runner is already gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


def await_job(parent: int, wait: float) -> list[str] | None:
    """The job's arguments (one JSON line on stdin), or None: no job within ``wait`` seconds,
    stdin closed, or the runner gone."""
    deadline = time.monotonic() + wait
    line = b""
    while b"\n" not in line:
        left = deadline - time.monotonic()
        if left <= 0 or os.getppid() != parent:
            return None
        readable, _, _ = select.select([0], [], [], min(left, 1.0))
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                return None
            line += chunk
    # the runner's pipe is closed to whatever runs next: stdin is /dev/null, as when cold
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    job = json.loads(line.split(b"\n", 1)[0])
    if not isinstance(job, list) or not all(isinstance(a, str) for a in job):
        raise SystemExit("a warm process was handed a job that is not a list of arguments")
    return job
