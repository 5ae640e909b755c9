"""The Anthropic and OpenAI agents driving the real loop through the CLI, against a fake server.

Every measurement costs two Python processes that import torch (several seconds on a busy
2-core machine), so each provider gets ONE research run that walks through every agent
behaviour in order, and the tests below read what it recorded:

1. ``loop`` with a bad key: the baseline is measured, the first call gets 401 -> the loop
   stops with one line, exit 1, no traceback; the run is ``stopped``.
2. ``loop --resume`` with a good key, the server now answering:
   - experiment 2: 500, 500 (more than the one retry allowed) -> rejected, "agent failed";
   - experiment 3: two answers later than the agent timeout -> rejected, "agent failed";
   - experiment 4: 429, then a malformed answer, then a SEARCH that matches nothing, then a
     good answer -> two repair round trips, applied, trained, kept;
   - before experiment 5 the next call could cross ``--max-cost`` -> stopped, exit 1.
3. ``loop --resume`` again: stops at once on the same cap, asking nothing.

A second, smaller run per provider uses a model with no known price.
Agent timeout, retries and backoff are set through the environment
(AUTORESEARCH_AGENT_TIMEOUT / _RETRIES / _BACKOFF); the CLI has no flags for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOP_SOURCE, loop_workspace, wait_for
from conftest import invoke as cli
from conftest import invoke_json as cli_json
from fake_llm_server import ANTHROPIC_PATH, OPENAI_PATH, FakeLLMServer, Request

from autoresearch import edits
from autoresearch.agents.llm import KEY_VARS
from autoresearch.agents.pricing import PRICES
from autoresearch.store import AgentCall, Store

pytestmark = pytest.mark.slow

BASELINE = LOOP_SOURCE.read_text(encoding="utf-8")
TOKENS = "4096"  # the smallest useful budget: the cost of a measurement is process start-up
PROVIDERS = ["anthropic", "openai"]
MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4.1-mini"}  # in the price table
AGENT_TIMEOUT = 1.0  # seconds; the late answers below come after 5

GOOD = (
    "TITLE: Raise the learning rate\n"
    "RATIONALE: 1e-5 learns nothing in this budget; 3e-2 is a usual Adam rate for a bigram.\n\n"
    "train.py\n"
    "<<<<<<< SEARCH\n"
    "LEARNING_RATE = 1e-5  # far too small on purpose: a candidate that raises it is a real gain\n"
    "=======\n"
    "LEARNING_RATE = 3e-2\n"
    ">>>>>>> REPLACE\n"
)
MALFORMED = "I would raise the learning rate to 3e-2, since 1e-5 is far too small to learn."
MISMATCH = (
    "TITLE: Raise the learning rate\n"
    "RATIONALE: 1e-5 learns nothing.\n\n"
    "train.py\n"
    "<<<<<<< SEARCH\n"
    "LEARNING_RATE = 1e-4  # far too small\n"
    "=======\n"
    "LEARNING_RATE = 3e-2\n"
    ">>>>>>> REPLACE\n"
)
READS_THE_KEY = (
    "TITLE: Read the API key\n"
    "RATIONALE: curiosity.\n\n"
    "train.py\n"
    "<<<<<<< SEARCH\n"
    "BATCH_SIZE = 8\n"
    "=======\n"
    "import os\n"
    "BATCH_SIZE = len(os.environ.get('OPENAI_API_KEY', 'x' * 8))\n"
    ">>>>>>> REPLACE\n"
)
# usage the fake server reports for the three answers of experiment 4
USAGE = [(1000, 100), (2000, 200), (3000, 300)]


def cost(provider: str, tokens_in: int, tokens_out: int) -> float:
    price = PRICES[MODELS[provider]]
    return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6


EXP4_COST = {p: sum(cost(p, i, o) for i, o in USAGE) for p in PROVIDERS}
# the cap is checked before every call, assuming it costs as much as the dearest call so far:
# with calls costing 1, 2, 3 units, experiment 4 fits (0+0, 1+1, 3+2 <= 7.5 units) and the
# first call of experiment 5 would not (6+3 > 7.5)
CAP = {p: round(1.25 * c, 6) for p, c in EXP4_COST.items()}


# -- helpers ----------------------------------------------------------------------------------


def invoke(ws: Path, *args: str) -> tuple[int, str]:
    """Exit code and stdout+stderr of one CLI call in workspace ``ws``."""
    return cli("--workspace", str(ws), *args)


def invoke_json(ws: Path, *args: str) -> Any:
    return cli_json("--workspace", str(ws), *args)


def base_url(provider: str, server: FakeLLMServer) -> str:
    return server.anthropic_url if provider == "anthropic" else server.openai_url


def sent_key(request: Request) -> str:
    """The key as the request carried it (x-api-key, or Authorization: Bearer)."""
    auth = request.headers.get("authorization", "")
    return request.headers.get("x-api-key", "") or auth.removeprefix("Bearer ")


def make_workspace(root: Path) -> Path:
    return loop_workspace(root)


def loop_args(ws: Path, provider: str, server: FakeLLMServer, model: str, *extra: str) -> list[str]:
    return ["loop", "--agent", provider, "--base-url", base_url(provider, server),
            "--model", model, "--token-budget", TOKENS, "--seeds", "1", "--device", "cpu",
            "--dataset", str(ws.parent / "corpus.txt"), *extra]


@pytest.fixture(scope="module")
def mp() -> Iterator[pytest.MonkeyPatch]:
    """The environment of every loop here: our settings only, agent retries fast and few."""
    with pytest.MonkeyPatch.context() as m:
        for name in list(os.environ):
            if name.startswith("AUTORESEARCH_") or name in ("ANTHROPIC_BASE_URL",
                                                            "OPENAI_BASE_URL"):
                m.delenv(name)
        m.setenv("AUTORESEARCH_AGENT_TIMEOUT", str(AGENT_TIMEOUT))
        m.setenv("AUTORESEARCH_AGENT_RETRIES", "1")  # two attempts per call
        m.setenv("AUTORESEARCH_AGENT_BACKOFF", "0")  # retry at once
        m.setenv("COLUMNS", "200")  # tables as wide as they need (80 truncates the cost)
        yield m


# -- the journey ------------------------------------------------------------------------------


@dataclass
class Journey:
    provider: str
    ws: Path
    server: FakeLLMServer
    good_key: str
    bad_key: str
    steps: list[tuple[int, str]] = field(default_factory=list)  # (exit code, output) per loop
    requests: list[list[Request]] = field(default_factory=list)  # what each loop sent
    state_after_401: str = ""

    @property
    def store(self) -> Store:
        return Store(self.ws / "results.db")

    def history(self) -> list[dict[str, Any]]:
        return invoke_json(self.ws, "history")  # type: ignore[no-any-return]

    def calls(self, exp_id: int | None = None) -> list[AgentCall]:
        store = self.store
        try:
            if exp_id is None:
                return store.calls(run_id=1)
            return store.calls(experiment_id=exp_id)
        finally:
            store.close()


@pytest.fixture(scope="module", params=PROVIDERS)
def journey(request: pytest.FixtureRequest, mp: pytest.MonkeyPatch,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    provider: str = request.param
    root = tmp_path_factory.mktemp(f"journey-{provider}")
    mp.setenv("AUTORESEARCH_CACHE", str(root / "cache"))
    ws = make_workspace(root)
    with FakeLLMServer() as server:
        j = Journey(provider, ws, server, good_key=f"sk-{provider}-good",
                    bad_key=f"sk-{provider}-revoked")
        var = KEY_VARS[provider]
        args = loop_args(ws, provider, server, MODELS[provider], "--budget", "5",
                         "--max-cost", str(CAP[provider]), "--repairs", "2")

        def step(*cli: str) -> None:
            before = len(server.requests)
            j.steps.append(invoke(ws, *cli))
            j.requests.append(server.requests[before:])

        # 1. a revoked key
        mp.setenv(var, j.bad_key)
        server.error(401, "invalid x-api-key")
        step(*args)
        store = Store(ws / "results.db")
        j.state_after_401 = store.runs()[0].state.value
        store.close()

        # 2. a good key; the server answers
        mp.setenv(var, j.good_key)
        server.error(500, "internal error")  # experiment 2: a storm of 500s
        server.error(500, "internal error")
        server.reply(GOOD, delay=5)  # experiment 3: later than the agent timeout
        server.reply(GOOD, delay=5)
        server.error(429, "rate limited, slow down")  # experiment 4
        for text, (tokens_in, tokens_out) in zip([MALFORMED, MISMATCH, GOOD], USAGE,
                                                 strict=True):
            server.reply(text, input_tokens=tokens_in, output_tokens=tokens_out)
        step(*loop_args(ws, provider, server, MODELS[provider], "--resume"))

        # 3. resume again: the cap still holds, nothing is asked
        step(*loop_args(ws, provider, server, MODELS[provider], "--resume"))
        yield j


def _prompt(request: Request) -> str:
    return request.prompt_text


# -- 401, then resume -------------------------------------------------------------------------


def test_bad_key_stops_with_one_line_and_resume_continues(journey: Journey) -> None:
    code, out = journey.steps[0]
    assert code == 1, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "authentication failed" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("stopped: ")
    assert "HTTP 401" in lines[0] and "invalid x-api-key" in lines[0]
    assert KEY_VARS[journey.provider] in lines[0] and "--resume" in lines[0]
    (request,) = journey.requests[0]  # asked once: a 401 is not retried
    assert sent_key(request) == journey.bad_key
    assert journey.state_after_401 == "stopped"
    # the failed call is on record, with no experiment (none was started)
    first = journey.calls()[0]
    assert first.experiment_id is None and first.error and "HTTP 401" in first.error
    # the resumed loop ran experiments with the key of the environment it runs in
    assert "resuming run 1" in journey.steps[1][1]
    assert journey.requests[1]
    assert all(sent_key(r) == journey.good_key for r in journey.requests[1])


# -- the full loop ----------------------------------------------------------------------------


def test_statuses_and_what_each_request_carries(journey: Journey) -> None:
    rows = journey.history()
    assert [(r["id"], r["kind"], r["status"]) for r in rows] == [
        (1, "baseline", "kept"), (2, "candidate", "rejected"), (3, "candidate", "rejected"),
        (4, "candidate", "kept")]
    kept = rows[3]
    assert kept["title"] == "Raise the learning rate"
    assert kept["val_bpb"] < rows[0]["val_bpb"] and kept["delta"] < 0
    path = ANTHROPIC_PATH if journey.provider == "anthropic" else OPENAI_PATH
    requests = journey.requests[1]
    assert len(requests) == 8  # 500 x2, timeout x2, 429, malformed, mismatch, repaired
    for r in requests:
        assert r.path == path
        assert r.model == MODELS[journey.provider]
        assert BASELINE in _prompt(r)  # the champion's source, verbatim
    # the first request knows of no experiment; the next experiment's sees the one before
    assert "#2 [" not in _prompt(requests[0])
    assert "- #2 [rejected] (agent failed) (no result): agent failed:" in _prompt(requests[2])
    assert "HTTP 500" in _prompt(requests[2])
    exp4_first = _prompt(requests[4])
    assert "- #2 [rejected] (agent failed)" in exp4_first
    assert "- #3 [rejected] (agent failed)" in exp4_first and "timed out" in exp4_first
    # the kept change became the champion: the branch of the run holds it
    code, out = invoke(journey.ws, "export", "best")
    assert code == 0 and "LEARNING_RATE = 3e-2" in out


def test_rate_limit_is_retried_within_the_experiment(journey: Journey) -> None:
    calls = journey.calls(4)
    assert [c.attempt for c in calls] == [0, 0, 1, 2]  # 429 + answer, then two repairs
    assert calls[0].error and "HTTP 429" in calls[0].error and "slow down" in calls[0].error
    # an HTTP error is billed nothing: recorded as zero cost, not as unknown
    assert calls[0].cost_usd == 0.0 and calls[0].input_tokens is None
    assert all(c.error is None for c in calls[1:])
    assert [c.raw for c in calls[1:]] == [MALFORMED, MISMATCH, GOOD]


def test_server_error_storm_rejects_the_experiment_and_the_loop_goes_on(
        journey: Journey) -> None:
    exp = journey.history()[1]
    assert exp["status"] == "rejected" and exp["title"] == "(agent failed)"
    reason = str(exp["reason"])
    assert reason.startswith(f"agent failed: {journey.provider} ({MODELS[journey.provider]})")
    assert "failed after 2 attempts" in reason and "HTTP 500" in reason
    calls = journey.calls(2)
    assert len(calls) == 2 and all(c.error and "HTTP 500" in c.error for c in calls)
    assert journey.store.get_experiment(3) is not None  # the loop went on


def test_timeout_is_an_agent_failure(journey: Journey) -> None:
    exp = journey.history()[2]
    assert exp["status"] == "rejected"
    assert "agent failed" in str(exp["reason"]) and "timed out" in str(exp["reason"])
    calls = journey.calls(3)
    assert len(calls) == 2
    assert all(c.error and "timed out" in c.error for c in calls)
    assert all(AGENT_TIMEOUT * 0.8 < c.latency_s < 4.5 for c in calls)


def test_malformed_answer_and_unmatched_search_are_repaired(journey: Journey) -> None:
    requests = journey.requests[1]
    first, format_repair, search_repair = (_prompt(r) for r in requests[5:8])
    # the loop's error messages, computed here the way the loop computes them
    with pytest.raises(edits.FormatError) as format_error:
        edits.parse_answer(MALFORMED)
    with pytest.raises(edits.EditError) as search_error:
        edits.apply_edits({"train.py": BASELINE}, edits.parse_answer(MISMATCH).edits)
    assert "Your previous answer could not be used" not in first
    assert str(format_error.value) in format_repair
    assert MALFORMED in format_repair  # shown to the model as its own previous turn
    message = str(search_error.value)
    assert "'LEARNING_RATE = 1e-4  # far too small'" in message and "was not found" in message
    assert "Did you mean these lines" in message
    assert "LEARNING_RATE = 1e-5  # far too small on purpose" in message  # the closest line
    assert message in search_repair
    assert str(format_error.value) not in search_repair  # only the latest error
    roles = requests[7].roles
    assert roles[-3:] == ["user", "assistant", "user"]
    # the repaired answer was applied and measured
    store = journey.store
    exp = store.get_experiment(4)
    measurements = store.measurements(4)
    assert exp is not None and exp.diff and "+LEARNING_RATE = 3e-2" in exp.diff
    assert [m.status for m in measurements] == ["ok"]


# -- usage and cost ---------------------------------------------------------------------------


def test_usage_and_cost_land_in_the_store_and_the_reports(journey: Journey) -> None:
    p = journey.provider
    calls = journey.calls(4)
    assert [(c.input_tokens, c.output_tokens) for c in calls] == [(None, None), *USAGE]
    assert [c.model for c in calls] == [MODELS[p]] * 4
    assert [c.provider for c in calls] == [p] * 4
    for c, (tokens_in, tokens_out) in zip(calls[1:], USAGE, strict=True):
        assert c.cost_usd == pytest.approx(cost(p, tokens_in, tokens_out))
        assert c.latency_s > 0
    total = f"${EXP4_COST[p]:.4f}"

    rows = journey.history()
    assert rows[3]["cost_usd"] == pytest.approx(EXP4_COST[p])
    code, out = invoke(journey.ws, "history")
    assert code == 0 and total in out
    code, out = invoke(journey.ws, "show", "4")
    assert code == 0, out
    assert f"agent    4 call(s), 6,000 in / 600 out tokens, cost {total}" in out
    assert "attempt 0: HTTP 429" in out
    (run,) = invoke_json(journey.ws, "runs")
    assert run["cost_usd"] == pytest.approx(EXP4_COST[p])
    assert run["calls"] == 9  # 401, 500 x2, timeout x2, 429, three answers
    code, out = invoke(journey.ws, "runs")
    assert code == 0 and total in out


def test_failed_calls_do_not_make_the_cost_unknown(journey: Journey) -> None:
    _, out = invoke(journey.ws, "show", "4")
    assert f"cost ${EXP4_COST[journey.provider]:.4f}\n" in out + "\n"
    assert journey.history()[1]["calls_with_unknown_cost"] == 0  # the 500 storm


# -- the cost cap -----------------------------------------------------------------------------


def test_max_cost_stops_cleanly_before_crossing_the_cap(journey: Journey) -> None:
    code, out = journey.steps[1]
    assert code == 1, out
    assert "Traceback" not in out
    (line,) = [line for line in out.splitlines() if line.startswith("stopped: ")]
    assert "cost cap reached" in line and f"cap ${CAP[journey.provider]:.4f}" in line
    assert "resumable" in line
    (run,) = invoke_json(journey.ws, "runs")
    assert run["state"] == "stopped" and "cost cap" in run["stop_reason"]
    assert run["cost_usd"] <= CAP[journey.provider]
    assert len(journey.history()) == 4  # no 5th experiment was started
    # resumable: --resume finds the run, and (the cap unchanged) stops again asking nothing
    code, out = journey.steps[2]
    assert code == 1 and "resuming run 1" in out and "cost cap reached" in out, out
    assert journey.requests[2] == []
    store = journey.store
    assert store.last_unfinished_run() is not None
    store.close()


def test_resume_with_a_higher_cap_continues(journey: Journey) -> None:
    # three answers the guard rejects: one experiment (2 repairs), nothing trained
    for _ in range(3):
        journey.server.reply(READS_THE_KEY, input_tokens=10, output_tokens=1)
    before = len(journey.server.requests)
    code, out = invoke(journey.ws, *loop_args(journey.ws, journey.provider, journey.server,
                                              MODELS[journey.provider], "--resume",
                                              "--budget", "4", "--max-cost", "1.0"))
    assert len(journey.server.requests) > before, out
    assert code == 0, out
    assert journey.history()[-1]["status"] == "rejected"


# -- a model with no known price --------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_costs_none_and_reports_say_unknown(
        provider: str, mp: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mp.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    mp.setenv(KEY_VARS[provider], "sk-dummy")
    ws = make_workspace(tmp_path)
    with FakeLLMServer() as server:
        server.reply(READS_THE_KEY, input_tokens=500, output_tokens=50)
        code, out = invoke(ws, *loop_args(ws, provider, server, "my-local-llama",
                                          "--budget", "1", "--repairs", "0"))
        (request,) = server.requests
    assert code == 0, out
    assert request.model == "my-local-llama" and sent_key(request) == "sk-dummy"
    rows = invoke_json(ws, "history")
    assert [(r["kind"], r["status"]) for r in rows] == [("baseline", "kept"),
                                                        ("candidate", "rejected")]
    assert str(rows[1]["reason"]).startswith("guard [")  # never trained
    assert rows[1]["cost_usd"] == 0.0 and rows[1]["calls_with_unknown_cost"] == 1
    store = Store(ws / "results.db")
    (call,) = store.calls(run_id=1)
    store.close()
    assert (call.input_tokens, call.output_tokens, call.cost_usd) == (500, 50, None)
    assert call.model == "my-local-llama"
    code, out = invoke(ws, "show", "2")
    assert code == 0 and "500 in / 50 out tokens, cost ?" in out
    code, out = invoke(ws, "history")
    assert code == 0 and out.rstrip().endswith(" ?"), out  # the cost column of the last row
    (run,) = invoke_json(ws, "runs")
    assert run["cost_usd"] == 0.0 and run["calls_with_unknown_cost"] == 1


# -- Ctrl-C while the agent thinks ------------------------------------------------------------


def test_ctrl_c_ends_an_agent_call_in_flight_and_records_it(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")} | {
        "AUTORESEARCH_CACHE": str(tmp_path / "cache"), KEY_VARS["openai"]: "sk-test",
        "AUTORESEARCH_AGENT_TIMEOUT": "300", "AUTORESEARCH_AGENT_RETRIES": "0"}
    with FakeLLMServer() as server:
        server.reply(GOOD, input_tokens=10, output_tokens=1, delay=120)  # two minutes away
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearch", "--workspace", str(ws),
             *loop_args(ws, "openai", server, MODELS["openai"], "--budget", "1")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def asking() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"loop ended early: {proc.stderr.read().decode()[-2000:]}")
            return server.in_flight > 0

        try:
            wait_for("the agent call to be in flight", asking, 240)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - t0
        finally:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-3000:]
    assert took < 30  # the call was ended, not waited for
    store = Store(ws / "results.db")
    assert store.runs()[0].state.value == "stopped"
    (call,) = store.calls(run_id=1)
    assert call.error == "cancelled: the loop is stopping"
    assert [e.kind for e in store.experiments()] == ["baseline"]  # the call never answered
