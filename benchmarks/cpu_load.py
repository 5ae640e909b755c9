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
                [sys.executable, "-c", "while True: pass"], start_new_session=True,
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
