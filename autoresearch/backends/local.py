"""The local backend: workers on this machine, each on its own GPU or its share of the CPU
cores, running the runner in warm processes of its own (``runner.Slot``)."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import runner
from autoresearch.errors import UsageError
from autoresearch.metrics import Metrics
from autoresearch.runner import Job


@dataclass
class LocalWorker:
    """A worker on this machine: its jobs see only ``gpu`` (CUDA_VISIBLE_DEVICES) and use
    ``threads`` torch threads; the next job's processes start while the current one trains."""

    name: str
    folder: Path  # the experiments folder (warm processes' pid files go under it)
    gpu: str | None = None
    threads: int | None = None
    _slot: runner.Slot | None = field(default=None, init=False)
    _job: Job | None = field(default=None, init=False)  # the job in flight
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def shares_host_cores(self) -> bool:
        """Its jobs train on this machine's CPU cores, beside the other workers' jobs."""
        return self.gpu is None

    def measure(self, job: Job) -> Metrics:
        if self._slot is None:
            self._slot = runner.Slot(self.folder)
        # a worker's processes see only its GPU, as their device 0
        device = "cuda" if self.gpu is not None and job.device.startswith("cuda") else job.device
        with self._lock:
            self._job = job
        try:
            m = runner.measure(dataclasses.replace(job, device=device), slot=self._slot,
                               gpu=self.gpu, threads=self.threads)
        finally:
            with self._lock:
                self._job = None
        return m.model_copy(update={"worker": self.name})

    def cancel(self) -> None:
        """End the job in flight, if any (its process groups, found by their pid files in the
        job's folder): its ``measure`` returns a failed measurement at once."""
        with self._lock:
            job = self._job
        if job is not None:
            runner.kill_stale(job.out_dir)

    def close(self) -> None:
        if self._slot is not None:
            self._slot.close()
            self._slot = None


def parse_gpus(gpu: str | None) -> list[str]:
    """``--gpu 0,1,3`` -> ["0", "1", "3"]; a bad list is a UsageError."""
    if gpu is None or gpu.strip() == "":
        return []
    items = [g.strip() for g in gpu.split(",")]
    bad = [g for g in items if not re.fullmatch(r"\d+|GPU-[0-9a-fA-F-]+|MIG-[\w/-]+", g)]
    if bad or len(set(items)) != len(items):
        raise UsageError(f"bad --gpu list {gpu!r}: give distinct device indices or UUIDs "
                         "separated by commas, e.g. --gpu 0,1")
    return items


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_workers(folder: Path, device: str, workers: int | None, gpu: str | None
                  ) -> list[LocalWorker]:
    """The workers for ``--workers``/``--gpu``: one per listed GPU (each job sees only its
    own), else ``workers`` (default 1) sharing the CPU cores (threads = cores / workers)."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    gpus = parse_gpus(gpu)
    if gpus:
        n = workers or len(gpus)
        if n > len(gpus):
            raise UsageError(f"--workers {n} needs {n} GPUs, but --gpu lists {len(gpus)} "
                             f"({gpu}); list one GPU per worker")
        return [LocalWorker(f"w{i} gpu {g}", folder, gpu=g) for i, g in enumerate(gpus[:n])]
    n = workers or 1
    if n == 1:
        return [LocalWorker("w0", folder)]
    if device.startswith("cuda"):
        raise UsageError(f"--workers {n} on CUDA needs one GPU per worker: list them with "
                         f"--gpu (e.g. --gpu {','.join(str(i) for i in range(n))})")
    cores = cpu_cores()
    if n > cores:
        raise UsageError(f"--workers {n} is more than the {cores} CPU cores here: jobs "
                         "side by side would only slow each other down")
    return [LocalWorker(f"w{i}", folder, threads=cores // n) for i in range(n)]
