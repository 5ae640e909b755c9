"""Agents backed by a hosted model: Anthropic (Messages API) and OpenAI (Chat Completions).

Both render the same templates, call the model through its official SDK with a short retry
ladder of their own (exponential backoff on 429, 5xx, connection errors and timeouts; the SDK's
own retries are off so that every attempt is recorded), and return the raw text: the loop
parses it with ``edits.parse_answer`` and comes back with ``context.repair`` when it is unusable.

Keys come only from the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY). A custom base URL
(an OpenAI-compatible local server, a proxy) may need no key; a placeholder is sent then.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anthropic
import openai

from autoresearch.agents.base import AgentError, AgentFatal, Answer
from autoresearch.agents.pricing import PriceTable, cost_usd
from autoresearch.agents.prompts import prompts_dir, render_conversation
from autoresearch.errors import UsageError, one_line
from autoresearch.models import CallRecord, Context

DEFAULT_MODELS = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-5.5"}
KEY_VARS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
BASE_URL_VARS = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
PLACEHOLDER_KEY = "not-needed"
RETRY_STATUSES = frozenset({408, 409, 425, 429})  # and every status >= 500


def _error_message(exc: Exception) -> str:
    """The provider's own error message when the body carries one, else the exception text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return one_line(inner["message"])
    return one_line(getattr(exc, "message", None) or str(exc) or type(exc).__name__)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: ignore, use our own backoff


class _Cancelled(Exception):
    """The loop cancelled the call in flight."""


