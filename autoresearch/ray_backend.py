"""Measurements on a Ray cluster: each job a Ray task running the same runner + harness on the
node it lands on.

The orchestrator keeps the store, git and the agent. A ``RayWorker`` sends one job at a time:
the source folder's files (without .git) travel with the task, the prepared dataset through
Ray's object store (put once per dataset, shared by every worker), and the task reserves one
GPU (``num_gpus=1``) or its CPUs, with ``max_retries=0``: a measurement is never silently run
twice. On the node the task

1. refuses to measure when the node's installed autoresearch differs from the orchestrator's
   (a hash of the package's .py files);
2. writes the dataset into a node-local cache folder named by its sha256 (checked against the
   bytes), unpacks the source, and calls ``runner.measure`` there, with the run's sha256: the
   sandbox, the process-group deadline, the installed-code tripwire and the sha256 check
   before training all happen on the node, exactly as they do locally;
3. returns the Metrics and every file ``runner.measure`` wrote (run.log, metrics.json, the
   curve), which the orchestrator writes into the job's out_dir.

A task that runs past the job's hard deadline (the runner's own worst case plus a margin) is
cancelled with ``ray.cancel(force=True)`` and recorded as ``timeout``; a worker or node that
dies mid-job is recorded as ``crash`` ("ray node ... died: ..."). Neither raises into the loop.
Whatever a job started on its node (its harness processes run in sessions of their own) is
ended by a small reaper process that outlives the task's worker: it waits on a pipe that
worker holds, and when the pipe closes (the task ended, was cancelled, or its worker was
killed) it kills the job's process groups and removes the job's folder.

Ray is optional (``pip install 'autoresearch[ray]'``) and imported only here, when used.
Over 400 lines: both sides of a task (the orchestrator's worker and what runs on the node,
reaper included) live here, so that one file says all that crosses the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch import data as data_mod
from autoresearch import integrity, runner
from autoresearch.errors import DataError, UsageError, one_line
from autoresearch.jobs import Job
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import RunStatus

RAY_SLACK = 30.0  # seconds beyond the runner's own deadlines: unpacking, the dataset, hashing
START_TIMEOUT = 900.0  # seconds a job may wait for a node with room before it is given up
SETTLE_TIMEOUT = 30.0  # seconds to wait for a cancelled task's worker to be gone
PROBE_TIMEOUT = 5.0  # seconds for the cluster's address to answer
NODE_FOLDER = "ray"  # on a node, under its dataset cache (AUTORESEARCH_CACHE): datasets/, jobs/
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)  # + an empty SETTINGS frame
_DATASET_FILES = ("train.bin", "val.bin", "meta.json")
_connected: dict[str, str | None] = {}  # the address this process's ray.init was given
# The reaper: when its stdin closes (the task's worker ended or died), end every process group
# the job left behind (runner writes each group's id to a job.pid file) and remove the job's
# folder and the processes' scratch folders (their working folders). It forks first and lives
# on as the child: Ray kills a dead worker's child processes, not their children.
_REAP = ("import os, shutil, sys\n"
         "from pathlib import Path\n"
         "if os.fork():\n"
         "    os._exit(0)\n"
         "sys.stdin.buffer.read()\n"
         "folder, scratch = Path(sys.argv[1]), []\n"
         "for pid_file in folder.rglob('job.pid'):\n"
         "    try:\n"
         "        scratch.append(os.readlink(f'/proc/{int(pid_file.read_text())}/cwd'))\n"
         "    except (OSError, ValueError):\n"
         "        pass\n"
         "if any(folder.rglob('job.pid')):\n"
         "    from autoresearch.runner import kill_stale\n"
         "    kill_stale(folder)\n"
         "for path in [folder, *(p for p in scratch if 'autoresearch-' in p)]:\n"
         "    shutil.rmtree(path, ignore_errors=True)\n")


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


def package_sha256() -> str:
    """A hash of this installation's autoresearch code (every .py file of the package, by
    path and content), compared between the orchestrator and a node."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "_bundled":  # the baseline a wheel ships: data, not our code
            continue
        content = path.read_bytes()
        h.update(f"{rel.as_posix()}\0{len(content)}\0".encode())
        h.update(content)
    return h.hexdigest()


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
    _inflight: Any = field(default=None, init=False, repr=False)
    _closed: bool = field(default=False, init=False)
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
            self._inflight = gen
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
            why = "the loop is stopping" if self._closed else "by someone else"
            return f"the Ray task on node {where} was cancelled ({why})"
        if isinstance(e, ray.exceptions.RayTaskError):
            return f"the Ray task on node {where} failed: {one_line(e.cause)}"
        return f"ray node {where} died: {one_line(e)}"

    def _finish(self, job: Job, started: float, node: str | None,
                result: dict[str, Any]) -> Metrics:
        out = job.out_dir
        _unpack(result["files"], out)
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
        self.task = ray.remote(_on_node)
        self.code_sha256 = package_sha256()
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
                    {name: (folder / name).read_bytes() for name in _DATASET_FILES})
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


