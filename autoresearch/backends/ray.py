"""The Ray backend, the orchestrator's side: each job a Ray task running the same runner +
harness on the node it lands on (``ray_node``: what the task does there).

A ``RayWorker`` sends one job at a time: the source folder's files (without .git) travel with
the task, the prepared dataset through Ray's object store (put once per dataset, shared by
every worker), and the task reserves one GPU (``num_gpus=1``) or its CPUs, with
``max_retries=0``: a measurement is never silently run twice. The task's Metrics and files
come back and are written into the job's out_dir.

A task that runs past the job's hard deadline (the runner's own worst case plus a margin), or
that ``cancel`` ends, is force-cancelled (``ray.cancel(force=True)``; the job's reaper on the
node ends what it started) and recorded as ``timeout`` or ``crash``; a worker or node that
dies mid-job is recorded as ``crash`` ("ray node ... died: ..."). None of it raises into the
loop. Ray is optional (``pip install 'autoresearch[ray]'``) and imported only here, when used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch import data as data_mod
from autoresearch import runner
from autoresearch.backends import ray_node
from autoresearch.errors import DataError, UsageError, one_line
from autoresearch.metrics import Metrics
from autoresearch.models import RunStatus
from autoresearch.runner import Job

RAY_SLACK = 30.0  # seconds beyond the runner's own deadlines: unpacking, the dataset, hashing
START_TIMEOUT = 900.0  # seconds a job may wait for a node with room before it is given up
SETTLE_TIMEOUT = 30.0  # seconds to wait for a cancelled task's worker to be gone
PROBE_TIMEOUT = 5.0  # seconds for the cluster's address to answer
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)  # + an empty SETTINGS frame
_DATASET_FILES = ("train.bin", "val.bin", "test.bin", "meta.json")  # test.bin: if prepared
_connected: dict[str, str | None] = {}  # the address this process's ray.init was given


def ray_workers(address: str | None, n: int, *, device: str, threads: int | None,
                folder: Path) -> list[RayWorker]:
    """``n`` workers on the Ray cluster at ``address`` (None: Ray's own lookup, RAY_ADDRESS or
    a Ray started on this machine, else a new local one), each running one job at a time and
    reserving one GPU (``device`` cuda) or ``threads`` CPUs (default 1) per job.

    A UsageError, in one line, when Ray is not installed, when nothing answers at ``address``
    (within seconds), or when the cluster has no room for ``n`` such jobs at once. ``folder``
    (the experiments folder) is not needed: a job's files live on its node until they return.
    """
    del folder
    if n < 1:
        raise UsageError(f"--workers must be at least 1, not {n}")
    need = _needs(device, threads)
    cluster = _Cluster.connect(address)
    cluster.users = n
    try:
        room, nodes = cluster.room(need)
        if room == 0:
            raise UsageError(f"the Ray cluster at {cluster.where} has no node with "
                             f"{_describe(need)} for one job (it has {nodes})")
        if n > room:
            raise UsageError(f"--workers {n} needs room for {n} jobs at once, but the Ray "
                             f"cluster at {cluster.where} has room for {room} "
                             f"({_describe(need)} each; it has {nodes})")
    except BaseException:
        cluster.release(n)
        raise
    return [RayWorker(f"ray w{i}", cluster, threads=threads) for i in range(n)]


def hard_deadline(job: Job) -> float:
    """Seconds a job's task may run once it has started on its node: the runner's own worst
    case (the training deadline, the evaluation's, the process start-ups) plus RAY_SLACK."""
    train = job.timeout if job.timeout is not None else runner.train_deadline(
        job.budget, job.setup_cap)
    return train + runner.EVAL_TIMEOUT + runner.GRACE + RAY_SLACK


@dataclass
class RayWorker:
    """One job at a time on the cluster. ``deadline`` overrides ``hard_deadline(job)`` (seconds
    after the task started on its node); ``on_start(node_ip, pid)`` is told where a job's task
    started (the pid of the Ray worker process running it)."""

    name: str
    cluster: _Cluster
    threads: int | None = None
    deadline: float | None = None
    on_start: Callable[[str, int], None] | None = None
    shares_host_cores = False  # its jobs run on the cluster's nodes, on cores they reserved
    _inflight: Any = field(default=None, init=False, repr=False)
    _closed: bool = field(default=False, init=False)
    _cancelled: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def measure(self, job: Job) -> Metrics:
        started = time.monotonic()
        if self._closed:
            return self._failed(job, started, None, "this Ray worker was closed")
        try:
            spec = self.cluster.spec(job, self._threads(job))
        except (OSError, DataError, self.cluster.ray.exceptions.RayError) as e:
            return self._failed(job, started, None, f"could not send the job to Ray: {e}")
        ray = self.cluster.ray
        gen = self.cluster.task.options(
            **self._resources(job), max_retries=0,
            name=f"autoresearch {self.name} seed {job.seed}").remote(spec)
        with self._lock:
            self._inflight, self._cancelled = gen, False
        node: str | None = None
        settled = False
        try:
            ready, _ = ray.wait([gen], timeout=START_TIMEOUT)
            if not ready:
                return self._failed(job, started, None, f"no Ray node started the job within "
                                    f"{START_TIMEOUT:g} s (the cluster is full or lost its "
                                    "nodes)")
            try:
                first = ray.get(next(gen))
                node = str(first["node"])
                if self.on_start is not None:
                    self.on_start(node, int(first["pid"]))
                limit = self.deadline if self.deadline is not None else hard_deadline(job)
                ready, _ = ray.wait([gen], timeout=limit)
                if not ready:
                    return self._failed(
                        job, started, node, f"cancelled at the hard deadline: the Ray task on "
                        f"node {node} ran past {limit:g} s ({job.budget.describe()} budget, "
                        f"{job.setup_cap:g} s setup cap)", RunStatus.timeout)
                result = ray.get(next(gen))
                settled = True
            except (ray.exceptions.RayError, StopIteration) as e:
                settled = True
                return self._failed(job, started, node, self._lost(e, node))
            return self._finish(job, started, node, result)
        finally:
            with self._lock:
                self._inflight = None
            if not settled:  # the deadline, no room, Ctrl-C: the task must not run on
                self._cancel(gen)

    def cancel(self) -> None:
        """End the job in flight, if any: its ``measure`` returns a failed measurement soon."""
        with self._lock:
            gen = self._inflight
            self._cancelled = gen is not None
        if gen is not None:
            with contextlib.suppress(Exception):
                self.cluster.ray.cancel(gen, force=True)

    def close(self) -> None:
        """Cancel the job in flight, if any; the last worker closed disconnects from Ray."""
        with self._lock:
            gen, self._inflight = self._inflight, None
            was_closed, self._closed = self._closed, True
        if gen is not None:
            with contextlib.suppress(Exception):
                self.cluster.ray.cancel(gen, force=True)
        if not was_closed:
            self.cluster.release()

    def _threads(self, job: Job) -> int | None:
        # a CPU job uses the cores it reserved; a GPU job's threads stay Ray's default
        return self.threads if job.device.startswith("cuda") else self.threads or 1

    def _resources(self, job: Job) -> dict[str, float]:
        need = _needs(job.device, self.threads)
        return {"num_cpus": need["CPU"], "num_gpus": need.get("GPU", 0)}

    def _cancel(self, gen: Any) -> None:
        """Force-cancel a task (Ray kills its worker process; the job's reaper ends whatever
        it started) and wait, bounded, for that to land."""
        ray = self.cluster.ray
        with contextlib.suppress(Exception):
            ray.cancel(gen, force=True)
            ray.wait([gen], timeout=SETTLE_TIMEOUT)
            ray.get(next(gen), timeout=SETTLE_TIMEOUT)

    def _lost(self, e: BaseException, node: str | None) -> str:
        ray = self.cluster.ray
        where = node or "(before the job started)"
        if isinstance(e, StopIteration):
            return f"the Ray task on node {where} ended without a result"
        if isinstance(e, ray.exceptions.TaskCancelledError):
            why = "the loop is stopping" if self._closed or self._cancelled else "by someone else"
            return f"the Ray task on node {where} was cancelled ({why})"
        if isinstance(e, ray.exceptions.RayTaskError):
            return f"the Ray task on node {where} failed: {one_line(e.cause)}"
        return f"ray node {where} died: {one_line(e)}"

    def _finish(self, job: Job, started: float, node: str | None,
                result: dict[str, Any]) -> Metrics:
        out = job.out_dir
        ray_node.unpack(result["files"], out)
        metrics = Metrics.model_validate_json(result["metrics"])
        return self._record(metrics, out, started, node)

    def _failed(self, job: Job, started: float, node: str | None, error: str,
                status: RunStatus = RunStatus.crash) -> Metrics:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        with (job.out_dir / "run.log").open("a", encoding="utf-8") as log:
            log.write(f"[ray] {status.value}: {error}\n")
        metrics = Metrics(status=status, seed=job.seed, device=job.device, error=error,
                          threads=self._threads(job))
        with contextlib.suppress(DataError):
            prepared = data_mod.load_prepared(job.data)
            metrics.dataset, metrics.dataset_sha256 = prepared.name, prepared.sha256
        return self._record(metrics, job.out_dir, started, node)

    def _record(self, metrics: Metrics, out: Path, started: float,
                node: str | None) -> Metrics:
        """The worker and the wall time as the orchestrator saw them (transfers and queueing
        included), written to out/metrics.json as the one record of the measurement."""
        total = time.monotonic() - started
        metrics = Metrics.model_validate(metrics.model_dump() | {
            "worker": f"ray {node}" if node else "ray", "total_seconds": total,
            "exposed_seconds": max(0.0, total - metrics.train_seconds)})
        metrics.write(out / "metrics.json")
        return metrics


class _Cluster:
    """The connection to Ray shared by one ``ray_workers`` call's workers: the remote task,
    the datasets already in the object store, this installation's code hash."""

    def __init__(self, ray: Any, where: str, owns: bool) -> None:
        self.ray, self.where, self.owns = ray, where, owns
        self.task = ray.remote(ray_node.on_node)
        self.code_sha256 = ray_node.package_sha256()
        self.users = 0
        self._datasets: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, address: str | None) -> _Cluster:
        try:
            import ray
        except ImportError as e:
            raise UsageError("the Ray backend needs Ray, which is not installed here: "
                             "pip install 'autoresearch[ray]'") from e
        target = address or os.environ.get("RAY_ADDRESS")
        where = target or "this machine"
        if target and target not in ("auto", "local") and "://" not in target:
            _probe(target)
        if ray.is_initialized():  # this process is connected already: share it, keep it
            if address is not None and address != _connected.get("address"):
                raise UsageError(f"this process is connected to another Ray cluster "
                                 f"({_connected.get('address') or 'not by autoresearch'}), "
                                 f"not {address}: one process talks to one cluster")
            return cls(ray, where, owns=False)
        try:
            with _bounded_connect(target):
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            raise UsageError(f"no Ray cluster answers at {where}: {one_line(e)}; start one "
                             "with `ray start --head`") from e
        _connected["address"] = address
        return cls(ray, where, owns=True)

    def room(self, need: dict[str, float]) -> tuple[int, str]:
        """How many jobs needing ``need`` fit at once on the live nodes, and what they have."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        room = sum(min(int(n["Resources"].get(r, 0.0) // amount) for r, amount in need.items())
                   for n in nodes)
        cpus = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
        gpus = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
        return room, f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs, {gpus:g} GPUs"

    def spec(self, job: Job, threads: int | None) -> dict[str, Any]:
        """What a job's task gets: plain values only, so that a node with other code can still
        unpack it and say so."""
        sha, ref = self._dataset(job.data)
        return {
            "code_sha256": self.code_sha256,
            "files": _source_files(job.source),
            "sha256": sha,
            "dataset": [ref],  # in a list: fetched by the node only when its cache lacks it
            "budget": job.budget.model_dump(),
            "seed": job.seed,
            # Ray shows a task only the GPU it reserved: device 0 of what it sees
            "device": "cuda" if job.device.startswith("cuda") else job.device,
            "setup_cap": job.setup_cap,
            "timeout": job.timeout,
            "sandbox": job.sandbox,
            "expect_sha256": job.expect_sha256,
            "split": job.split,
            "threads": threads,
            "driver_paths": _driver_paths(),
        }

    def _dataset(self, folder: Path) -> tuple[str, Any]:
        """The dataset's sha256 (its meta.json's) and its files in the object store, put once."""
        prepared = data_mod.load_prepared(folder)
        key = (str(folder.resolve()), prepared.sha256)
        with self._lock:
            if key not in self._datasets:
                self._datasets[key] = self.ray.put(
                    {name: (folder / name).read_bytes() for name in _DATASET_FILES
                     if name != "test.bin" or prepared.has_test})
            return prepared.sha256, self._datasets[key]

    def release(self, count: int = 1) -> None:
        """One worker done (or ``count`` never handed out); the last one disconnects."""
        with self._lock:
            self.users -= count
            last = self.users <= 0
            if last:
                self._datasets.clear()
        if last and self.owns:
            self.ray.shutdown()
            _connected.clear()


def _needs(device: str, threads: int | None) -> dict[str, float]:
    cpus = float(threads or 1)
    return {"CPU": cpus, "GPU": 1.0} if device.startswith("cuda") else {"CPU": cpus}


def _describe(need: dict[str, float]) -> str:
    parts = [f"{need['GPU']:g} GPU"] if "GPU" in need else []
    cpus = need["CPU"]
    return " and ".join([*parts, f"{cpus:g} CPU{'s' * (cpus != 1)}"])


def _probe(address: str) -> None:
    """Fail in seconds, with one line, when nothing that speaks gRPC (as Ray's GCS does)
    answers at host:port; ray.init would retry for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"bad Ray address {address!r}: give HOST:PORT, e.g. 10.0.0.1:6379")
    fix = "start one with `ray start --head`"
    try:
        with socket.create_connection((host.strip("[]"), int(port)),
                                      timeout=PROBE_TIMEOUT) as s:
            s.sendall(_HTTP2_PREFACE)
            head = s.recv(9)
    except OSError as e:
        raise UsageError(f"no Ray cluster answers at {address}: {one_line(e)}; {fix}") from e
    if len(head) < 9 or head[3] != 0x04:  # a server's first frame is its SETTINGS
        raise UsageError(f"no Ray cluster answers at {address}: something listens there, but "
                         f"it does not speak Ray's protocol; {fix}")


@contextlib.contextmanager
def _bounded_connect(target: str | None) -> Iterator[None]:
    """Connecting to an explicit address: one attempt, not Ray's twenty (a GCS that answered
    the probe answers at once)."""
    name = "RAY_gcs_server_port_wait_time_s"
    if not target or name in os.environ:
        yield
        return
    os.environ[name] = "2"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _source_files(source: Path) -> dict[str, bytes]:
    """A worktree's files (relative path -> content), without git's data, caches or links."""
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__"))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name == ".git" or path.is_symlink():
                continue
            files[path.relative_to(source).as_posix()] = path.read_bytes()
    return files


def _driver_paths() -> list[str]:
    """The folders Ray puts first on its workers' sys.path for this driver (its working
    folder and its script's): the node's evaluation must import as a local one would."""
    paths = [os.path.abspath(os.curdir)]
    if sys.argv and sys.argv[0]:
        paths.append(os.path.dirname(os.path.realpath(sys.argv[0])))
    return paths
