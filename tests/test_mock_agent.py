"""The mock agent: scripted replay and the built-in proposals against the shipped baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoresearch import edits, guard
from autoresearch.agents import AgentExhausted
from autoresearch.agents.mock import MockAgent, load_script
from autoresearch.errors import UsageError
from autoresearch.models import Context
from autoresearch.workspace import bundled


def test_every_builtin_proposal_applies_to_the_baseline_and_passes_the_guard() -> None:
    files = {"train.py": (bundled("baseline") / "train.py").read_text()}
    agent = MockAgent()
    titles = []
    while True:
        try:
            answer = agent.propose(Context(files=files))
        except AgentExhausted:
            break
        assert answer.proposal is not None
        new = edits.apply_edits(files, answer.proposal.edits)
        assert new != files
        guard.check_source("train.py", new["train.py"])
        titles.append(answer.proposal.title)
    assert len(titles) >= 6 and len(set(titles)) == len(titles)


def test_a_script_is_replayed_in_order_then_ends(tmp_path: Path) -> None:
    entries = [{"title": "a", "edits": [{"path": "train.py", "content": "x = 1\n"}]},
               {"text": "TITLE: b\n"}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(entries))
    agent = MockAgent(path)
    ctx = Context(files={"train.py": ""})
    first = agent.propose(ctx)
    assert first.proposal is not None and first.proposal.title == "a"
    assert agent.propose(ctx).text == "TITLE: b\n"
    with pytest.raises(AgentExhausted):
        agent.propose(ctx)
    resumed = MockAgent(path, start=1)  # a resumed run goes on where it stopped
    assert resumed.propose(ctx).text == "TITLE: b\n"


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON"),
    ("[]", "non-empty"),
    ('[{"title": "no edits"}]', "entry 1"),
    ('[{"title": "t", "edits": [{"path": "train.py", "search": "x"}]}]', "entry 1"),
])
def test_a_bad_script_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_script(path)
