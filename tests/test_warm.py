"""Warm starts (runner.Slot): processes started ahead of their job, each serving one job,
on CPU forked from one fork server per phase."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sandbox import ABI, SOURCE, escape, listener  # noqa: F401  (a fixture)

from autoresearch import integrity, runner
from autoresearch.data import PreparedData
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import RunStatus

SOURCES = Path(__file__).parent / "sources"
TOKENS = Budget(kind="tokens", amount=8 * 256 * 4)
pytestmark = [pytest.mark.skipif(ABI == 0, reason="warm starts need the Landlock sandbox"),
              pytest.mark.slow]  # warm processes and fork servers, each importing torch


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def warm_pids(folder: Path, servers: bool | None = None) -> list[int]:
    """The waiting processes' pids (``servers``: only the fork servers', or none of them)."""
    return [int(p.read_text()) for p in (folder / runner.WARM_DIR).rglob(runner.PID_FILE)
            if servers is None or ("-server-" in str(p)) == servers]


def wait_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def measure(source: Path, data: PreparedData, out: Path, slot: runner.Slot) -> Metrics:
    return runner.measure(runner.Job(source=source, data=data.path, budget=TOKENS, seed=0,
                                     device="cpu", out_dir=out), slot=slot)


def test_a_warm_process_never_handed_work_exits_on_its_own(tmp_path: Path) -> None:
    slot = runner.Slot(tmp_path, wait=3.0)
    env = integrity.child_env(None)
    slot.start_pair(runner.slot.warm_key(env, "cpu"), env, {})
    slot.add_eval(env)
    pids, servers = warm_pids(tmp_path, servers=False), warm_pids(tmp_path, servers=True)
    assert len(pids) == 2 and len(servers) == 2 and all(alive(p) for p in pids + servers)
    assert wait_gone(pids, 30.0)  # imports (a few seconds here), then the 3 s wait
    assert wait_gone(servers, 30.0)  # 3 s more with no child and no request
    slot.close()


# forked: from a fork server, as on CPU; spawned: each process started by the runner, as on GPU
WAYS = pytest.mark.parametrize("fork", [True, False], ids=["forked", "spawned"])


@WAYS
def test_jobs_in_one_slot_share_no_module_state_and_run_warm(
    prepared_data: PreparedData, tmp_path: Path, fork: bool,
) -> None:
    with runner.Slot(tmp_path / "slot", fork=fork) as slot:
        first = measure(SOURCES / "module_state", prepared_data, tmp_path / "a", slot)
        second = measure(SOURCES / "module_state", prepared_data, tmp_path / "b", slot)
        spare = warm_pids(tmp_path / "slot")
    assert first.status == second.status == RunStatus.ok, (first.error, second.error)
    assert (first.warm, second.warm) == (True, True)
    cold = runner.measure(runner.Job(source=SOURCES / "module_state", data=prepared_data.path,
                                     budget=TOKENS, seed=0, device="cpu",
                                     out_dir=tmp_path / "cold"))
    assert not cold.warm  # the same job, cold or warm (forked or spawned): the same number
    assert first.val_bpb == second.val_bpb == cold.val_bpb
    assert second.start_seconds > 0 and second.eval_start_seconds > 0
    # the third job's pair (and the fork servers) ended with the slot
    assert len(spare) == (4 if fork else 2) and wait_gone(spare, 5.0)
    log = (tmp_path / "b" / "run.log").read_text()
    assert "--wait-for-job" in log and "[runner] job: --phase train" in log
    assert ("forked by its phase's fork server" in log) == fork


@WAYS
def test_a_warm_job_runs_in_the_same_sandbox(
    prepared_data: PreparedData, tmp_path: Path, listener: int,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, fork: bool,
) -> None:
    with runner.Slot(tmp_path / "slot", fork=fork) as slot:
        real = runner.measure
        monkeypatch.setattr(runner, "measure", lambda job, **kw: real(job, **kw, slot=slot))
        escape(prepared_data, tmp_path / "cold", listener, monkeypatch, on=True)
        m, said, planted = escape(prepared_data, tmp_path, listener, monkeypatch, on=True)
    assert m.status == RunStatus.ok and m.warm, m.error
    assert m.sandbox == f"landlock v{ABI}"
    assert said["read"] == "Permission denied"  # the validation split, by its real path
    assert said["shell"] == "Permission denied"
    assert said["write"] == "Permission denied" and not planted.exists()
    if ABI >= 4:
        assert said["connect"] == "Permission denied"
    if ABI >= 6:  # its fork server (or the runner) is out of its reach
        assert said["signal"] == "Operation not permitted"
    assert said["sockets"] == "0"  # nor does it hold the fork server's socket


_HOLDER = """
import sys, time
from pathlib import Path
from autoresearch import integrity, runner
env = integrity.child_env(None)
with runner.Slot(Path(sys.argv[1])) as slot:
    slot.start_pair(runner.slot.warm_key(env, "cpu"), env, {})
    slot.add_eval(env)
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_interrupting_or_killing_the_orchestrator_leaves_no_warm_process(
    tmp_path: Path, how: signal.Signals,
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    pids = warm_pids(tmp_path)
    assert len(pids) == 4 and all(alive(p) for p in pids)  # two forked, their two servers
    holder.send_signal(how)
    holder.wait(timeout=30)
    assert wait_gone(pids, 10.0)  # Ctrl-C: the slot ends them; SIGKILL: they die with it
    runner.kill_stale(tmp_path / runner.WARM_DIR)  # what a resumed loop does
    assert warm_pids(tmp_path) == []


def test_a_job_that_trains_longer_than_a_warm_process_waits_is_still_evaluated(
    prepared_data: PreparedData, tmp_path: Path,
) -> None:
    # the evaluation process started with the job stops waiting (after 2 s here, 30 minutes
    # in a loop) while the job still trains: the slot starts another instead of failing it
    with runner.Slot(tmp_path / "slot", wait=2.0) as slot:
        m = runner.measure(runner.Job(source=SOURCES / "tiny", data=prepared_data.path,
                                      budget=Budget(kind="time", amount=5), seed=0,
                                      device="cpu", out_dir=tmp_path / "out"), slot=slot)
    assert m.status == RunStatus.ok and m.warm, m.error
    assert m.val_bpb is not None and m.train_seconds >= 5


def test_replacing_a_dead_fork_server_cuts_no_running_job_short(tmp_path: Path) -> None:
    with runner.Slot(tmp_path, wait=60.0) as slot:
        env = integrity.child_env(None)
        key = runner.slot.warm_key(env, "cpu")
        pair = slot.spawn(key, env, {})  # this job's processes, forked
        old_train, old_eval = slot._servers["train"].proc, slot._servers["eval"].proc
        old_eval.kill()  # the evaluation's server dies (a crash, an old kernel's signal)
        old_eval.wait()
        slot.start_pair(key, env, {})  # the next job's: both servers are started anew
        assert slot._servers["train"].proc.pid != old_train.pid
        # the old training server is only retired: this job's process runs on
        assert old_train.poll() is None and alive(pair.train.proc.proc.pid)
        pair.close()  # the job ends; its retired server follows it out on its own
        assert wait_gone([old_train.pid], 10.0)


def test_slots_sharing_a_folder_keep_their_pid_files_apart(tmp_path: Path) -> None:
    """A loop's workers share one experiments folder: closing one worker's slot leaves the
    other's waiting processes findable by ``kill_stale`` (a SIGKILLed loop's resume)."""
    env = integrity.child_env(None)
    key = runner.slot.warm_key(env, "cpu")
    with runner.Slot(tmp_path, wait=60.0, fork=False) as first:
        second = runner.Slot(tmp_path, wait=60.0, fork=False)
        first.start_pair(key, env, {})
        second.start_pair(key, env, {})
        both = warm_pids(tmp_path)
        assert len(both) == 2 and len(set(both)) == 2  # one pid file each, neither overwritten
        second.close()
        left = warm_pids(tmp_path)
        assert len(left) == 1 and left[0] in both and alive(left[0])
    assert not (tmp_path / runner.WARM_DIR).exists()  # the last slot out removes the folder
