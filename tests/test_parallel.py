"""Parallel research: workers, pipelined proposals, a moving champion, duplicates, resume.

The scheduling tests give the loop fake workers (autoresearch.backends.Worker) whose val_bpb is a
function of the code they are handed, and which can be held until another experiment is
decided: the order of events is then exact, and each test takes a second. The end-to-end
tests run the real CLI with two real local workers (real training processes, one thread each
on this 2-core machine), a SIGKILL with two experiments in flight, and agent calls in flight
together against a local fake LLM server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOP_SOURCE, invoke, loop_workspace, wait_for
from fake_llm_server import FakeLLMServer
from rich.console import Console
from typer.testing import CliRunner

from autoresearch.agents.llm import OpenAIAgent
from autoresearch.agents.mock import MockAgent
from autoresearch.backends import Job, cpu_cores, local_workers
from autoresearch.cli import app
from autoresearch.config import Settings
from autoresearch.integrity import child_env
from autoresearch.loop import LoopStopped, start
from autoresearch.metrics import Metrics
from autoresearch.models import Context, RunStatus
from autoresearch.models import ExperimentStatus as ES
from autoresearch.progress import PlainReporter
from autoresearch.store import Experiment, Store
from autoresearch.workspace import Workspace

# two knobs the fake workers read: each setting below is worth this much val_bpb
# (far apart: git's three-way merge takes changes to adjacent lines as a conflict)
BASELINE = LOOP_SOURCE.read_text(encoding="utf-8")
SOURCE = BASELINE.replace("BATCH_SIZE = 8\n", "BATCH_SIZE = 8\nKNOB_A = 0\n") + "\nKNOB_B = 0\n"
WORTH = {"KNOB_A = 1": -0.5, "KNOB_A = 2": -0.4, "KNOB_A = 5": +0.5, "KNOB_B = 1": -0.3}


def change(title: str, search: str, replace: str) -> dict[str, Any]:
    return {"title": title, "rationale": "", "edits": [
        {"path": "train.py", "search": search, "replace": replace}]}


A1 = change("A to 1", "KNOB_A = 0", "KNOB_A = 1")
A2 = change("A to 2", "KNOB_A = 0", "KNOB_A = 2")
A5 = change("A to 5", "KNOB_A = 0", "KNOB_A = 5")
B1 = change("B to 1", "KNOB_B = 0", "KNOB_B = 1")
MISSING = change("edit a line that is not there", "NO SUCH LINE", "x = 1")


Hold = tuple[str, str, threading.Event]


class FakeWorker:
    """val_bpb = 4 + seed/1000 + what the knobs in the code are worth. A job whose code has
    ``with_`` and not ``without`` (a hold) waits until the hold's event is set (another
    experiment decided)."""

    def __init__(self, name: str, holds: list[Hold] | None = None) -> None:
        self.name = name
        self.holds = holds or []
        self.jobs: list[str] = []

    def measure(self, job: Job) -> Metrics:
        text = (job.source / "train.py").read_text(encoding="utf-8")
        for with_, without, event in self.holds:
            if with_ in text and without not in text:
                assert event.wait(30), f"held job ({with_}) never released"
        self.jobs.append(text)
        value = 4.0 + job.seed / 1000 + sum(v for k, v in WORTH.items() if k in text)
        job.out_dir.mkdir(parents=True, exist_ok=True)
        m = Metrics(status=RunStatus.ok, val_bpb=value, val_loss=value, seed=job.seed,
                    device=job.device, train_seconds=0.01, total_seconds=0.02)
        m.write(job.out_dir / "metrics.json")
        return m

    shares_host_cores = True  # it stands for a local worker on the CPU cores

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class Events(PlainReporter):
    """Quiet; sets ``kept[title]`` when an experiment with that title is decided."""

    def __init__(self) -> None:
        super().__init__(None, Console(quiet=True))
        self.decided: dict[str, threading.Event] = {}

    def on(self, title: str) -> threading.Event:
        return self.decided.setdefault(title, threading.Event())

    def finished(self, exp: Experiment, best: float | None) -> None:
        self.on(exp.title).set()


class Recording(MockAgent):
    """The mock agent, keeping every context it was shown."""

    def __init__(self, script: Path) -> None:
        super().__init__(script)
        self.contexts: list[Context] = []

    def propose(self, context: Context) -> Any:
        self.contexts.append(context)
        return super().propose(context)


def workspace(tmp: Path) -> Path:
    return loop_workspace(tmp, SOURCE)


def settings(ws: Path, **extra: Any) -> Settings:
    values = dict(workspace=ws, agent="mock", token_budget=4096, seeds=2, device="cpu",
                  dataset=str(ws.parent / "corpus.txt"), repairs=0, pipeline=True)
    return Settings.exactly(values | extra)


def write_script(tmp: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp / "script.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))


def candidates(store: Store) -> dict[str, Experiment]:
    return {e.title: e for e in store.experiments() if e.kind == "candidate"}


# -- the moving champion ------------------------------------------------------------------------
def test_a_winner_on_a_stale_champion_is_measured_again_on_the_new_one_before_it_is_kept(
        tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    events = Events()
    # B is proposed on the baseline beside A, and finishes only once A has been kept
    holds = [("KNOB_B = 1", "KNOB_A = 1", events.on("A to 1"))]
    workers = [FakeWorker("w0", holds), FakeWorker("w1", holds)]
    s = settings(ws)
    store = Store(s.db_path)
    loop = start(s, store, Workspace(ws), MockAgent(write_script(tmp_path, [A1, B1])), events,
                 2, workers=workers)
    run = loop.execute()
    exps = candidates(store)
    a, b = exps["A to 1"], exps["B to 1"]
    assert a.status == ES.kept and b.status == ES.kept
    base_id = store.experiments(kind="baseline")[0].id
    # B won against the baseline, then was ported onto A (a clean three-way apply) and kept
    # only after winning there too, on every seed
    assert b.parent_id == a.id and b.parent_commit == a.commit
    assert run.champion_experiment_id == b.id
    roles = [(m.role, m.seed) for m in store.measurements(b.id)]  # type: ignore[arg-type]
    assert roles == [("stale", 0), ("stale", 1), ("candidate", 0), ("candidate", 1)]
    assert b.val_bpb == pytest.approx(4.0005 - 0.8)  # both knobs in its code now
    decision = json.loads(b.decision)
    assert decision["stale"][0]["champion"] == base_id
    assert f"after winning on #{base_id}" in b.reason
    final = Workspace(ws).read_files(run.champion_commit)["train.py"]
    assert "KNOB_A = 1" in final and "KNOB_B = 1" in final
    code = CliRunner().invoke(app, ["--workspace", str(ws), "show", str(b.id)])
    assert code.exit_code == 0 and "on older champion" in code.output


def test_a_winner_that_does_not_port_onto_the_new_champion_ends_superseded(
        tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    events = Events()
    holds = [("KNOB_A = 2", "KNOB_A = 1", events.on("A to 1"))]
    workers = [FakeWorker("w0", holds), FakeWorker("w1", holds)]
    s = settings(ws)
    store = Store(s.db_path)
    # A to 2 edits A's line too: the three-way apply conflicts; the agent is asked once to
    # port it, and its answer (the script's third entry) does not apply either
    agent = Recording(write_script(tmp_path, [A1, A2, MISSING]))
    run = start(s, store, Workspace(ws), agent, events, 2, workers=workers).execute()
    a, a2 = candidates(store)["A to 1"], candidates(store)["A to 2"]
    assert a.status == ES.kept and a2.status == ES.superseded
    assert f"could not be ported onto #{a.id}" in a2.reason
    assert run.champion_experiment_id == a.id
    assert "The champion moved" in (agent.contexts[-1].repair or "")
    assert "KNOB_A = 1" in agent.contexts[-1].files["train.py"]  # shown the new champion
    # nothing of it was measured on the new champion
    assert {m.role for m in store.measurements(a2.id)} == {"stale"}  # type: ignore[arg-type]


# -- duplicates ---------------------------------------------------------------------------------
def test_a_duplicate_is_refused_before_training_and_the_agent_is_told(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    s = settings(ws, repairs=1)
    store = Store(s.db_path)
    workers = [FakeWorker("w0"), FakeWorker("w1")]
    # the same losing change twice (the second while the first is in flight or done), then
    # the agent's answer to being told so
    agent = Recording(write_script(tmp_path, [A5, A5, B1]))
    start(s, store, Workspace(ws), agent, Events(), 2, workers=workers).execute()
    exps = store.experiments(kind="candidate")
    assert len(exps) == 2
    # whichever claimed the code first was measured; the other was told it duplicates it,
    # and its repair was measured instead
    (first,) = [e for e in exps if e.title == "A to 5"]
    (other,) = [e for e in exps if e.id != first.id]
    assert first.status == ES.discarded
    assert other.title == "B to 1" and other.status == ES.kept
    repair = agent.contexts[2].repair or ""
    assert f"experiment #{first.id}" in repair and "already measured" in repair
    jobs = [j for w in workers for j in w.jobs]
    assert sum("KNOB_A = 5" in j for j in jobs) == 1  # its screen seed (a clear loss), once


def test_a_duplicate_that_is_not_repaired_is_rejected_with_the_id_it_duplicates(
        tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    s = settings(ws)
    store = Store(s.db_path)
    worker = FakeWorker("w0")
    start(s, store, Workspace(ws), MockAgent(write_script(tmp_path, [A5, A5])), Events(), 2,
          workers=[worker]).execute()
    first, second = store.experiments(kind="candidate")
    assert second.status == ES.rejected
    assert second.reason.startswith(f"duplicate of #{first.id}")
    assert store.measurements(second.id) == []  # type: ignore[arg-type]


# -- the cost cap with calls in flight together -------------------------------------------------
def test_the_cost_cap_holds_with_agent_calls_in_flight_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = workspace(tmp_path)
    good = ("TITLE: B to 1\nRATIONALE: r\n\ntrain.py\n<<<<<<< SEARCH\nKNOB_B = 0\n=======\n"
            "KNOB_B = {}\n>>>>>>> REPLACE\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer() as server:
        for i in range(10):  # each call costs $1 and takes half a second
            server.reply(good.format(i + 10), input_tokens=1, output_tokens=1, delay=0.5)
        s = settings(ws, max_cost=3.5, agent="openai")
        store = Store(s.db_path)
        agent = OpenAIAgent("fake-model", base_url=server.openai_url, max_retries=0,
                            prices={"fake-model": (1e6, 0.0)})  # $1 an input token
        loop = start(s, store, Workspace(ws), agent, Events(), 10,
                     workers=[FakeWorker("w0"), FakeWorker("w1")])
        with pytest.raises(LoopStopped, match="cost cap reached"):
            loop.execute()
        # the first call alone (its price unknown), then two at once: $1 + 2 x $1 <= $3.5;
        # a fourth would have crossed the cap
        assert server.max_in_flight == 2
        assert len(server.requests) == 3
    spent, _ = store.spending(loop.active.id)
    assert spent == pytest.approx(3.0) and spent <= 3.5
    assert store.get_run(loop.active.id).state.value == "stopped"  # type: ignore[union-attr]


# -- the real CLI with two local workers --------------------------------------------------------
def loop_args(ws: Path, *extra: str) -> list[str]:
    return ["--workspace", str(ws), "loop", "--agent", "mock", "--token-budget", "4096",
            "--seeds", "2", "--device", "cpu", "--dataset", str(ws.parent / "corpus.txt"),
            *extra]


@pytest.mark.slow
def test_two_workers_finish_the_budget_exactly_and_run_no_slot_twice(tmp_path: Path) -> None:
    ws = loop_workspace(tmp_path)
    knobs = [("LEARNING_RATE = 1e-5", "LEARNING_RATE = 3e-2"),
             ("BATCH_SIZE = 8", "BATCH_SIZE = 16"), ("SEQ_LEN = 32", "SEQ_LEN = 16"),
             ("LEARNING_RATE = 1e-5", "LEARNING_RATE = 1e-2")]
    entries = [change(f"{new}", old, new) for old, new in knobs]
    script = write_script(tmp_path, entries)
    code, out = invoke(*loop_args(ws, "--budget", "4", "--workers", "2", "--script", str(script)))
    assert code == 0, out
    assert "2 workers (w0, w1)" in out
    store = Store(ws / "results.db")
    exps = store.experiments(kind="candidate")
    assert sorted(e.seq for e in exps) == [1, 2, 3, 4]
    assert all(e.status in (ES.kept, ES.discarded, ES.rejected, ES.superseded) for e in exps)
    ms = [m for e in store.experiments() for m in store.measurements(e.id)]  # type: ignore[arg-type]
    assert {m.worker for m in ms} == {"w0", "w1"}
    assert {m.threads for m in ms} == {1}  # 2 cores, 2 workers: one thread per job
    assert max(m.concurrency for m in ms) == 2
    # no measurement was made twice: one per (experiment, role, seed)
    keys = [(m.experiment_id, m.role, m.seed) for m in ms]
    assert len(keys) == len(set(keys))
    code, out = invoke("--workspace", str(ws), "runs")
    assert code == 0 and "w0, w1" in out
    measured = next(e for e in exps if store.measurements(e.id))  # type: ignore[arg-type]
    code, out = invoke("--workspace", str(ws), "show", str(measured.id))
    assert code == 0 and " on w" in out and "1 thread" in out


@pytest.mark.slow
def test_sigkill_with_two_experiments_in_flight_then_resume_loses_and_doubles_nothing(
        tmp_path: Path) -> None:
    ws = loop_workspace(tmp_path)
    # whole-file proposals: each applies to whatever the champion is by then
    entries = [{"title": f"lr {i}e-4", "rationale": "", "edits": [{"path": "train.py",
                "content": BASELINE.replace("LEARNING_RATE = 1e-5", f"LEARNING_RATE = {i}e-4")}]}
               for i in range(1, 9)]
    script = write_script(tmp_path, entries)
    args = loop_args(ws, "--budget", "4", "--workers", "2", "--script", str(script))
    args[args.index("4096")] = "60000"  # long enough to be caught in flight
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    db = ws / "results.db"

    def two_training() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"loop ended early: {proc.stderr.read().decode()[-2000:]}")
        if not db.exists():
            return False
        store = Store(db)
        try:
            running = [e for e in store.experiments(kind="candidate") if e.status == ES.running]
            return len(running) == 2
        finally:
            store.close()

    wait_for("two experiments to train at once", two_training, 240)
    os.killpg(proc.pid, signal.SIGKILL)  # the loop and everything in its session
    proc.wait()

    code, out = invoke(*loop_args(ws, "--resume", "--token-budget", "60000"))
    assert code == 0, out
    store = Store(db)
    exps = store.experiments(kind="candidate")
    interrupted = [e for e in exps if e.status == ES.interrupted]
    counted = [e for e in exps if e.status != ES.interrupted]
    assert len(interrupted) >= 2
    assert sorted(e.seq for e in counted) == [1, 2, 3, 4]  # the budget, exactly
    # each interrupted experiment was measured again, once
    for e in interrupted:
        redone = [c for c in counted if c.rationale.startswith(f"(redo of interrupted #{e.id})")]
        assert len(redone) == (1 if e.commit else 0), e
    assert store.runs()[0].state.value == "finished"
    assert not list((ws / "experiments").rglob("job.pid"))  # no job outlived its loop


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "workers"),
    (["--gpu", "0,x"], "bad --gpu list"),
    (["--gpu", "0,0"], "bad --gpu list"),
    (["--gpu", "0,1", "--workers", "3"], "needs 3 GPUs"),
    (["--workers", "64"], "more than the"),
    (["--backend", "ray", "--ray-address", "127.0.0.1:9"], "Ray"),
    (["--backend", "nope"], "backend"),
])
def test_bad_worker_settings_are_one_line_exit_2_and_record_nothing(
        tmp_path: Path, extra: list[str], message: str) -> None:
    ws = workspace(tmp_path)
    code, out = invoke(*loop_args(ws, "--budget", "1", *extra))
    assert code == 2, out
    assert message in out and "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1, out
    if (ws / "results.db").exists():
        assert Store(ws / "results.db").runs() == []


def test_workers_split_gpus_one_each_and_cpu_cores_by_threads(tmp_path: Path) -> None:
    gpus = local_workers(tmp_path, "cuda", None, "0,3")
    assert [(w.name, w.gpu, w.threads) for w in gpus] == [("w0 gpu 0", "0", None),
                                                          ("w1 gpu 3", "3", None)]
    # each job's processes see only their worker's GPU, and the threads they were given
    env = child_env(gpus[1].gpu, threads=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["OMP_NUM_THREADS"] == "2"
    cpus = local_workers(tmp_path, "cpu", 2, None)
    assert [w.threads for w in cpus] == [cpu_cores() // 2] * 2
    assert [w.name for w in local_workers(tmp_path, "cpu", None, None)] == ["w0"]


def test_a_time_budget_baseline_on_shared_cores_keeps_every_worker_busy(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    s = settings(ws, token_budget=None, time_budget=1.0, seeds=3)
    store = Store(s.db_path)
    run = start(s, store, Workspace(ws), MockAgent(write_script(tmp_path, [A5])), Events(), 1,
                workers=[FakeWorker("w0"), FakeWorker("w1")]).execute()
    baseline = store.experiments(kind="baseline")[0]
    ms = store.measurements(baseline.id)  # type: ignore[arg-type]
    # 3 seeds on 2 workers: while the third runs, the other worker runs a filler job, so no
    # seed of the champion trains alone on the cores; fillers are never values
    assert sorted(m.seed for m in ms if m.role == "candidate") == [0, 1, 2]
    fillers = [m for m in ms if m.role == "filler"]
    assert len(fillers) >= 1 and all(m.seed > 2 for m in fillers)
    assert baseline.val_bpb == pytest.approx(4.001)
    assert run.noise_std is not None
