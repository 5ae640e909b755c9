"""Agents propose changes to the editable training source; ``make_agent`` builds one by name."""

from collections.abc import Callable
from pathlib import Path

from autoresearch.agents.base import Agent, AgentError, AgentExhausted, AgentFatal, Answer
from autoresearch.config import Settings
from autoresearch.errors import UsageError

__all__ = ["Agent", "AgentError", "AgentExhausted", "AgentFatal", "Answer", "make_agent"]


def make_agent(
    name: str,
    *,
    settings: Settings,
    notice: Callable[[str], None],
    prompts_dir: Path | None = None,
    start: int = 0,
    model: str | None = None,
) -> Agent:
    """Build the agent a run asks for; ``auto`` picks by which API key is set (else the
    offline playbook).

    ``start`` is where a scripted (mock) agent resumes its script; ``model`` is the model a
    resumed run used, for when the settings name none."""
    from autoresearch.agents.mock import MockAgent

    if name == "auto":
        from autoresearch.agents.llm import choose_auto

        name, why = choose_auto()
        notice(why)
    if name not in ("anthropic", "openai") and (settings.thinking_tokens
                                                 or settings.reasoning_effort):
        raise UsageError(f"--thinking-tokens and --reasoning-effort are for model agents "
                         f"(anthropic, openai), not {name}")
    if name == "playbook":
        from autoresearch.agents.playbook import PlaybookAgent

        return PlaybookAgent()  # it reads the run's history: a resumed run needs no state
    if name == "mock":
        return MockAgent(settings.script, start=start)
    if name in ("anthropic", "openai"):
        from autoresearch.agents.llm import make_llm_agent

        return make_llm_agent(name, model=settings.model or model, base_url=settings.base_url,
                              prompts_dir=prompts_dir, prices=settings.prices,
                              timeout=settings.agent_timeout, max_retries=settings.agent_retries,
                              backoff=settings.agent_backoff,
                              thinking_tokens=settings.thinking_tokens,
                              reasoning_effort=settings.reasoning_effort)
    raise UsageError(f"unknown agent {name!r}; one of: auto, playbook, mock, anthropic, openai")
