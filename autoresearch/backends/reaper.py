"""The reaper of one Ray job on its node, run as a script (``python -P reaper.py FOLDER``).

It forks first and lives on as the child (Ray kills a dead worker's child processes, not
their children), then waits until its stdin closes: the task's worker ended, was cancelled or
died. Then it ends every process group the job left behind (the runner writes each group's id
to a job.pid file), and removes the job's folder and the processes' scratch folders (their
working folders). Only the standard library is imported until there is something to kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

PID_FILE = "job.pid"  # runner.PID_FILE (not imported: that would load the runner every time)


def main(folder: Path) -> None:
    if os.fork():
        os._exit(0)
    sys.stdin.buffer.read()
    scratch: list[str] = []
    for pid_file in folder.rglob(PID_FILE):
        with contextlib.suppress(OSError, ValueError):
            scratch.append(os.readlink(f"/proc/{int(pid_file.read_text())}/cwd"))
    if any(folder.rglob(PID_FILE)):
        from autoresearch.runner import kill_stale

        kill_stale(folder)
    for path in [folder, *(Path(p) for p in scratch if "autoresearch-" in p)]:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