class LLMAgent:
    """Shared logic: render prompts, call with retries, record every attempt."""

    name = "llm"
    # the SDK clients are thread-safe and every call is independent: the loop may have
    # several in flight (one per worker) within the cost cap
    concurrent = True
    scripted = False

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 180.0,
        max_retries: int = 4,
        prompts_dir: Path | None = None,
        prices: PriceTable | None = None,
        max_tokens: int = 16_000,  # room for thinking plus a whole-file rewrite
        history_tokens: int | None = None,  # fixed history budget (default: the prompt's bound)
        thinking_tokens: int | None = None,
        reasoning_effort: str | None = None,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model or DEFAULT_MODELS[self.name]
        self.base_url = base_url or os.environ.get(BASE_URL_VARS[self.name]) or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.prompts_dir = prompts_dir
        self.prices = prices
        self.max_tokens = max_tokens
        self.history_tokens = history_tokens
        # reasoning room: Anthropic's extended thinking budget, OpenAI's reasoning effort
        # (each provider refuses the other's option: make_llm_agent says so first)
        self.thinking_tokens = thinking_tokens
        self.reasoning_effort = reasoning_effort
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._cancelled = threading.Event()
        self.api_key = self._api_key()

    def _api_key(self) -> str:
        var = KEY_VARS[self.name]
        key = os.environ.get(var, "").strip()
        if key:
            return key
        if self.base_url:
            return PLACEHOLDER_KEY  # a local or proxy server may not check keys
        raise AgentFatal(f"{var} is not set: export it, or choose another agent")

    # -- provider hooks ----------------------------------------------------------------------

    client_class: Callable[..., Any]  # the SDK's client class
    transient_types: tuple[type[Exception], ...]  # connection errors and timeouts
    status_types: tuple[type[Exception], ...]  # the provider answered with an HTTP error
    error_types: tuple[type[Exception], ...]  # every error the SDK raises

    def _make_client(self) -> Any:
        return self.client_class(
            api_key=self.api_key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
        )

    def _send(self, system: str, messages: list[dict[str, str]]) -> tuple[str, Any, str]:
        """One request: (text, usage object, model named by the response)."""
        raise NotImplementedError

    def _usage(self, usage: Any) -> tuple[int | None, int | None]:
        raise NotImplementedError

    def _reasoning(self, usage: Any) -> int | None:
        """Thinking or reasoning tokens among the output tokens, where the provider says."""
        return None

    # -- the call ----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _send_unless_cancelled(self, system: str, messages: list[dict[str, str]]
                               ) -> tuple[str, Any, str]:
        """``_send``, given up as soon as ``cancel`` is called: a blocked read cannot be woken
        from another thread, so the request runs in a thread of its own, which ends with its
        connection (closed by ``cancel``) or with the process."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def send() -> None:
            try:
                box["answer"] = self._send(system, messages)
            except BaseException as e:
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=send, name=f"{self.name} call", daemon=True).start()
        while not done.wait(0.1):
            if self._cancelled.is_set():
                raise _Cancelled
        if "error" in box:
            raise box["error"]
        answer: tuple[str, Any, str] = box["answer"]
        return answer

    def cancel(self) -> None:
        """End the calls in flight (their connections are closed) and refuse new ones."""
        self._cancelled.set()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _stopped(self, calls: list[CallRecord]) -> AgentFatal:
        return AgentFatal(f"{self.name} ({self.model}): the call was cancelled: the loop is "
                          "stopping", calls)

    def propose(self, context: Context) -> Answer:
        directory = self.prompts_dir
        if directory is None or not directory.is_dir():
            directory = prompts_dir()  # a workspace without prompts/ uses the shipped ones
        system, messages = render_conversation(
            context,
            directory=directory,
            history_tokens=self.history_tokens,
        )
        calls: list[CallRecord] = []
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if self._cancelled.is_set():
                raise self._stopped(calls)
            record = CallRecord(provider=self.name, model=self.model)
            calls.append(record)
            started = time.monotonic()
            try:
                text, usage, model = self._send_unless_cancelled(system, messages)
            except _Cancelled:
                record.latency_s = time.monotonic() - started
                record.error = "cancelled: the loop is stopping"
                raise self._stopped(calls) from None
            except self.error_types as exc:
                record.latency_s = time.monotonic() - started
                if self._cancelled.is_set():
                    record.error = "cancelled: the loop is stopping"
                    raise self._stopped(calls) from None
                reason, delay = self._classify(exc)
                record.error = reason
                if isinstance(exc, self.status_types):
                    record.cost_usd = 0.0  # the provider answered with an error: nothing billed
                if delay is None:
                    raise AgentFatal(f"{self.name} ({self.model}): {reason}", calls) from None
                if attempt + 1 == attempts:
                    raise AgentError(
                        f"{self.name} ({self.model}) failed after {attempts} attempts: {reason}",
                        calls,
                    ) from None
                self._sleep(self._delay(attempt, delay))
                continue
            record.latency_s = time.monotonic() - started
            record.input_tokens, record.output_tokens = self._usage(usage)
            record.reasoning_tokens = self._reasoning(usage)
            record.raw = text
            record.cost_usd = cost_usd(
                model or self.model, record.input_tokens, record.output_tokens, self.prices
            )
            if record.cost_usd is None and model and model != self.model:
                record.cost_usd = cost_usd(
                    self.model, record.input_tokens, record.output_tokens, self.prices
                )
            return Answer(text=text, calls=calls)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, hint: float) -> float:
        return min(self.max_backoff, max(self.backoff * 2**attempt, hint))

    def _classify(self, exc: Exception) -> tuple[str, float | None]:
        """(one-line reason, minimum delay before a retry — None when a retry cannot help)."""
        if isinstance(exc, self.transient_types):
            kind = "timed out" if "timeout" in type(exc).__name__.lower() else "connection error"
            return f"{kind} ({_error_message(exc)})", 0.0
        status = getattr(exc, "status_code", None) if isinstance(exc, self.status_types) else None
        message = _error_message(exc)
        if status is None:
            return f"{type(exc).__name__}: {message}", None
        if status in RETRY_STATUSES or status >= 500:
            return f"HTTP {status}: {message}", _retry_after(exc) or 0.0
        if status in (401, 403):
            var = KEY_VARS[self.name]
            return f"authentication failed (HTTP {status}: {message}); check {var}", None
        if status == 404:
            return (
                f"model {self.model!r} or endpoint not found (HTTP 404: {message}); "
                "check the model name and base URL",
                None,
            )
        return f"request rejected (HTTP {status}: {message})", None


class AnthropicAgent(LLMAgent):
    name = "anthropic"
    client_class = anthropic.Anthropic
    transient_types = (anthropic.APIConnectionError,)  # includes APITimeoutError
    status_types = (anthropic.APIStatusError,)
    error_types = (anthropic.AnthropicError,)

    def _send(self, system: str, messages: list[dict[str, str]]) -> tuple[str, Any, str]:
        extra: dict[str, Any] = {}
        max_tokens = self.max_tokens
        if self.thinking_tokens:
            # the thinking budget counts toward max_tokens: the answer keeps its own room
            extra["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_tokens}
            max_tokens += self.thinking_tokens
        response = self.client.messages.create(
            model=self.model,
            max_tokens=max_tokens,
            system=system,
            messages=messages,
            **extra,
        )
        # thinking blocks are the model's scratch work: only the text blocks are the answer
        text = "".join(
            getattr(block, "text", "")
            for block in response.content or []
            if getattr(block, "type", "") == "text"
        )
        return text, response.usage, str(response.model or "")

    def _usage(self, usage: Any) -> tuple[int | None, int | None]:
        if usage is None:
            return None, None
        cached = (getattr(usage, "cache_creation_input_tokens", None) or 0) + (
            getattr(usage, "cache_read_input_tokens", None) or 0
        )
        inp = getattr(usage, "input_tokens", None)
        return (None if inp is None else inp + cached), getattr(usage, "output_tokens", None)

    def _reasoning(self, usage: Any) -> int | None:
        details = getattr(usage, "output_tokens_details", None)
        found = getattr(details, "thinking_tokens", None)
        return found if isinstance(found, int) else None


class OpenAIAgent(LLMAgent):
    """OpenAI, or any server speaking its Chat Completions API (vLLM, Ollama, ...) via base_url."""

    name = "openai"
    client_class = openai.OpenAI
    transient_types = (openai.APIConnectionError,)  # includes APITimeoutError
    status_types = (openai.APIStatusError,)
    error_types = (openai.OpenAIError,)

    def _send(self, system: str, messages: list[dict[str, str]]) -> tuple[str, Any, str]:
        extra: dict[str, Any] = {}
        if self.reasoning_effort:
            extra["reasoning_effort"] = self.reasoning_effort
        response = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": system}, *messages],
            **extra,
        )
        choices = response.choices or []
        text = (choices[0].message.content or "") if choices else ""
        return text, response.usage, str(response.model or "")

    def _usage(self, usage: Any) -> tuple[int | None, int | None]:
        if usage is None:
            return None, None
        return getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)

    def _reasoning(self, usage: Any) -> int | None:
        details = getattr(usage, "completion_tokens_details", None)
        found = getattr(details, "reasoning_tokens", None)
        return found if isinstance(found, int) else None


AGENTS: dict[str, type[LLMAgent]] = {"anthropic": AnthropicAgent, "openai": OpenAIAgent}


def make_llm_agent(
    provider: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    prompts_dir: Path | None = None,
    **options: Any,
) -> LLMAgent:
    """An agent for ``provider`` ("anthropic" or "openai"); ``options`` go to its constructor."""
    try:
        cls = AGENTS[provider]
    except KeyError:
        raise UsageError(
            f"unknown model provider {provider!r}; choose one of: {', '.join(AGENTS)}"
        ) from None
    if options.get("thinking_tokens") and provider != "anthropic":
        raise UsageError("--thinking-tokens is for Anthropic models (--agent anthropic); "
                         "OpenAI reasoning models take --reasoning-effort")
    if options.get("reasoning_effort") and provider != "openai":
        raise UsageError("--reasoning-effort is for OpenAI reasoning models (--agent openai); "
                         "Anthropic models take --thinking-tokens")
    return cls(model, base_url=base_url, prompts_dir=prompts_dir, **options)


def choose_auto(
    environ: Mapping[str, str] | None = None, *, offline: str = "playbook"
) -> tuple[str, str]:
    """Which agent "auto" means here: (agent name, one-line notice for the user)."""
    env = os.environ if environ is None else environ
    for provider, var in KEY_VARS.items():
        if env.get(var, "").strip():
            return provider, f"agent: {provider} ({DEFAULT_MODELS[provider]}), {var} is set"
    names = " nor ".join(KEY_VARS.values())
    return offline, f"agent: {offline} (offline): neither {names} is set"
