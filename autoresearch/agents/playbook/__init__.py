"""The playbook agent: offline research from a catalogue of known improvements.

Deterministic and free: no model behind it. Each call it ranks the catalogue by what the run's
history says (``policy``), writes the best entry that still applies as SEARCH/REPLACE edits to
the current champion (``catalogue`` + ``source``), checks that the edits apply exactly and
pass the guard, and answers with that proposal. An entry whose anchor is gone is skipped; a
proposal the loop could not use (a repair round trip) is not sent again. When nothing is left
it raises ``AgentExhausted`` and the loop ends cleanly.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoresearch import guard
from autoresearch.agents.base import AgentExhausted, Answer
from autoresearch.agents.playbook import policy
from autoresearch.agents.playbook.catalogue import CATALOGUE, Entry
from autoresearch.agents.playbook.source import to_edits
from autoresearch.models import Context, Proposal

__all__ = ["CATALOGUE", "Entry", "PlaybookAgent", "proposal_for"]


def proposal_for(entry: Entry, files: dict[str, str], device: str = "cpu",
                 path: str = "train.py") -> Proposal | None:
    """``entry`` as a proposal against ``files``; None when it does not apply cleanly."""
    source = files.get(path)
    if source is None:
        return None
    new = entry.make(source, device)
    if new is None or new == source:
        return None
    edits = to_edits(source, new, path)
    if edits is None:
        return None
    try:
        guard.check_source(path, new)
    except guard.GuardViolation:
        return None
    return Proposal(title=entry.full_title, rationale=f"{entry.rationale} (idea: {entry.origin})",
                    edits=edits)


class PlaybookAgent:
    name = "playbook"
    model = "playbook-v1"
    concurrent = False
    scripted = False  # it learns from the run's history, like a model would

    def __init__(self, catalogue: Sequence[Entry] = CATALOGUE) -> None:
        self.catalogue = list(catalogue)
        self.refused: set[str] = set()  # entries the loop could not use in this session

    def cancel(self) -> None:
        """Nothing to end: it answers at once, offline."""

    def propose(self, context: Context) -> Answer:
        if context.repair:
            # the loop could not use the last answer: move on rather than send it again
            tag = policy.tag_of(policy.title_of_answer(context.previous_answer) or "")
            if tag is not None:
                self.refused.add(tag)
        path = "train.py" if "train.py" in context.files else next(iter(context.files), "")
        for entry in policy.ranked(self.catalogue, context, exclude=self.refused):
            proposal = proposal_for(entry, context.files, context.device, path)
            if proposal is not None:
                return Answer(proposal=proposal, calls=[])
        tried = len(policy.results(context.history))
        raise AgentExhausted(f"the playbook has no idea left that applies to the champion "
                             f"({tried} of {len(self.catalogue)} entries tried)")
