"""Where measurements run: a ``Job`` (runner.Job: a measurement as data) handed to a
``Worker``. The loop sees only this seam; ``make_workers`` builds the workers the settings ask
for, on this machine (``local``) or on a Ray cluster (``ray``, imported only when used).
Tests and benchmarks give the loop fake workers instead of patching modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from autoresearch.backends.local import LocalWorker, cpu_cores, local_workers, parse_gpus
from autoresearch.config import Settings
from autoresearch.metrics import Metrics
from autoresearch.runner import Job

__all__ = ["Job", "LocalWorker", "Worker", "cpu_cores", "local_workers", "make_workers",
           "parse_gpus"]


class Worker(Protocol):
    """Runs one job at a time; a loop with N workers runs N jobs at once."""

    name: str  # recorded with each measurement: "w0", "w1 gpu 3", "ray 10.0.0.7"

    @property
    def shares_host_cores(self) -> bool:
        """Its jobs train on this machine's CPU cores, beside the other workers' jobs (so,
        under a wall-clock budget, each slows the others)."""
        ...

    def measure(self, job: Job) -> Metrics:
        """Never raises for a failed job: the Metrics says what failed."""
        ...

    def cancel(self) -> None:
        """End the job in flight, if any, from another thread: ``measure`` then returns soon
        (with a failed Metrics). A worker with nothing in flight does nothing."""
        ...

    def close(self) -> None:
        """Release what the worker holds (warm processes, the cluster); from its own thread."""
        ...


def make_workers(settings: Settings, device: str, folder: Path) -> list[Worker]:
    """The workers ``--workers``, ``--gpu`` and ``--backend`` ask for."""
    if settings.backend == "ray":
        from autoresearch.backends.ray import ray_workers

        n = settings.workers or 1
        threads = None if device.startswith("cuda") or n == 1 else max(1, cpu_cores() // n)
        return list(ray_workers(settings.ray_address, n, device=device, threads=threads,
                                folder=folder))
    return list(local_workers(folder, device, settings.workers, settings.gpu))
