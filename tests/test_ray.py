"""The Ray backend on a real local Ray head: jobs measured on a node exactly as locally, a hung
task cancelled at its deadline, a dead worker recorded as a crash, bad clusters refused."""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SOURCES, generated_text, wait_for

from autoresearch import runner
from autoresearch.backends import Job
from autoresearch.backends.ray import RAY_SLACK, RayWorker, hard_deadline, ray_workers
from autoresearch.data import PreparedData
from autoresearch.errors import UsageError
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import RunStatus
from benchmarks.ray_overhead import free_port, local_head

TOKENS = Budget(kind="tokens", amount=8 * 256 * 30)  # 30 steps of the tiny source
SLEEPER = "import time\n\n\ndef train(run):\n    while True:\n        time.sleep(1)\n"


@dataclass
class Head:
    address: str
    cache: Path  # the node's AUTORESEARCH_CACHE: datasets and jobs live under cache/ray


def _proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, ppid, pgrp, session, ..."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def _pids(where: Callable[[int], bool]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _proc_stat(int(entry.name))[0] != "Z" and where(int(entry.name)):
                    found.append(int(entry.name))
            except (OSError, IndexError):
                pass  # it ended meanwhile
    return found


def _in_group(pgid: int) -> Callable[[int], bool]:
    return lambda pid: int(_proc_stat(pid)[2]) == pgid


