"""What a Ray task runs on its node: the same runner + harness as a local measurement.

The task (``on_node``) says where it runs, then

1. refuses to measure when the node's installed autoresearch differs from the orchestrator's
   (``package_sha256``);
2. writes the dataset into a node-local cache folder named by its sha256 (checked against the
   bytes), unpacks the source, and calls ``runner.measure`` there with the run's sha256: the
   sandbox, the process-group deadline, the installed-code tripwire and the sha256 check
   before training all happen on the node, exactly as they do locally;
3. returns the Metrics and every file ``runner.measure`` wrote.

Whatever a job started (its harness processes run in sessions of their own) is ended by the
reaper (``reaper.py``), a small process that outlives the task's worker: it waits on a pipe
that worker holds, and when the pipe closes (the task ended, was cancelled, or its worker was
killed) it kills the job's process groups and removes the job's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoresearch import data as data_mod
from autoresearch import integrity, runner
from autoresearch.errors import DataError
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import RunStatus

NODE_FOLDER = "ray"  # on a node, under its dataset cache (AUTORESEARCH_CACHE): datasets/, jobs/
REAPER = Path(__file__).with_name("reaper.py")


def package_sha256() -> str:
    """A hash of this installation's autoresearch code (every .py file of the package, by
    path and content), compared between the orchestrator and a node."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "_bundled":  # the baseline a wheel ships: data, not our code
            continue
        content = path.read_bytes()
        h.update(f"{rel.as_posix()}\0{len(content)}\0".encode())
        h.update(content)
    return h.hexdigest()


def on_node(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
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
    # run by path, without its folder on sys.path (-P): a reaper must not import Ray
    reaper = subprocess.Popen([sys.executable, "-P", str(REAPER), str(job_dir)], cwd="/",
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=integrity.child_env(None),
                              start_new_session=True)
    path = sys.path[:]
    try:
        source, out = job_dir / "source", job_dir / "out"
        unpack(spec["files"], source)
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
            expect_sha256=spec["expect_sha256"], split=str(spec.get("split", "val"))),
            threads=spec["threads"])
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


def unpack(files: dict[str, bytes], folder: Path) -> None:
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
    meta = json.loads(files["meta.json"])
    got = data_mod.files_identity(meta, files["train.bin"], files["val.bin"],
                                  files.get("test.bin"))
    claimed = meta.get("sha256")
    if got != sha or claimed != sha:
        raise DataError(f"the dataset that reached ray node {node} is not the one sent: its "
                        f"identity is {got[:12]}, expected {sha[:12]}")
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

