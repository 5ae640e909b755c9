"""The mock agent: deterministic proposals for tests and offline runs.

With a script (JSON list or JSONL), every ``propose`` call consumes the next entry — a repair
round trip consumes one too, so a script can hold a bad proposal followed by its fix. An entry is
a Proposal object (title, rationale, edits: {path, search, replace} or {path, content}) or
``{"text": "..."}``, a raw answer in the model answer format. When the script is exhausted the
agent raises ``AgentExhausted`` and the loop ends cleanly.

Without a script it uses a built-in list of real changes to the baseline's knobs (learning rate,
depth, width, ...), written against the current source so that they apply cleanly.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from autoresearch.agents.base import AgentExhausted, Answer
from autoresearch.errors import UsageError
from autoresearch.models import CallRecord, Context, Edit, Proposal


def load_script(path: Path) -> list[dict[str, object]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read script {path}: {e}") from e
    try:
        stripped = text.strip()
        if stripped.startswith("["):
            entries = json.loads(stripped)
        else:
            entries = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise UsageError(f"script {path}: not JSON or JSONL: {e}") from e
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"script {path}: expected a non-empty list of proposals")
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise UsageError(f"script {path}: entry {i} is not an object")
        if "text" not in entry:
            try:
                Proposal.model_validate(entry)
            except ValidationError as e:
                raise UsageError(f"script {path}: entry {i}: {e.errors()[0]['msg']}") from e
    return entries


# (title, rationale, knob name pattern, new value from old) — applied to the first line that
# sets the knob, as a module constant (`LR = 3e-3`) or a preset entry (`    LR=3e-3,`)
_Knob = tuple[str, str, str, Callable[[float], float]]
BUILTIN: list[_Knob] = [
    ("Double the learning rate", "The loss curve is still steep at the end of the budget; a "
     "larger step size may converge faster.", "LEARNING_RATE|LR", lambda v: v * 2),
    ("One fewer layer", "A shallower model takes more steps in the same time.",
     "N_LAYER", lambda v: max(1, v - 1)),
    ("Halve the learning rate", "A smaller step may be more stable.",
     "LEARNING_RATE|LR", lambda v: v / 2),
    ("Less weight decay", "Short runs underfit; regularisation costs more than it gives.",
     "WEIGHT_DECAY", lambda v: v / 10),
    ("One more layer", "More depth adds capacity per parameter.", "N_LAYER", lambda v: v + 1),
    ("Wider embeddings", "A wider residual stream learns faster per step.",
     "N_EMBD", lambda v: v * 1.5),
    ("Longer warmup", "A longer warmup avoids early instability.",
     "WARMUP_FRACTION|WARMUP", lambda v: v * 2),
    ("Bigger batch", "A bigger batch gives a less noisy gradient.", "BATCH_TOKENS|BATCH_SIZE",
     lambda v: v * 2),
]


def _fmt(old: str, value: float) -> str:
    if re.fullmatch(r"-?\d+", old):
        return str(round(value))
    return f"{value:.3g}"


def builtin_proposal(files: dict[str, str], index: int, path: str = "train.py") -> Proposal | None:
    """The ``index``-th built-in change that applies to ``files[path]``, or None."""
    source = files.get(path, "")
    applicable = []
    for title, why, knob, fn in BUILTIN:
        m = re.search(rf"^([ \t]*(?:{knob})[ \t]*=[ \t]*)([-+0-9.eE_]+)", source,
                      flags=re.MULTILINE)
        if m:
            applicable.append((title, why, m, fn))
    if not applicable or index >= len(applicable):
        return None
    title, why, m, fn = applicable[index]
    old_value = m.group(2)
    new_value = _fmt(old_value, fn(float(old_value.replace("_", ""))))
    line_end = source.find("\n", m.start())
    old_line = source[m.start(): line_end if line_end >= 0 else len(source)]
    new_line = old_line.replace(m.group(0), m.group(1) + new_value, 1)
    return Proposal(title=title, rationale=why,
                    edits=[Edit(path=path, search=old_line, replace=new_line)])


class MockAgent:
    """``latency``: seconds each answer takes, as a model's would (benchmarks of the scheduler).
    A scripted agent is ``scripted``: its entries were written one after the other, each
    against the champion the previous one left, so the loop asks it only between experiments
    unless told to pipeline."""

    name = "mock"
    concurrent = False

    def __init__(self, script: Path | None = None, start: int = 0, latency: float = 0.0) -> None:
        self.model = str(script) if script else "builtin"
        self.script = load_script(script) if script else None
        self.calls = start  # a resumed run goes on where the last one stopped
        self.latency = latency
        self.scripted = self.script is not None

    def cancel(self) -> None:
        """Nothing to end: an answer is at most ``latency`` seconds away."""

    def propose(self, context: Context) -> Answer:
        if self.latency:
            time.sleep(self.latency)  # a model thinking: the scheduler overlaps it with training
        index = self.calls
        self.calls += 1
        record = CallRecord(provider="mock", model=self.model, input_tokens=0, output_tokens=0,
                            cost_usd=0.0)
        if self.script is None:
            path = next(iter(context.files), "train.py")
            proposal = builtin_proposal(context.files, index, path)
            if proposal is None:
                raise AgentExhausted(f"the built-in script has no change #{index + 1}")
            record.raw = proposal.model_dump_json()
            return Answer(proposal=proposal, calls=[record])
        if index >= len(self.script):
            raise AgentExhausted(f"the script has {len(self.script)} entries; all were used")
        entry = self.script[index]
        if "text" in entry:
            record.raw = str(entry["text"])
            return Answer(text=record.raw, calls=[record])
        proposal = Proposal.model_validate(entry)
        record.raw = json.dumps(entry)
        return Answer(proposal=proposal, calls=[record])