def _naming(text: str) -> Callable[[int], bool]:
    return lambda pid: text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A Ray head on 127.0.0.1 with 2 CPUs, in a session of its own that is ended (every
    process of it, or the teardown fails) at the end of the module."""
    cache = tmp_path_factory.mktemp("ray-node-cache")
    with local_head(cpus=2, cache=cache) as address:
        yield Head(address, cache)


@pytest.fixture(scope="module")
def workers(head: Head, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RayWorker]]:
    pool = ray_workers(head.address, 2, device="cpu", threads=1,
                       folder=tmp_path_factory.mktemp("experiments"))
    try:
        yield pool
    finally:
        for w in pool:
            w.close()
        # every job's processes (their command lines name the node's job folders) are gone
        wait_for("the jobs' processes to end", lambda: not _pids(_naming(str(head.cache))))


def _job(source: Path, data: PreparedData, out: Path, sha256: str | None = None) -> Job:
    return Job(source=source, data=data.path, budget=TOKENS, seed=0, device="cpu", out_dir=out,
               expect_sha256=sha256 or data.sha256)


def _node_ip() -> str:
    import ray

    return str(ray.nodes()[0]["NodeManagerAddress"])


@pytest.mark.slow  # a real Ray head
def test_a_dataset_with_another_sha256_is_refused_before_training(
    workers: list[RayWorker], make_dataset: Callable[..., PreparedData],
    prepared_data: PreparedData, tmp_path: Path,
) -> None:
    other = make_dataset(generated_text(seed=1), "other")
    job = _job(SOURCES / "tiny", other, tmp_path, sha256=prepared_data.sha256)
    m = workers[0].measure(job)
    assert m.status == RunStatus.crash and m.val_bpb is None
    assert m.error is not None and "not the run's" in m.error
    assert (m.steps, m.train_tokens, m.train_seconds) == (0, 0, 0.0)
    assert not (tmp_path / "run.log").exists()  # no process was started
    assert Metrics.read(tmp_path / "metrics.json") == m


@pytest.mark.slow  # a real Ray head
def test_a_node_with_other_code_is_refused(
    workers: list[RayWorker], prepared_data: PreparedData, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers[0].cluster, "code_sha256", "0" * 64)
    m = workers[0].measure(_job(SOURCES / "tiny", prepared_data, tmp_path))
    assert m.status == RunStatus.crash and m.steps == 0
    assert m.error is not None and "runs other autoresearch code" in m.error


@pytest.mark.slow  # a real Ray head
def test_a_hung_task_is_cancelled_at_its_deadline(
    workers: list[RayWorker], head: Head, prepared_data: PreparedData, tmp_path: Path,
) -> None:
    source = tmp_path / "sleeper"
    source.mkdir()
    (source / "train.py").write_text(SLEEPER)
    worker = workers[1]
    worker.deadline = 5.0  # the runner's own deadline (600 s for a token budget) is far off
    started: queue.Queue[tuple[str, int]] = queue.Queue()
    worker.on_start = lambda node, pid: started.put((node, pid))
    try:
        t0 = time.monotonic()
        m = worker.measure(_job(source, prepared_data, tmp_path / "out"))
        took = time.monotonic() - t0
    finally:
        worker.deadline, worker.on_start = None, None
    assert m.status == RunStatus.timeout and m.val_bpb is None
    assert m.error is not None and m.error.startswith(
        f"cancelled at the hard deadline: the Ray task on node {_node_ip()} ran past 5 s")
    assert 5.0 <= took < 5.0 + 60.0
    assert "[ray] timeout: cancelled" in (tmp_path / "out" / "run.log").read_text()
    _, pid = started.get_nowait()
    wait_for("the cancelled task's worker to end", lambda: not _pids(lambda p: p == pid))
    wait_for("the job's processes to end", lambda: not _pids(_naming(str(head.cache))))


@pytest.mark.slow  # a real Ray head
def test_a_killed_worker_is_a_crash_and_its_next_job_runs_as_here(
    workers: list[RayWorker], head: Head, prepared_data: PreparedData, tmp_path: Path,
) -> None:
    worker = workers[0]
    started: queue.Queue[tuple[str, int]] = queue.Queue()
    worker.on_start = lambda node, pid: started.put((node, pid))
    pool = ThreadPoolExecutor(1)
    future = pool.submit(worker.measure, _job(SOURCES / "hang", prepared_data, tmp_path / "hung"))
    node, pid = started.get(timeout=120)
    try:
        # mid-train(): the training process (its pid names its group) and its child
        pid_file = wait_for("the training process", lambda: next(
            (head.cache / "ray" / "jobs").glob(f"*/out/{runner.PID_FILE}"), None), 120)
        group = int(Path(str(pid_file)).read_text())
        wait_for("train() to start its child", lambda: len(_pids(_in_group(group))) >= 2, 120)
    finally:
        worker.on_start = None
        os.kill(pid, signal.SIGKILL)  # also when a wait above failed: the job must end
        m = future.result(timeout=120)
        pool.shutdown()
    assert m.status == RunStatus.crash and m.val_bpb is None
    assert m.error is not None and m.error.startswith(f"ray node {node} died: ")
    assert m.worker == f"ray {node}"
    # the reaper ended the training process group, child included, and removed the job folder
    wait_for("the job's process group to end", lambda: not _pids(_in_group(group)))
    wait_for("the job's folder to go", lambda: not any((head.cache / "ray" / "jobs").iterdir()))

    # the same worker's next job runs on the node as it would here, and its files come back
    out = tmp_path / "again"
    m = worker.measure(_job(SOURCES / "tiny", prepared_data, out))
    assert m.status == RunStatus.ok, m.error
    assert m.val_bpb is not None and m.causal_ok is True and m.steps == 30
    assert m.worker == f"ray {node}" == f"ray {_node_ip()}"  # Ray's name for 127.0.0.1
    assert m.threads == 1 and m.sandbox == runner.sandbox_state(True)  # fenced on the node
    assert (m.dataset, m.dataset_sha256) == (prepared_data.name, prepared_data.sha256)
    assert Metrics.read(out / "metrics.json") == m
    log = (out / "run.log").read_text()
    assert "--phase train" in log and "== ok: val_bpb" in log
    assert (out / "curve.jsonl").is_file()
    # the dataset is cached on the node by its sha256; the job's own folder is gone
    assert (head.cache / "ray" / "datasets" / prepared_data.sha256 / "val.bin").is_file()
    assert list((head.cache / "ray" / "jobs").iterdir()) == []
    # a report's measurement scores the held-out test split on the node too (it went along)
    job = dataclasses.replace(_job(SOURCES / "tiny", prepared_data, tmp_path / "report"),
                              split="test")
    m = worker.measure(job)
    assert m.status == RunStatus.ok and m.test_bpb is not None and m.val_bpb is not None
    assert (head.cache / "ray" / "datasets" / prepared_data.sha256 / "test.bin").is_file()


def test_an_address_that_does_not_answer_is_a_usage_error_in_seconds(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=rf"no Ray cluster answers at 127\.0\.0\.1:{port}: "
                                         r".*start one with `ray start --head`"):
        ray_workers(f"127.0.0.1:{port}", 1, device="cpu", threads=None, folder=tmp_path)
    assert time.monotonic() - t0 < 15.0


def test_a_port_that_is_not_ray_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(30)
        port = server.getsockname()[1]
        with ThreadPoolExecutor(1) as pool:
            # a server that answers in plain text, like a web server would
            pool.submit(lambda: server.accept()[0].sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
            with pytest.raises(UsageError, match="does not speak Ray's protocol"):
                ray_workers(f"127.0.0.1:{port}", 1, device="cpu", threads=None,
                            folder=tmp_path)


@pytest.mark.slow  # a real Ray head
def test_a_cluster_without_room_for_the_jobs_is_a_usage_error(
    workers: list[RayWorker], head: Head, tmp_path: Path,
) -> None:
    with pytest.raises(UsageError, match=r"has no node with 1 GPU and 1 CPU for one job \(it "
                                         r"has 1 node, 2 CPUs, 0 GPUs\)"):
        ray_workers(head.address, 1, device="cuda", threads=None, folder=tmp_path)
    with pytest.raises(UsageError, match=r"--workers 3 needs room for 3 jobs at once, but "
                                         r".* has room for 2 \(1 CPU each"):
        ray_workers(head.address, 3, device="cpu", threads=1, folder=tmp_path)


def test_without_ray_installed_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'autoresearch\[ray\]'"):
        ray_workers("127.0.0.1:6379", 1, device="cpu", threads=None, folder=tmp_path)


@pytest.mark.slow  # a real Ray head
def test_a_cuda_job_reserves_one_gpu_and_runs_on_the_one_it_sees(
    workers: list[RayWorker], prepared_data: PreparedData, tmp_path: Path,
) -> None:
    job = Job(source=SOURCES / "tiny", data=prepared_data.path, budget=TOKENS, seed=0,
              device="cuda:1", out_dir=tmp_path)
    assert workers[0]._resources(job) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert workers[0].cluster.spec(job, None)["device"] == "cuda"  # Ray shows it only that GPU
    cpu = Job(**{**job.__dict__, "device": "cpu"})
    assert workers[0]._resources(cpu) == {"num_cpus": 1.0, "num_gpus": 0}


def test_the_hard_deadline_is_past_everything_the_runner_allows(tmp_path: Path) -> None:
    timed = Job(source=tmp_path, data=tmp_path, budget=Budget(kind="time", amount=20), seed=0,
                device="cpu", out_dir=tmp_path)
    own = runner.train_deadline(timed.budget, timed.setup_cap)
    assert hard_deadline(timed) == own + runner.EVAL_TIMEOUT + runner.GRACE + RAY_SLACK
    short = Job(**{**timed.__dict__, "timeout": 3.0})
    assert hard_deadline(short) == 3.0 + runner.EVAL_TIMEOUT + runner.GRACE + RAY_SLACK


@pytest.mark.slow
def test_a_real_loop_of_three_experiments_runs_on_the_cluster(head: Head, tmp_path: Path) -> None:
    import json
    import subprocess

    from autoresearch.store import Store
    from autoresearch.workspace import init_workspace

    ws = tmp_path / "ws"
    init_workspace(ws)
    source = (Path(__file__).parent / "loop_source" / "train.py").read_text(encoding="utf-8")
    (ws / "baseline" / "train.py").write_text(source, encoding="utf-8")
    (tmp_path / "corpus.txt").write_text(generated_text(60_000), encoding="utf-8")
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        {"title": f"lr {lr}", "rationale": "", "edits": [{"path": "train.py", "content":
         source.replace("LEARNING_RATE = 1e-5", f"LEARNING_RATE = {lr}")}]}
        for lr in ("3e-2", "1e-2", "3e-3", "1e-3")]), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env["AUTORESEARCH_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "autoresearch", "--workspace", str(ws), "loop", "--agent", "mock",
         "--script", str(script), "--budget", "3", "--token-budget", "4096", "--seeds", "1",
         "--device", "cpu", "--dataset", str(tmp_path / "corpus.txt"), "--backend", "ray",
         "--ray-address", head.address, "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = Store(ws / "results.db")
    exps = store.experiments(kind="candidate")
    assert len(exps) == 3 and store.runs()[0].state.value == "finished"
    ms = [m for e in store.experiments() for m in store.measurements(e.id)]  # type: ignore[arg-type]
    assert ms and all(m.worker.startswith("ray ") for m in ms)
    # measured on the node exactly as here: in the same OS sandbox
    assert {Metrics.model_validate_json(x.metrics).sandbox for x in ms} == {
        runner.sandbox_state(True)}


@pytest.mark.slow
def test_ctrl_c_ends_a_ray_job_in_flight_and_records_it_interrupted(
        head: Head, tmp_path: Path) -> None:
    import json
    import subprocess

    from autoresearch.models import ExperimentStatus as ES
    from autoresearch.store import Store
    from autoresearch.workspace import init_workspace

    ws = tmp_path / "ws"
    init_workspace(ws)
    source = (Path(__file__).parent / "loop_source" / "train.py").read_text(encoding="utf-8")
    (ws / "baseline" / "train.py").write_text(source, encoding="utf-8")
    (tmp_path / "corpus.txt").write_text(generated_text(60_000), encoding="utf-8")
    script = tmp_path / "script.json"  # a candidate that trains until it is stopped
    script.write_text(json.dumps([{"title": "hang", "rationale": "", "edits": [
        {"path": "train.py", "content": SLEEPER}]}]), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env["AUTORESEARCH_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "--workspace", str(ws), "loop", "--agent", "mock",
         "--script", str(script), "--budget", "1", "--token-budget", "4096", "--seeds", "1",
         "--device", "cpu", "--dataset", str(tmp_path / "corpus.txt"), "--backend", "ray",
         "--ray-address", head.address], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    db = ws / "results.db"

    def hanging_on_the_node() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"loop ended early: {proc.stderr.read().decode()[-2000:]}")
        running = db.exists() and any(e.kind == "candidate" and e.status == ES.running
                                      for e in Store(db).experiments())
        return running and any((head.cache / "ray" / "jobs").glob(f"*/out/{runner.PID_FILE}"))

    try:
        wait_for("the candidate's job to train on the node", hanging_on_the_node, 240)
        proc.send_signal(signal.SIGINT)
        # the job is cancelled at once, not waited for (its hard deadline is minutes away)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()[-3000:]
    store = Store(db)
    assert store.runs()[0].state.value == "stopped"
    (cand,) = store.experiments(kind="candidate")
    assert cand.status == ES.interrupted and cand.reason == "interrupted by the user"
    # nothing of the job outlived the loop on the node
    wait_for("the job's processes to end", lambda: not _pids(_naming(str(head.cache))))
    wait_for("the job's folder to go", lambda: not any((head.cache / "ray" / "jobs").iterdir()))
