"""Without the sandbox a real model's code is not run unless the user says so, and every such
result says it was measured unfenced. Real loops (real git, SQLite, training subprocesses, the
real OpenAI client against a local fake server); the missing sandbox is made real for the
orchestrator by replacing ``sandbox.abi`` in this process."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bigram_corpus
from fake_llm_server import FakeLLMServer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from autoresearch import sandbox
from autoresearch.cli import app
from autoresearch.dashboard import create_app
from autoresearch.store import Store
from autoresearch.workspace import init_workspace

HERE = Path(__file__).parent
BASE_LINE = (HERE / "loop_source" / "train.py").read_text().splitlines()[5]
RAISE_LR = ("TITLE: Raise the learning rate\nRATIONALE: 1e-5 learns nothing.\n\ntrain.py\n"
            f"<<<<<<< SEARCH\n{BASE_LINE}\n=======\nLEARNING_RATE = 3e-2\n"
            ">>>>>>> REPLACE\n")


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("AUTORESEARCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("COLUMNS", "200")
    root = tmp_path / "ws"
    init_workspace(root)
    shutil.copy(HERE / "loop_source" / "train.py", root / "baseline" / "train.py")
    bigram_corpus(tmp_path / "corpus.txt")
    yield root


def cli(ws: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--workspace", str(ws), *args])
    return result.exit_code, result.output


def loop(ws: Path, *extra: str) -> tuple[int, str]:
    return cli(ws, "loop", "--token-budget", "6000", "--seeds", "1", "--device", "cpu",
               "--dataset", str(ws.parent / "corpus.txt"), "--budget", "1", *extra)


def no_landlock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "abi", lambda: 0)


@pytest.mark.parametrize("agent", ["openai", "anthropic"])
def test_a_model_agent_without_landlock_is_refused_unless_no_sandbox(
        ws: Path, monkeypatch: pytest.MonkeyPatch, agent: str) -> None:
    no_landlock(monkeypatch)
    code, out = loop(ws, "--agent", agent, "--base-url", "http://127.0.0.1:9/v1",
                     "--model", "m")
    assert code == 2, out
    assert out.count("\n") == 1 and "--no-sandbox" in out and "Landlock" in out
    assert Store(ws / "results.db").runs() == []  # nothing started


@pytest.mark.slow  # three real loops
def test_landlock_fences_a_model_run_and_no_sandbox_marks_every_result_unfenced(
        ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sandbox.abi() > 0, "this test needs Landlock on the machine"
    with FakeLLMServer() as server:
        # run 1: the real sandbox
        server.reply(RAISE_LR)
        code, out = loop(ws, "--agent", "openai", "--base-url", server.openai_url,
                         "--model", "gpt-4o-mini")
        assert code == 0, out
        # run 2: no Landlock, the user accepts running unfenced
        with monkeypatch.context() as m:
            no_landlock(m)
            server.reply(RAISE_LR)
            code, out = loop(ws, "--agent", "openai", "--base-url", server.openai_url,
                             "--model", "gpt-4o-mini", "--no-sandbox")
            assert code == 0, out
            # run 3: the mock agent's code is ours: not refused without Landlock
            script = ws.parent / "s.jsonl"
            script.write_text(json.dumps({"title": "t", "rationale": "r", "edits": [
                {"path": "train.py", "search": "LEARNING_RATE = 1e-5",
                 "replace": "LEARNING_RATE = 2e-2"}]}))
            code, out = loop(ws, "--agent", "mock", "--script", str(script))
            assert code == 0, out

    store = Store(ws / "results.db")
    states = {r.id: {json.loads(m.metrics)["sandbox"] for e in store.experiments(run_id=r.id)
                     for m in store.measurements(e.id)} for r in store.runs()}
    assert states[1] == {f"landlock v{sandbox.abi()}"}
    assert states[2] == {"off"}
    assert states[3] == {"none (no Landlock on this system)"}
    fenced = [e.id for e in store.experiments(run_id=1)]
    bare = [e.id for r in (2, 3) for e in store.experiments(run_id=r)]
    store.close()

    # show: every unfenced result says so, each measurement too; a fenced one does not
    for exp_id in bare:
        code, out = cli(ws, "show", str(exp_id))
        assert code == 0 and "sandbox  UNFENCED" in out and "UNFENCED (sandbox" in out, out
    for exp_id in fenced:
        code, out = cli(ws, "show", str(exp_id))
        assert code == 0 and "UNFENCED" not in out, out
    # history and runs, as tables and as JSON
    code, out = cli(ws, "history")
    rows = {int(line.split()[0]): line for line in out.splitlines()
            if line.strip() and line.split()[0].isdigit()}
    assert all("(unfenced)" in rows[i] for i in bare) and not any(
        "(unfenced)" in rows[i] for i in fenced), out
    hist = json.loads(cli(ws, "history", "--json")[1])
    assert {h["id"] for h in hist if h["unfenced"]} == set(bare)
    code, out = cli(ws, "runs")
    marked = {int(line.split()[0]) for line in out.splitlines()
              if line.strip() and line.split()[0].isdigit() and "(unfenced)" in line}
    assert marked == {2, 3}, out
    runs = json.loads(cli(ws, "runs", "--json")[1])
    assert [r["unfenced_measurements"] > 0 for r in runs] == [False, True, True]
    # the dashboard
    client = TestClient(create_app(ws, ws / "results.db"))
    assert client.get("/").text.count('class="unfenced"') == 2
    assert 'id="unfenced"' in client.get("/runs/2").text
    assert 'id="unfenced"' not in client.get("/runs/1").text
    assert 'id="unfenced"' in client.get(f"/experiments/{bare[-1]}").text
    assert 'id="unfenced"' not in client.get(f"/experiments/{fenced[-1]}").text
