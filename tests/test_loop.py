"""The research loop end to end: real git, a real SQLite file, real training subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import git
import pytest
from conftest import invoke, invoke_json, loop_workspace, wait_for

from autoresearch.models import ExperimentStatus as ES
from autoresearch.store import Store

TOKENS = "12000"

RAISE_LR = {"title": "Raise the learning rate", "rationale": "1e-5 learns nothing",
            "edits": [{"path": "train.py", "search": "LEARNING_RATE = 1e-5",
                       "replace": "LEARNING_RATE = 3e-2"}]}
LOWER_LR = {"title": "Lower the learning rate", "rationale": "maybe smoother",
            "edits": [{"path": "train.py", "search": "LEARNING_RATE = 3e-2",
                       "replace": "LEARNING_RATE = 1e-6"}]}
CRASH = {"title": "Crash on purpose", "rationale": "",
         "edits": [{"path": "train.py",
                    "search": "    model = Bigram(run.vocab_size).to(run.device)",
                    "replace": "    raise RuntimeError('boom from the candidate')"}]}
MISSING = {"title": "Edit a line that is not there", "rationale": "",
           "edits": [{"path": "train.py", "search": "THIS LINE DOES NOT EXIST",
                      "replace": "x = 1"}]}


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    return loop_workspace(tmp_path)


def script(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in entries), encoding="utf-8")
    return path


def loop_args(ws: Path, *extra: str, seeds: int = 2) -> list[str]:
    return ["--workspace", str(ws), "loop", "--agent", "mock", "--token-budget", TOKENS,
            "--seeds", str(seeds), "--device", "cpu", "--dataset", str(ws.parent / "corpus.txt"),
            "--repairs", "1", *extra]


def history(ws: Path) -> list[dict[str, object]]:
    return invoke_json("--workspace", str(ws), "history")  # type: ignore[return-value]


def test_mock_loop_records_every_outcome_and_moves_the_champion_only_on_keeps(ws: Path) -> None:
    s = script(ws.parent / "s.jsonl", [RAISE_LR, LOWER_LR, CRASH, MISSING, MISSING])
    code, out = invoke(*loop_args(ws, "--budget", "4", "--script", str(s), seeds=3))
    assert code == 0, out

    rows = history(ws)
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("baseline", "kept"), ("candidate", "kept"), ("candidate", "discarded"),
        ("candidate", "crashed"), ("candidate", "rejected")]
    baseline, kept, discarded, crashed, rejected = rows
    assert kept["val_bpb"] < baseline["val_bpb"] - 0.5 and kept["delta"] < 0
    assert discarded["delta"] > 0
    assert "boom from the candidate" in str(crashed["reason"])
    assert "THIS LINE DOES NOT EXIST" in str(rejected["reason"]) or "match" in str(
        rejected["reason"])

    repo = git.Repo(ws / "experiments" / "repo")
    champion = repo.commit("run/1")
    assert champion.hexsha == kept["commit"]
    assert len(list(repo.iter_commits("run/1"))) == 2  # baseline + the one keep
    assert "LEARNING_RATE = 3e-2" in (champion.tree / "train.py").data_stream.read().decode()
    # finished worktrees are removed; the diff of every applied experiment stays
    assert not list((ws / "experiments").glob("*/worktree"))
    assert "+LEARNING_RATE = 1e-6" in (ws / "experiments" / str(discarded["id"]) /
                                       "diff.patch").read_text()

    code, out = invoke("--workspace", str(ws), "show", str(crashed["id"]), "--log")
    assert code == 0 and "boom from the candidate" in out
    code, out = invoke("--workspace", str(ws), "show", str(kept["id"]), "--diff")
    assert code == 0 and "+LEARNING_RATE = 3e-2" in out and "seed 1" in out
    code, out = invoke("--workspace", str(ws), "export", "best")
    assert code == 0 and "LEARNING_RATE = 3e-2" in out
    runs = invoke_json("--workspace", str(ws), "runs")
    assert isinstance(runs, list) and runs[0]["statuses"]["kept"] == 1

    # measured stage by stage: the keep on 1, 2, then 3 seeds; the clear loss (and the
    # crash) on one seed only; every measurement says why it ran
    store = Store(ws / "results.db")
    purposes = {r["id"]: [m.purpose for m in store.measurements(int(str(r["id"])))]
                for r in rows}
    assert purposes[baseline["id"]] == ["baseline"] * 3
    assert purposes[kept["id"]] == ["screen", "second-stage", "confirmation"]
    assert purposes[discarded["id"]] == ["screen"] and purposes[crashed["id"]] == ["screen"]
    device = runs[0]["device_time"]
    assert {p: v["measurements"] for p, v in device["by_purpose"].items()} == {
        "baseline": 3, "screen": 3, "second-stage": 1, "confirmation": 1}
    assert device["measurements_per_candidate"] == pytest.approx(5 / 3, abs=0.01)
    code, out = invoke("--workspace", str(ws), "runs")
    assert code == 0 and "1.67 measurements per candidate" in out and "screen" in out
    # the noise is the champion's neighbourhood: the keep's own seeds after its screen (1, 2)
    # add a degree of freedom to the baseline's two; the next candidate, judged against the
    # new champion, is judged with that champion's own three seeds (two degrees of freedom)
    evidence = {r["id"]: json.loads(store.get_experiment(int(str(r["id"]))).decision or "{}")
                .get("evidence", {}) for r in (kept, discarded)}  # type: ignore[union-attr]
    assert evidence[kept["id"]]["noise_df"] == 3 and evidence[discarded["id"]]["noise_df"] == 2
    assert evidence[kept["id"]]["rule"] == "sequential-paired-t/v2"

    # the repair round trip consumed a second script entry inside the same experiment
    assert [c.attempt for c in store.calls(experiment_id=int(str(rejected["id"])))] == [0, 1]


@pytest.mark.slow  # two loops' worth of training
def test_replay_reproduces_a_token_budget_result_exactly(ws: Path) -> None:
    s = script(ws.parent / "s.jsonl", [RAISE_LR])
    assert invoke(*loop_args(ws, "--budget", "1", "--script", str(s)))[0] == 0
    kept = history(ws)[1]
    result = invoke_json("--workspace", str(ws), "replay", str(kept["id"]), "--onto", "baseline")
    assert isinstance(result, dict)
    assert result["replay_values"] == result["original_values"]
    assert result["reproduces"] is True


@pytest.mark.slow  # a killed loop and its resumption, each training for real
def test_a_loop_killed_mid_experiment_resumes_with_nothing_lost_or_doubled(ws: Path) -> None:
    s = script(ws.parent / "s.jsonl", [RAISE_LR, LOWER_LR])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch",
                             *loop_args(ws, "--budget", "2", "--script", str(s))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = ws / "results.db"

    def candidate_running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"loop ended early: {proc.stderr.read().decode()[-2000:]}")
        if not db.exists():
            return False
        exps = Store(db).experiments()
        return any(e.kind == "candidate" and e.status == ES.running for e in exps)

    wait_for("a candidate to start training", candidate_running)
    # readers work while the loop writes
    code, out = invoke("--workspace", str(ws), "history")
    assert code == 0 and "running" in out
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    code, out = invoke(*loop_args(ws, "--resume"))
    assert code == 0, out
    rows = history(ws)
    statuses = [(r["kind"], r["status"]) for r in rows]
    assert statuses[:2] == [("baseline", "kept"), ("candidate", "interrupted")]
    counted = [r for r in rows if r["kind"] == "candidate" and r["status"] != "interrupted"]
    # the interrupted proposal was measured again, then the script went on: nothing lost,
    # nothing counted twice
    assert [(r["title"], r["status"]) for r in counted] == [
        (RAISE_LR["title"], "kept"), (LOWER_LR["title"], "discarded")]
    assert len({r["id"] for r in rows}) == len(rows)
    store = Store(db)
    run = store.runs()[0]
    assert run.state.value == "finished"
    # the measurement of the killed experiment was not doubled by the resumed loop
    interrupted = int(str(rows[1]["id"]))
    assert len(store.measurements(interrupted)) <= 1


@pytest.mark.parametrize("args, message", [
    (["show", "999"], "no experiment 999"),
    (["replay", "999"], "no experiment 999"),
    (["export", "nope"], "experiment id or 'best'"),
    (["history", "--status", "nonsense"], "unknown status"),
    (["loop", "--time-budget", "5", "--token-budget", "100"], "not both"),
    (["loop", "--resume"], "no unfinished run"),
    (["loop", "--agent", "openai", "--script", "x.json"], "mock agent"),
])
def test_bad_input_is_one_clear_line_and_exit_2(ws: Path, args: list[str], message: str) -> None:
    Store(ws / "results.db").close()
    code, out = invoke("--workspace", str(ws), *args)
    assert code == 2, out
    assert message in out and "Traceback" not in out


def test_a_missing_workspace_is_exit_2(tmp_path: Path) -> None:
    code, out = invoke("--workspace", str(tmp_path / "nowhere"), "history")
    assert code == 2 and "no results database" in out
    code, out = invoke("--workspace", str(tmp_path), "loop", "--agent", "mock")
    assert code == 2 and "not a workspace" in out


def test_ctrl_c_records_what_was_in_flight_and_the_run_resumes(ws: Path) -> None:
    s = script(ws.parent / "s.jsonl", [RAISE_LR])
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch",
                             *loop_args(ws, "--budget", "1", "--script", str(s))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = ws / "results.db"

    def training() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"loop ended early: {proc.stderr.read().decode()[-2000:]}")
        return db.exists() and any(e.status == ES.running for e in Store(db).experiments())

    wait_for("an experiment to start training", training)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "loop --resume" in err.decode()
    store = Store(db)
    assert store.runs()[0].state.value == "stopped"
    statuses = [e.status for e in store.experiments()]
    assert statuses[-1] == ES.interrupted
    # no training job outlived the loop
    assert not list((ws / "experiments").rglob("job.pid"))
