"""What an agent sees (``Context``) and what it answers (``Proposal`` / ``Answer``).

The loop owns the repair ladder: it asks ``agent.propose(context)``; an ``Answer`` carries either
a ready ``Proposal`` (the mock agent) or raw text that ``edits.parse_answer`` turns into one (LLM
agents). When parsing, applying or guarding fails, the loop calls ``propose`` again with
``context.repair`` set, a bounded number of times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, Field, model_validator


class Edit(BaseModel):
    """One change to one editable file: a SEARCH/REPLACE pair, or a whole new ``content``."""

    path: str
    search: str | None = None
    replace: str | None = None
    content: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Edit:
        whole = self.content is not None
        pair = self.search is not None or self.replace is not None
        if whole == pair:
            raise ValueError("an edit has either 'content' or both 'search' and 'replace'")
        if pair and (self.search is None or self.replace is None):
            raise ValueError("a search/replace edit needs both 'search' and 'replace'")
        return self


class Proposal(BaseModel):
    title: str = Field(min_length=1)
    rationale: str = ""
    edits: list[Edit] = Field(min_length=1)


class Stats(BaseModel):
    """A metric measured over seeds."""

    mean: float
    std: float = 0.0
    n: int = 1


class HistoryItem(BaseModel):
    id: int
    title: str
    status: str
    delta: float | None = None  # candidate - champion on val_bpb (negative is better)
    reason: str = ""


class Context(BaseModel):
    files: dict[str, str]  # editable path -> current champion source
    metric: str = "val_bpb"
    direction: str = "lower"
    budget: str = ""  # human description, e.g. "60 s wall-clock"
    device: str = "cpu"
    baseline: Stats | None = None
    champion: Stats | None = None
    history: list[HistoryItem] = Field(default_factory=list)
    omitted: int = 0  # how many older attempts were summarised away
    last_crash_log: str | None = None
    # label -> (tokens, training loss) of the champion's and the last experiment's first seed,
    # as train() logged it: display data from the agent's own code, never a metric
    curves: dict[str, list[tuple[int, float]]] = Field(default_factory=dict)
    repair: str | None = None  # why the previous answer could not be used
    previous_answer: str | None = None


@dataclass
class CallRecord:
    """One model call, as recorded in the store."""

    provider: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float = 0.0
    cost_usd: float | None = None  # None = unknown price, never silently zero
    raw: str = ""
    error: str | None = None


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

    def propose(self, context: Context) -> Answer: ...
