"""The agent interface: the ``Agent`` protocol, its ``Answer`` and the errors it may raise.

The loop owns the repair ladder: it asks ``agent.propose(context)``; an ``Answer`` carries either
a ready ``Proposal`` (the mock agent) or raw text that ``edits.parse_answer`` turns into one (LLM
agents). When parsing, applying or guarding fails, the loop calls ``propose`` again with
``context.repair`` set, a bounded number of times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from autoresearch.models import CallRecord, Context, Proposal


@dataclass
class Answer:
    text: str = ""
    proposal: Proposal | None = None
    calls: list[CallRecord] = field(default_factory=list)


class AgentError(Exception):
    """The agent could not answer this time (retries exhausted); the experiment fails."""

    def __init__(self, message: str, calls: list[CallRecord] | None = None) -> None:
        super().__init__(message)
        self.calls = calls or []


class AgentFatal(AgentError):
    """An error no retry can fix (bad key, unknown model): the loop stops, resumable."""


class AgentExhausted(Exception):
    """A scripted agent has nothing more to propose: the loop ends cleanly."""


class Agent(Protocol):
    name: str
    model: str
    # may be called again while a call is in flight (the loop still keeps the cost cap)
    concurrent: bool
    # its proposals were written in advance, one after the other: asked for one at a time
    # (each sees the results of the ones before it), not while jobs train
    scripted: bool

    def propose(self, context: Context) -> Answer: ...

    def cancel(self) -> None:
        """End the calls in flight, from another thread: each raises AgentFatal soon. Called
        once, when the loop stops."""
        ...
