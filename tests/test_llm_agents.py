"""Anthropic and OpenAI agents, through the real SDKs, against a local fake server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_llm_server import ANTHROPIC_PATH, OPENAI_PATH, FakeLLMServer

from autoresearch.agents.base import AgentError, AgentFatal
from autoresearch.agents.llm import (
    DEFAULT_MODELS,
    PLACEHOLDER_KEY,
    AnthropicAgent,
    LLMAgent,
    OpenAIAgent,
    choose_auto,
    make_llm_agent,
)
from autoresearch.agents.pricing import PRICES, Price, cost_usd, price_of
from autoresearch.edits import parse_answer
from autoresearch.errors import UsageError
from autoresearch.models import Context, HistoryItem, Stats

SOURCE = "LR = 1e-3  # learning rate\nSTEPS = 100\n\n\ndef train(run):\n    return model\n"
ANSWER = (
    "TITLE: More steps\nRATIONALE: the loss is still falling.\n\n"
    "train.py\n<<<<<<< SEARCH\nSTEPS = 100\n=======\nSTEPS = 150\n>>>>>>> REPLACE\n"
)
PROVIDERS = ["anthropic", "openai"]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as s:
        yield s


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


class Sleeps(list[float]):
    """Records backoff delays instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(provider: str, server: FakeLLMServer, **kwargs: Any) -> LLMAgent:
    url = server.anthropic_url if provider == "anthropic" else server.openai_url
    options: dict[str, Any] = {"timeout": 5.0, "max_retries": 2, "backoff": 0.5}
    options.update(kwargs)
    options.setdefault("sleep", Sleeps())
    return make_llm_agent(provider, base_url=url, **options)


def context(**kwargs: Any) -> Context:
    base: dict[str, Any] = {
        "files": {"train.py": SOURCE},
        "budget": "300 s wall-clock",
        "device": "cuda",
        "baseline": Stats(mean=3.2210, std=0.017, n=5),
        "champion": Stats(mean=3.2010, std=0.015, n=3),
        "history": [
            HistoryItem(id=1, title="Cosine LR decay", status="kept", delta=-0.02, reason="clear"),
            HistoryItem(id=2, title="Wider MLP", status="discarded", delta=0.003, reason="noise"),
        ],
    }
    base.update(kwargs)
    return Context.model_validate(base)


def path_of(provider: str) -> str:
    return ANTHROPIC_PATH if provider == "anthropic" else OPENAI_PATH


