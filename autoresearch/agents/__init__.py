"""Agents propose changes to the editable training source."""

from collections.abc import Callable
from pathlib import Path

from autoresearch.agents.base import (
    Agent,
    AgentError,
    AgentExhausted,
    AgentFatal,
    Answer,
    CallRecord,
    Context,
    Edit,
    HistoryItem,
    Proposal,
    Stats,
)

__all__ = [
    "Agent",
    "AgentError",
    "AgentExhausted",
    "AgentFatal",
    "Answer",
    "CallRecord",
    "Context",
    "Edit",
    "HistoryItem",
    "Proposal",
    "Stats",
    "make_agent",
]


def make_agent(
    name: str,
    *,
    settings: object,
    store: object,
    run: object | None,
    notice: Callable[[str], None],
    prompts_dir: Path | None = None,
) -> Agent:
    """Build the agent a run asks for; ``auto`` picks by which API key is set (else playbook)."""
    from autoresearch.agents.mock import MockAgent
    from autoresearch.config import Settings
    from autoresearch.errors import UsageError
    from autoresearch.store import Run, Store

    assert isinstance(settings, Settings) and isinstance(store, Store)
    if name == "auto":
        from autoresearch.agents.llm import choose_auto

        name, why = choose_auto()
        notice(why)
    if name == "playbook":
        from autoresearch.agents.playbook import PlaybookAgent

        return PlaybookAgent()  # it reads the run's history: a resumed run needs no state
    if name == "mock":
        start = 0
        if isinstance(run, Run) and run.id is not None:
            # a resumed run continues the script where the last session stopped
            start = sum(1 for c in store.calls(run_id=run.id) if c.provider == "mock")
        return MockAgent(settings.script, start=start)
    if name in ("anthropic", "openai"):
        from autoresearch.agents.llm import make_llm_agent

        model = settings.model
        if isinstance(run, Run) and run.model and not model:
            model = run.model
        return make_llm_agent(name, model=model, base_url=settings.base_url,
                              prompts_dir=prompts_dir, prices=settings.prices,
                              timeout=settings.agent_timeout, max_retries=settings.agent_retries,
                              backoff=settings.agent_backoff)
    raise UsageError(f"unknown agent {name!r}; one of: auto, playbook, mock, anthropic, openai")
