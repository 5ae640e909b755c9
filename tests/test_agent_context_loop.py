"""The agent's context in a real loop: the OpenAI SDK against a local server that captures every
request, one worker, real training of a tiny model.

One run walks through it in order:

1. ``loop --budget 4 --reasoning-effort high``: each answer starts with a NOTES block; the
   fourth call finds the server without an answer (a fatal error): the run stops, resumable;
   - request 2 shows the notes of answer 1 and the result of experiment 1 (one worker: the
     next proposal is asked for once the last result is in);
   - while request 2 is in flight, ``autoresearch steer`` adds guidance: request 3 shows it
     (the loop reads the store at each call) and request 2 did not;
   - every request carries the run's facts with the champion's numbers from the store, and
     ``reasoning_effort``; the reasoning tokens of each call are recorded.
2. ``autoresearch prompt`` prints what the next call would get; ``loop --resume`` sends
   exactly that (notes carried across the resume included).
3. ``show`` and ``runs`` show the notes and the guidance with its time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import invoke as cli
from conftest import invoke_json as cli_json
from conftest import loop_workspace
from fake_llm_server import FakeLLMServer, Request

from autoresearch.agents import llm
from autoresearch.agents.llm import KEY_VARS
from autoresearch.metrics import Metrics
from autoresearch.models import Context
from autoresearch.store import Store


def answer(notes: str, title: str, search: str, replace: str) -> str:
    return (f"Thinking out loud first: this text is ignored.\nNOTES:\n{notes}\n"
            f"TITLE: {title}\nRATIONALE: a test change.\n\ntrain.py\n<<<<<<< SEARCH\n"
            f"{search}\n=======\n{replace}\n>>>>>>> REPLACE\n")


ANSWERS = [
    answer("- note one: the LR is far too low", "Raise the learning rate",
           "LEARNING_RATE = 1e-5  # far too small on purpose: a candidate that raises it is "
           "a real gain", "LEARNING_RATE = 3e-2"),
    answer("- note two: LR fixed; try the batch", "Halve the batch", "BATCH_SIZE = 8",
           "BATCH_SIZE = 4"),
    answer("- note three: resume must carry me", "Shorter windows", "SEQ_LEN = 32",
           "SEQ_LEN = 16"),
    answer("- note four", "Log less often", "        if step % 5 == 0:",
           "        if step % 10 == 0:"),
]
GUIDANCE = "Prefer changes to the optimizer over the data pipeline"


def run_cli(ws: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoresearch", "--workspace", str(ws), *args],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_notes_guidance_facts_and_fresh_results_reach_the_prompts(tmp_path: Path) -> None:
    ws = loop_workspace(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")} | {
        "AUTORESEARCH_CACHE": str(tmp_path / "cache"), KEY_VARS["openai"]: "sk-test",
        "AUTORESEARCH_AGENT_RETRIES": "0"}
    steered: list[str] = []

    def steer_during_the_second_call(request: Request) -> None:
        if len(server.requests) == 2:  # the loop is running and waiting on this answer
            code, out = cli("--workspace", str(ws), "steer", GUIDANCE)
            steered.append(out)
            assert code == 0, out

    with FakeLLMServer() as server:
        server.on_request = steer_during_the_second_call
        for text in ANSWERS[:3]:
            server.reply(text, input_tokens=1000, output_tokens=300, reasoning_tokens=120)
        base = ["--agent", "openai", "--base-url", server.openai_url, "--model", "o9-test",
                "--token-budget", "4096", "--seeds", "1", "--device", "cpu", "--workers", "1",
                "--dataset", str(tmp_path / "corpus.txt"), "--prompt-tokens", "20000"]
        # the fourth call finds no answer queued (HTTP 400, fatal): the run stops, resumable
        done = run_cli(ws, env, "loop", "--budget", "4", "--reasoning-effort", "high", *base)
        assert done.returncode == 1 and "resumable" in done.stderr, done.stderr[-3000:]
        first = list(server.requests[:3])
        assert len(server.requests) == 4 and steered

        # reasoning room passed through the SDK, its tokens recorded
        assert all(r.body.get("reasoning_effort") == "high" for r in first)
        store = Store(ws / "results.db")
        calls = [c for c in store.calls(run_id=1) if c.error is None]
        assert [c.reasoning_tokens for c in calls] == [120, 120, 120]
        assert [c.notes for c in calls] == [a.split("NOTES:\n")[1].split("\nTITLE")[0]
                                            for a in ANSWERS[:3]]

        # notes: request 1 has none; each later one shows the answer before it
        assert "None yet" in first[0].user_text
        assert "- note one: the LR is far too low" in first[1].user_text
        assert "- note two: LR fixed; try the batch" in first[2].user_text
        assert "note one" not in first[2].user_text  # rewritten, not accumulated

        # fresh results: each request shows the experiment before it finished
        exps = store.experiments(run_id=1)
        for i, request in enumerate(first[1:], start=1):
            prev = exps[i]  # exps[0] is the baseline
            assert f"- #{prev.id} [{prev.status.value}] {prev.title}" in request.user_text
            assert prev.status.value in ("kept", "discarded")

        # steering while the loop runs reaches the next prompt, not the one in flight
        assert GUIDANCE not in first[1].user_text
        assert f"- {GUIDANCE}" in first[2].user_text

        # the facts carry the store's numbers for the champion of the time
        last = first[2].user_text
        found = re.search(r"champion #(\d+) \(mean over its seeds\): (\d+) steps, ([\d.]+)k "
                          r"tokens seen = ([\d.]+) epochs", last)
        assert found is not None, last
        champ_id = int(found[1])
        assert champ_id < exps[3].id  # the champion when the third proposal was asked for
        (m,) = store.measurements(champ_id)
        assert int(found[2]) == m.steps
        assert float(found[3]) == float(f"{m.train_tokens / 1e3:.3g}")
        seq_len = Metrics.model_validate_json(m.metrics).seq_len
        assert "vocabulary 256" in last and f"evaluation context {seq_len} tokens" in last
        assert "## Run facts" in last and "## Progress" in last
        assert "4,096 training tokens per measurement" in last
        store.close()

        # `prompt` prints what the next call gets; the resumed loop sends exactly that
        shown = run_cli(ws, env, "prompt")
        assert shown.returncode == 0, shown.stderr
        assert "- note three: resume must carry me" in shown.stdout
        server.reply(ANSWERS[3], reasoning_tokens=5)
        again = run_cli(ws, env, "loop", "--resume")
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.requests) == 5
        resumed = server.requests[4]
        assert resumed.body.get("reasoning_effort") == "high"  # the run's setting survives
        printed = shown.stdout.split("=== user ===\n", 1)
        assert printed[0].removeprefix("=== system ===\n").rstrip("\n") == \
            resumed.system_text.rstrip("\n")
        assert printed[1].rstrip("\n") == resumed.user_text.rstrip("\n")

    # show and runs: the notes with the call, the guidance with its time
    code, out = cli("--workspace", str(ws), "show", "3")
    assert code == 0 and "note two: LR fixed" in out and "120 thinking/reasoning" in out
    code, out = cli("--workspace", str(ws), "show", "4")
    assert "guidance (active when it was proposed)" in out and GUIDANCE in out
    code, out = cli("--workspace", str(ws), "runs")
    assert GUIDANCE in out and "[active]" in out
    (run,) = cli_json("--workspace", str(ws), "runs")
    assert run["guidance"][0]["text"] == GUIDANCE and run["guidance"][0]["created_at"]
    assert run["notes"] == "- note four"
    # the dashboard: the run's guidance and newest notes, an experiment's notes and guidance
    from fastapi.testclient import TestClient

    from autoresearch.dashboard import create_app

    web = TestClient(create_app(ws, ws / "results.db"))
    page = web.get("/runs/1").text
    assert GUIDANCE in page and "- note four" in page
    page = web.get("/experiments/4").text
    assert "note three: resume must carry me" in page and GUIDANCE in page
    code, out = cli("--workspace", str(ws), "steer", "--clear")
    assert code == 0 and "1 guidance entry cleared" in out
    code, out = cli("--workspace", str(ws), "steer", "--list")
    assert "cleared" in out and GUIDANCE in out


# -- Anthropic extended thinking, through the real SDK ----------------------------------------


def test_anthropic_thinking_is_requested_recorded_and_ignored_in_the_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VARS["anthropic"], "sk-test")
    with FakeLLMServer() as server:
        server.reply(ANSWERS[0], thinking="TITLE: a decoy title inside the thinking",
                     input_tokens=900, output_tokens=2500, reasoning_tokens=2100)
        agent = llm.make_llm_agent("anthropic", model="claude-haiku-4-5",
                                   base_url=server.anthropic_url, thinking_tokens=2048,
                                   max_retries=0)
        got = agent.propose(Context(files={"train.py": "x = 1\n"}))
        (request,) = server.requests
    assert request.body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert request.body["max_tokens"] == agent.max_tokens + 2048  # the answer keeps its room
    assert "decoy" not in got.text and got.text.startswith("Thinking out loud")
    (call,) = got.calls
    assert (call.output_tokens, call.reasoning_tokens) == (2500, 2100)
    assert call.cost_usd is not None and call.cost_usd > 0  # thinking is billed as output


def test_reasoning_options_belong_to_their_provider(tmp_path: Path) -> None:
    ws = loop_workspace(tmp_path)
    code, out = cli("--workspace", str(ws), "loop", "--agent", "playbook",
                    "--thinking-tokens", "2048", "--budget", "1")
    assert code != 0 and "for model agents" in out and "Traceback" not in out
    code, out = cli("--workspace", str(ws), "loop", "--agent", "playbook",
                    "--reasoning-effort", "extreme", "--budget", "1")
    assert code != 0 and "Traceback" not in out


def test_steer_and_prompt_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    ws = loop_workspace(tmp_path)
    cases = [(["steer", "go"], "no results database"), (["steer"], "exactly one of"),
             (["steer", "x", "--clear"], "exactly one of"), (["prompt"], "no results database")]
    for args, says in cases:
        code, out = cli("--workspace", str(ws), *args)
        assert code == 2 and says in out and "Traceback" not in out, (args, out)
    Store(ws / "results.db").close()  # a results file without runs
    for args, says in ((["steer", "go"], "no runs yet"), (["prompt", "--run", "7"], "no run 7"),
                       (["steer", "  "], "no runs yet")):
        code, out = cli("--workspace", str(ws), *args)
        assert code == 2 and says in out and "Traceback" not in out, (args, out)
