"""A CPU-bound background load that a benchmark or a test starts and stops at set moments.

Each busy process gets its own session: with the kernel's autogroup scheduling (the default
on desktop and many server kernels) CPU time is shared between sessions first, and the
training process runs in a session of its own, so busy loops sharing one session would take
far less of the machine than their number says.
"""

from __future__ import annotations

import os
import subprocess
import sys

# a busy loop that ends with the process that started it, even one killed without cleanup
# (Linux: PR_SET_PDEATHSIG; elsewhere the loop only checks that its parent is still there)
_BUSY = ("import ctypes, os, signal, sys\n"
         "parent = os.getppid()\n"
         "if sys.platform == 'linux':\n"
         "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
         "n = 0\n"
         "while True:\n"
         "    n += 1\n"
         "    if n % 10_000_000 == 0 and os.getppid() != parent:\n"
         "        break\n")


class CpuLoad:
    """``processes`` busy loops (default: two per core), started by ``start``, ended by ``stop``."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes or 2 * (os.cpu_count() or 1)
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def running(self) -> bool:
        return bool(self._procs)

    def start(self) -> None:
        if self._procs:
            return
        for _ in range(self.processes):
            self._procs.append(subprocess.Popen(
                [sys.executable, "-c", _BUSY], start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))

    def stop(self) -> None:
        for p in self._procs:
            p.kill()
        for p in self._procs:
            p.wait()
        self._procs = []

    def __enter__(self) -> CpuLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