# -- a good call ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_request_carries_model_source_and_history(provider: str, server: FakeLLMServer) -> None:
    server.reply(ANSWER)
    agent = make(provider, server)
    answer = agent.propose(context())

    assert answer.text == ANSWER
    assert parse_answer(answer.text).title == "More steps"
    (request,) = server.requests
    assert request.path == path_of(provider)
    assert request.model == DEFAULT_MODELS[provider] == agent.model
    prompt = request.prompt_text
    assert SOURCE in prompt
    assert "#1 [kept] Cosine LR decay (Δ -0.0200): clear" in prompt
    assert "#2 [discarded] Wider MLP (Δ +0.0030): noise" in prompt
    assert "<<<<<<< SEARCH" in prompt  # the answer format, from the system prompt
    key = "sk-ant-test" if provider == "anthropic" else "sk-openai-test"
    assert key in request.headers.get("x-api-key", "") + request.headers.get("authorization", "")
    if provider == "anthropic":
        assert "ML researcher" in request.body["system"]
        assert request.roles == ["user"]
        assert request.body["max_tokens"] == 16_000
    else:
        assert request.roles == ["system", "user"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_and_cost_land_in_the_call_record(provider: str, server: FakeLLMServer) -> None:
    server.reply(ANSWER, input_tokens=12_000, output_tokens=800)
    answer = make(provider, server).propose(context())
    (call,) = answer.calls
    assert (call.provider, call.model) == (provider, DEFAULT_MODELS[provider])
    assert (call.input_tokens, call.output_tokens) == (12_000, 800)
    price = PRICES[DEFAULT_MODELS[provider]]
    expected = (12_000 * price.input_per_mtok + 800 * price.output_per_mtok) / 1e6
    assert call.cost_usd == pytest.approx(expected)
    assert call.raw == ANSWER
    assert call.error is None
    assert call.latency_s > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_costs_none_not_zero(provider: str, server: FakeLLMServer) -> None:
    server.reply(ANSWER, input_tokens=10, output_tokens=5)
    (call,) = make(provider, server, model="my-local-llama").propose(context()).calls
    assert server.requests[0].model == "my-local-llama"
    assert (call.input_tokens, call.output_tokens) == (10, 5)
    assert call.cost_usd is None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_price_table_override(provider: str, server: FakeLLMServer) -> None:
    server.reply(ANSWER, input_tokens=1_000_000, output_tokens=500_000)
    agent = make(provider, server, model="my-local-llama", prices={"my-local-llama": (1.0, 4.0)})
    (call,) = agent.propose(context()).calls
    assert call.cost_usd == pytest.approx(3.0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dated_snapshot_in_response_is_priced(provider: str, server: FakeLLMServer) -> None:
    suffix = {"anthropic": "-20260917", "openai": "-2026-09-17"}[provider]
    dated = DEFAULT_MODELS[provider] + suffix
    server.reply(ANSWER, input_tokens=1000, output_tokens=0, model=dated)
    (call,) = make(provider, server).propose(context()).calls
    assert call.cost_usd == pytest.approx(PRICES[DEFAULT_MODELS[provider]].input_per_mtok / 1000)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_repair_sends_previous_answer_and_error(provider: str, server: FakeLLMServer) -> None:
    server.reply(ANSWER)
    ctx = context(
        repair="The SEARCH text for train.py (starting 'STEPS = 10') was not found.",
        previous_answer="TITLE: More steps\nbroken block",
    )
    make(provider, server).propose(ctx)
    (request,) = server.requests
    turns = request.roles[1:] if provider == "openai" else request.roles
    assert turns == ["user", "assistant", "user"]
    assert "broken block" in request.prompt_text
    assert "(starting 'STEPS = 10') was not found." in request.prompt_text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_queued_answers_are_served_in_order(provider: str, server: FakeLLMServer) -> None:
    server.reply("TITLE: one")
    server.reply("TITLE: two")
    agent = make(provider, server)
    assert [agent.propose(context()).text for _ in range(2)] == ["TITLE: one", "TITLE: two"]
    assert server.pending == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_workspace_prompts_are_used(provider: str, server: FakeLLMServer, tmp_path: Path) -> None:
    for name, text in [
        ("system.md", "CUSTOM SYSTEM for {{metric}}"),
        ("propose.md", "CUSTOM PROPOSE\n{{files}}"),
        ("repair.md", "{{error}}"),
    ]:
        (tmp_path / name).write_text(text, encoding="utf-8")
    server.reply(ANSWER)
    server.reply(ANSWER)
    make(provider, server, prompts_dir=tmp_path).propose(context())
    assert "CUSTOM SYSTEM for val_bpb" in server.requests[0].prompt_text
    make(provider, server, prompts_dir=tmp_path / "missing").propose(context())
    assert "ML researcher" in server.requests[1].prompt_text  # the shipped templates


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_then_success_is_retried(provider: str, server: FakeLLMServer) -> None:
    server.error(429, "rate limited, slow down")
    server.reply(ANSWER)
    sleeps = Sleeps()
    answer = make(provider, server, sleep=sleeps).propose(context())
    assert answer.text == ANSWER
    assert len(server.requests) == 2
    failed, ok = answer.calls
    assert failed.error is not None and "HTTP 429" in failed.error and "slow down" in failed.error
    assert failed.cost_usd == 0.0 and failed.input_tokens is None
    assert ok.error is None and ok.raw == ANSWER
    assert sleeps == [0.5]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_error_storm_raises_agent_error(provider: str, server: FakeLLMServer) -> None:
    for _ in range(5):
        server.error(500, "internal\nerror")
    sleeps = Sleeps()
    agent = make(provider, server, max_retries=3, sleep=sleeps, max_backoff=1.5)
    with pytest.raises(AgentError) as info:
        agent.propose(context())
    assert not isinstance(info.value, AgentFatal)
    message = str(info.value)
    assert "\n" not in message
    assert "failed after 4 attempts" in message and "HTTP 500" in message
    assert len(server.requests) == 4 and server.pending == 1  # bounded
    assert len(info.value.calls) == 4
    assert all(c.error and "HTTP 500" in c.error for c in info.value.calls)
    assert sleeps == [0.5, 1.0, 1.5]  # exponential, capped


@pytest.mark.parametrize("provider", PROVIDERS)
def test_overloaded_529_is_retried(provider: str, server: FakeLLMServer) -> None:
    server.error(529, "overloaded")
    server.reply(ANSWER)
    assert make(provider, server).propose(context()).text == ANSWER


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_header_is_honoured(provider: str, server: FakeLLMServer) -> None:
    server.error(429, headers={"retry-after": "7"})
    server.reply(ANSWER)
    sleeps = Sleeps()
    make(provider, server, sleep=sleeps, backoff=0.1).propose(context())
    assert sleeps == [7.0]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_timeout_raises_agent_error(provider: str, server: FakeLLMServer) -> None:
    server.reply(ANSWER, delay=10)
    server.reply(ANSWER, delay=10)
    agent = make(provider, server, timeout=0.25, max_retries=1)
    with pytest.raises(AgentError) as info:
        agent.propose(context())
    assert not isinstance(info.value, AgentFatal)
    assert "timed out" in str(info.value)
    assert len(info.value.calls) == 2
    assert all(0.2 < c.latency_s < 5 for c in info.value.calls)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_connection_refused_raises_agent_error(provider: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    agent = make_llm_agent(provider, base_url=url, max_retries=1, sleep=Sleeps(), timeout=2.0)
    with pytest.raises(AgentError, match="connection error") as info:
        agent.propose(context())
    assert len(info.value.calls) == 2


# -- errors no retry can fix ------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_key_is_fatal_at_once(provider: str, server: FakeLLMServer) -> None:
    server.error(401, "invalid x-api-key")
    server.reply(ANSWER)
    with pytest.raises(AgentFatal) as info:
        make(provider, server).propose(context())
    message = str(info.value)
    assert "\n" not in message
    assert "authentication failed" in message and "invalid x-api-key" in message
    assert ("ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY") in message
    assert len(server.requests) == 1
    assert len(info.value.calls) == 1 and info.value.calls[0].error


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("status", "expected"),
    [(403, "authentication failed"), (404, "'no-such-model'"), (400, "request rejected")],
)
def test_unfixable_errors_are_fatal(
    provider: str, server: FakeLLMServer, status: int, expected: str
) -> None:
    server.error(status, "nope")
    with pytest.raises(AgentFatal, match=expected):
        make(provider, server, model="no-such-model").propose(context())
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_is_fatal_for_the_vendor_api(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    var = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
    with pytest.raises(AgentFatal, match=f"{var} is not set"):
        make_llm_agent(provider)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_custom_base_url_needs_no_key(
    provider: str, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    server.reply(ANSWER)
    assert make(provider, server).propose(context()).text == ANSWER
    headers = server.requests[0].headers
    assert PLACEHOLDER_KEY in headers.get("x-api-key", "") + headers.get("authorization", "")


# -- factory, auto choice, prices -------------------------------------------------------------


def test_make_llm_agent_builds_each_provider() -> None:
    anthropic_agent = make_llm_agent("anthropic", model="claude-haiku-4-5", timeout=9.0)
    assert isinstance(anthropic_agent, AnthropicAgent)
    assert (anthropic_agent.name, anthropic_agent.model) == ("anthropic", "claude-haiku-4-5")
    assert anthropic_agent.timeout == 9.0
    openai_agent = make_llm_agent("openai")
    assert isinstance(openai_agent, OpenAIAgent) and openai_agent.model == DEFAULT_MODELS["openai"]
    with pytest.raises(UsageError, match="unknown model provider 'gemini'"):
        make_llm_agent("gemini")


def test_choose_auto() -> None:
    name, notice = choose_auto({"ANTHROPIC_API_KEY": "k", "OPENAI_API_KEY": "k"})
    assert name == "anthropic" and "ANTHROPIC_API_KEY" in notice
    assert choose_auto({"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": " "})[0] == "openai"
    name, notice = choose_auto({})
    assert name == "playbook" and "offline" in notice and "\n" not in notice


def test_price_lookup() -> None:
    assert price_of("claude-sonnet-4-5-20250929") == PRICES["claude-sonnet-4-5"]
    assert price_of("gpt-4.1-2025-04-14") == PRICES["gpt-4.1"]
    assert price_of("gpt-4.1-mini") == PRICES["gpt-4.1-mini"]  # not gpt-4.1's price
    assert price_of("gpt-5.4-nano") is None  # no guessing from a longer name
    assert price_of("llama3") is None
    assert price_of("llama3", {"llama3": (0.0, 0.0)}) == Price(0.0, 0.0)  # an explicit zero
    assert cost_usd("gpt-4.1", None, 10) is None
    assert cost_usd("gpt-4.1", 1_000_000, 1_000_000) == pytest.approx(10.0)
