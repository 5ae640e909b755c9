"""Shared data types: what an agent sees and answers, what a call cost, and the statuses.

A neutral module: it imports nothing from the package, so ``edits``, ``agents``, ``store``,
``loop`` and the harness's ``metrics`` can all use these types without importing each other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
    # what a researcher reads beside it (all optional: a bare item renders as before)
    val_bpb: float | None = None  # its own mean over the seeds measured
    parent_id: int | None = None  # the champion it was measured against
    threshold: float | None = None  # the improvement it had to clear at the last stage
    stage: str | None = None  # that stage: screen, second-stage, final
    seeds: int = 0  # seeds measured for its verdict
    steps: int | None = None  # per measurement, mean over its own successful measurements
    tokens_per_s: float | None = None
    params: int | None = None
    peak_memory_mb: float | None = None
    near_miss: bool = False  # better than its champion, but short of the bar past the screen
    diff: str | None = None  # shown for the last few experiments and the near-misses
    rationale: str | None = None  # the agent's reason for it, shown beside its diff


class KeepBar(BaseModel):
    """The bar a change must clear, in the run's own numbers (``autoresearch.contract``)."""

    noise_std: float
    noise_df: int
    alpha: float
    seeds: int
    min_delta: float
    screen: float  # the improvement needed at one seed to be measured further
    final: float  # the improvement needed on all seeds at the run's noise floor
    # the improvements the run's newest final tests actually needed (their own seeds' spread
    # raises the bar above the floor), newest last
    recent: list[float] = Field(default_factory=list)


class RunFacts(BaseModel):
    """What a researcher knows about the run before reading any code: data, device, and what
    the champion's training actually did within the budget (``loop.context.facts``)."""

    dataset: str = ""
    train_tokens: int = 0  # tokens in the train split
    val_tokens: int = 0
    bytes_per_token: float = 1.0
    vocab_size: int = 0
    seq_len: int = 0  # the evaluation context length
    device: str = ""
    device_name: str | None = None
    device_memory_mb: float | None = None
    torch_version: str = ""
    budget: str = ""
    setup_cap: float = 0.0  # seconds before the first batch
    allowance: float = 0.0  # seconds after a time budget ran out (0 under a token budget)
    champion_id: int | None = None
    steps: float | None = None
    tokens: float | None = None  # tokens the champion trained on (mean over seeds)
    tokens_per_s: float | None = None
    params: int | None = None
    peak_memory_mb: float | None = None
    mfu: float | None = None
    train_loss: float | None = None  # the champion's last logged training loss
    val_loss: float | None = None  # its validation loss (nats per token), beside it
    setup_seconds: float | None = None


class Context(BaseModel):
    """What an agent is shown for one proposal."""

    files: dict[str, str]  # editable path -> current champion source
    metric: str = "val_bpb"
    direction: str = "lower"
    budget: str = ""  # human description, e.g. "60 s wall-clock"
    budget_kind: str = ""  # "time" or "tokens" (for the generated rules; "" = unknown)
    budget_amount: float = 0.0
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
    # -- what a researcher needs beside the code (issue 21); defaults render as "unknown" --
    facts: RunFacts | None = None
    keep_bar: KeepBar | None = None
    notes: str = ""  # the agent's own newest NOTES: block of the run
    guidance: list[str] = Field(default_factory=list)  # the user's active `steer` entries
    since_keep: int = 0  # experiments finished since the last keep (or the baseline)
    plateau_after: int = 0  # since_keep at which a bolder change is asked for (0: never)
    prompt_tokens: int = 0  # bound for the history section (0: the renderer's default)


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
    reasoning_tokens: int | None = None  # thinking / reasoning tokens among output_tokens


class RunStatus(enum.StrEnum):
    """How one measurement (a training job and its evaluation) ended."""

    ok = "ok"
    crash = "crash"  # an exception in train() or in the harness around it
    nan = "nan"  # non-finite loss/logits
    overtime = "overtime"  # train() returned, but well past its budget
    invalid_model = "invalid_model"  # not a module, wrong logits shape, ...
    not_causal = "not_causal"  # logits at t depend on tokens at >= t
    timeout = "timeout"  # the runner killed the job at its hard deadline
    rejected = "rejected"  # set by the orchestrator (guard), never by the harness


class ExperimentStatus(enum.StrEnum):
    """Where an experiment is in its lifecycle (the legal moves are in ``store.LEGAL``)."""

    proposed = "proposed"
    applied = "applied"
    running = "running"
    measured = "measured"
    kept = "kept"
    discarded = "discarded"
    rejected = "rejected"  # the proposal could not be used (edits, guard, agent failure)
    crashed = "crashed"  # the training job failed (crash, nan, invalid model, not causal, ...)
    timeout = "timeout"  # killed at its hard deadline
    invalid = "invalid"  # ran, but its result cannot count (overtime, wrong dataset, ...)
    interrupted = "interrupted"  # the loop stopped while it was in flight
    superseded = "superseded"  # won on an older champion, could not be ported onto the new one


class ExperimentKind(enum.StrEnum):
    """What an experiment is."""

    baseline = "baseline"  # the run's starting code, measured on every seed (seq 0)
    candidate = "candidate"  # an agent's proposal, one slot of the run's budget (seq 1..)
    replay = "replay"  # a stored diff measured again on another base (never kept)
    report = "report"  # a source ``autoresearch report`` measured on fresh seeds (never kept)


class MeasurementRole(enum.StrEnum):
    """Why a measurement of an experiment ran (device time is accounted by purpose); it also
    names the folder of its files (``folder``)."""

    candidate = "candidate"  # the experiment's own code
    # the champion re-measured alongside a promising candidate under a time budget (the
    # values its keep decision is made on)
    champion = "champion"
    # the baseline on a spare seed, keeping shared cores as busy as candidates will find
    # them while the last baseline seeds finish; never a value
    filler = "filler"
    stale = "stale"  # the candidate's own, against a champion replaced meanwhile
    stale_champion = "stale-champion"  # that replaced champion, re-measured alongside

    def folder(self, seed: int) -> str:
        """seed-N for the experiment's own code, else <role>-seed-N."""
        return f"seed-{seed}" if self is MeasurementRole.candidate else f"{self}-seed-{seed}"

    def staled(self) -> MeasurementRole:
        """What this measurement becomes once its champion has been replaced."""
        return {MeasurementRole.candidate: MeasurementRole.stale,
                MeasurementRole.champion: MeasurementRole.stale_champion}.get(self, self)


class Purpose(enum.StrEnum):
    """Why a measurement spent device time: what ``runs`` and the dashboard account it to.

    ``MeasurementRole`` says whose code ran (it names the files); ``Purpose`` says which step
    of the measurement plan asked for it. Rows from before it was recorded read as None."""

    baseline = "baseline"  # the starting code on the run's seeds
    filler = "filler"  # the baseline on a spare seed, keeping shared cores busy (no value)
    screen = "screen"  # a candidate's first seed
    second_stage = "second-stage"  # a candidate's further seeds before any champion re-run
    confirmation = "confirmation"  # a candidate's last seeds, for the final test
    champion = "champion"  # the champion re-measured alongside a candidate
    port = "port"  # a candidate re-measured after being ported onto a new champion
    replay = "replay"  # ``autoresearch replay``
    report = "report"  # ``autoresearch report``: fresh seeds, the test split, the ablation


class RunState(enum.StrEnum):
    """Where a research run is."""

    running = "running"
    finished = "finished"
    stopped = "stopped"  # Ctrl-C, cost cap, fatal agent error: resumable
    failed = "failed"  # the baseline itself could not be measured