# --- on the node ---------------------------------------------------------------------------


def _on_node(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The Ray task: say where it runs, then measure and return the metrics and the files."""
    import ray

    node = ray.util.get_node_ip_address()
    yield {"node": node, "pid": os.getpid()}
    yield _measure_here(spec, node)


def _measure_here(spec: dict[str, Any], node: str) -> dict[str, Any]:
    seed, device = int(spec["seed"]), str(spec["device"])
    code = package_sha256()
    if code != spec["code_sha256"]:
        return _refused(seed, device, spec, f"ray node {node} runs other autoresearch code "
                        f"(package hash {code[:12]}, the orchestrator's "
                        f"{str(spec['code_sha256'])[:12]}): install the same version there")
    root = data_mod.cache_dir() / NODE_FOLDER
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=root / "jobs"))
    reaper = subprocess.Popen([sys.executable, "-c", _REAP, str(job_dir)], cwd="/",
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=integrity.child_env(None),
                              start_new_session=True)
    path = sys.path[:]
    try:
        source, out = job_dir / "source", job_dir / "out"
        _unpack(spec["files"], source)
        try:
            data = _node_dataset(root / "datasets", str(spec["sha256"]), spec["dataset"], node)
        except DataError as e:
            return _refused(seed, device, spec, str(e))
        # as in a local measurement, the evaluation gets the node's own import path, not the
        # orchestrator's folders Ray put first
        driver = set(spec["driver_paths"])
        while sys.path and sys.path[0] in driver:
            del sys.path[0]
        metrics = runner.measure(runner.Job(
            source=source, data=data, budget=Budget.model_validate(spec["budget"]), seed=seed,
            device=device, out_dir=out, setup_cap=float(spec["setup_cap"]),
            timeout=spec["timeout"], sandbox=bool(spec["sandbox"]),
            expect_sha256=spec["expect_sha256"]), threads=spec["threads"])
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                 if p.is_file() and p.name != runner.PID_FILE and not p.name.endswith(".tmp")}
        return {"metrics": metrics.model_dump_json(), "files": files}
    finally:
        sys.path[:] = path
        shutil.rmtree(job_dir, ignore_errors=True)
        if reaper.stdin is not None:
            reaper.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(timeout=10)


def _unpack(files: dict[str, bytes], folder: Path) -> None:
    """Write ``files`` (relative path -> bytes) under ``folder``, skipping any path that would
    leave it; the folder exists afterwards even if there was nothing to write."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = Path(rel)
        if path.is_absolute() or ".." in path.parts:
            continue
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)


def _refused(seed: int, device: str, spec: dict[str, Any], error: str) -> dict[str, Any]:
    metrics = Metrics(status=RunStatus.crash, seed=seed, device=device, error=error,
                      threads=spec["threads"])
    return {"metrics": metrics.model_dump_json(), "files": {}}


def _node_dataset(cache: Path, sha: str, refs: list[Any], node: str) -> Path:
    """The node's copy of a prepared dataset, in a folder named by its sha256: fetched from
    the object store when missing, and kept only if its bytes hash to that sha256."""
    final = cache / sha
    if (final / "meta.json").is_file():
        return final
    import ray

    files: dict[str, bytes] = ray.get(refs[0])
    got = hashlib.sha256(files["train.bin"] + files["val.bin"]).hexdigest()
    claimed = json.loads(files["meta.json"]).get("sha256")
    if got != sha or claimed != sha:
        raise DataError(f"the dataset that reached ray node {node} is not the one sent: its "
                        f"text's sha256 is {got[:12]}, expected {sha[:12]}")
    cache.mkdir(parents=True, exist_ok=True)
    # written next to its final folder, then renamed: a job never sees half a dataset
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=cache))
    try:
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "meta.json").is_file():  # not another job's copy, just made
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final

