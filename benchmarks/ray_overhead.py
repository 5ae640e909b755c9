"""What a measurement costs through Ray, next to the same measurement on this machine.

Starts a private Ray head on 127.0.0.1 (and ends it), then measures the same tiny jobs (the
test suite's tiny source under a token budget, one thread each) three ways, interleaved so
that the machine's load drifts over all of them alike:

- local: a ``LocalWorker`` (its warm slot starts the next job's processes during this one);
- local, cold: ``runner.measure`` with no slot (each job starts its processes), which is what
  a Ray task does on its node;
- ray: a ``RayWorker`` on the head (the task, the source and dataset transfer, the node's
  cold runner, the files back).

Prints each job's wall time per way, the mean of the jobs after the first (the first pays the
worker start-ups and the dataset's trip), where that time went (the measurement's own
breakdown; "other" is the rest: the runner's checks, and for Ray the task, the transfers and
the files coming back), and the overhead per job of Ray vs each local way.

    python benchmarks/ray_overhead.py [--jobs 4] [--tokens 7680] [--data offline|FILE]

``local_head()`` is also how benchmarks/parallel.py and tests/test_ray.py get their head.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from autoresearch import data, runner
from autoresearch.backends import Job, LocalWorker
from autoresearch.metrics import Budget

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "sources" / "tiny"
PARTS = ("start_seconds", "setup_seconds", "train_seconds", "export_seconds",
         "eval_start_seconds", "eval_seconds")
START_TIMEOUT = 180.0  # seconds for `ray start --head` on a busy machine


def free_port() -> int:
    """A port nothing listens on: an ephemeral one, outside the ports Ray keeps for its
    workers (10002-19999)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (Ray's workers change their process group, not
    their session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[3]) == sid:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def local_head(cpus: int = 2, cache: Path | None = None) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with ``cpus`` CPUs, its node cache (AUTORESEARCH_CACHE) in
    ``cache`` (default: a temporary folder, removed after); yields its address. It runs in a
    session of its own, which is ended at the end: ``ray stop`` would end every Ray on the
    machine, other users' included."""
    temp = Path(tempfile.mkdtemp(prefix="ar-ray-"))  # short: Ray's sockets live under it
    node_cache = cache or temp / "cache"
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    start = subprocess.Popen(
        [str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", str(cpus), "--include-dashboard=false", "--disable-usage-stats",
         "--temp-dir", str(temp / "ray"), "--dashboard-agent-listen-port", str(free_port())],
        env={**os.environ, "AUTORESEARCH_CACHE": str(node_cache)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = start.communicate(timeout=START_TIMEOUT)
        if start.returncode != 0:
            raise RuntimeError("ray start failed:\n" + out.decode(errors="replace")[-2000:])
        yield f"127.0.0.1:{port}"
    finally:
        deadline = time.monotonic() + 30.0
        while left := session_pids(start.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head's processes {left} did not end")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    from autoresearch.backends.ray import ray_workers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4, help="jobs per way (the first is warm-up)")
    ap.add_argument("--tokens", type=int, default=8 * 256 * 30, help="training tokens per job")
    ap.add_argument("--data", default="offline", help="a .txt path, or 'offline'")
    args = ap.parse_args()
    prepared = data.prepare(args.data)
    budget = Budget(kind="tokens", amount=args.tokens)
    tmp = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    walls: dict[str, list[float]] = {"local": [], "local, cold": [], "ray": []}
    parts: dict[str, list[list[float]]] = {way: [] for way in walls}
    try:
        with local_head() as address:
            ray = ray_workers(address, 1, device="cpu", threads=1, folder=tmp)[0]
            local = LocalWorker("w0", tmp / "local", threads=1)
            try:
                for i in range(args.jobs):
                    for way in walls:
                        job = Job(source=TINY, data=prepared.path, budget=budget, seed=i,
                                  device="cpu", out_dir=tmp / way / str(i),
                                  expect_sha256=prepared.sha256)
                        t0 = time.monotonic()
                        if way == "local":
                            m = local.measure(job)
                        elif way == "ray":
                            m = ray.measure(job)
                        else:
                            m = runner.measure(runner.Job(
                                source=job.source, data=job.data, budget=budget, seed=i,
                                device="cpu", out_dir=job.out_dir,
                                expect_sha256=prepared.sha256), threads=1)
                        walls[way].append(time.monotonic() - t0)
                        parts[way].append([getattr(m, part) for part in PARTS])
                        if not m.ok:
                            raise SystemExit(f"{way} job {i} failed: {m.error}")
            finally:
                local.close()
                ray.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    steady = {way: statistics.fmean(w[1:] or w) for way, w in walls.items()}
    print(f"ray overhead: {args.jobs} tiny jobs per way ({args.tokens:,} tokens, 1 thread), "
          f"interleaved, {len(os.sched_getaffinity(0))} CPU cores")
    for way, w in walls.items():
        print(f"  {way:<12} " + "  ".join(f"{s:5.2f}" for s in w)
              + f"   s per job; after the first: {steady[way]:.2f} s")
    print("  where it went, after the first (s): "
          + "  ".join(p.removesuffix("_seconds") for p in PARTS) + "  other")
    for way, rows in parts.items():
        means = [statistics.fmean(col) for col in zip(*(rows[1:] or rows), strict=True)]
        print(f"  {way:<12} " + "  ".join(f"{v:5.2f}" for v in means)
              + f"  {steady[way] - sum(means):5.2f}")
    print(f"  ray vs local:       {steady['ray'] - steady['local']:+.2f} s per job")
    print(f"  ray vs local, cold: {steady['ray'] - steady['local, cold']:+.2f} s per job "
          "(the cost of Ray itself: task, transfers, files back)")


if __name__ == "__main__":
    main()
