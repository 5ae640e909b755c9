"""The rules the agent is shown agree with what enforces them.

Each test reads the rendered system prompt and checks it against the enforcer itself: the
guard (its allow-list and rule table), the broker's allowance, the setup cap, the evaluator's
operator allow-list and the keep rule. Change a constant without the prompt following and
one of these fails.
"""

from __future__ import annotations

import math
import random
import re
import sys

import pytest

from autoresearch import contract, decide, guard, leak
from autoresearch.agents.prompts import render_conversation
from autoresearch.harness.graph import ALLOWED_OPS
from autoresearch.metrics import Budget
from autoresearch.models import Context, RunFacts
from autoresearch.runner.broker import allowance

SOURCE = "import torch\n\n\ndef train(run):\n    return torch.nn.Linear(2, 2)\n"


def system_prompt(*, kind: str = "time", amount: float = 300.0, setup: float = 60.0,
                  noise: float | None = 0.02, df: int = 2, seeds: int = 3,
                  min_delta: float = 0.0) -> str:
    bar = contract.keep_bar(noise, df, seeds, min_delta, 3.2)
    ctx = Context(files={"train.py": SOURCE}, budget_kind=kind, budget_amount=amount,
                  facts=RunFacts(setup_cap=setup), keep_bar=bar)
    system, _ = render_conversation(ctx)
    return system


def test_the_import_list_is_the_guards() -> None:
    text = system_prompt()
    line = next(ln for ln in text.splitlines() if "Imports: only these modules" in ln)
    shown = set(re.findall(r"\b([a-z_]+)\b", line.split(":", 2)[2]))
    for module in guard.ALLOWED_IMPORTS - {"__future__"}:
        assert module in shown
        guard.check_source("train.py", f"import {module}\n")  # the guard agrees: allowed
    # a standard-library module the prompt does not list is refused by the guard
    for module in sorted(sys.stdlib_module_names - guard.ALLOWED_IMPORTS)[:40]:
        if module.startswith("_") or module in shown:
            continue
        with pytest.raises(guard.GuardViolation):
            guard.check_source("train.py", f"import {module}\n")


def test_every_guard_rule_is_stated() -> None:
    text = system_prompt()
    for rule in guard.RULES:
        if rule.id != "syntax":
            assert f"   - {rule.id}: {rule.forbids}." in text
    assert f"{leak.WINDOW} bytes or more" in text
    assert ", ".join(guard.RUN_PUBLIC) in text


@pytest.mark.parametrize("amount", [20.0, 300.0, 1800.0])
def test_the_time_rules_are_the_brokers(amount: float) -> None:
    text = system_prompt(amount=amount, setup=45.0)
    after = allowance(Budget(kind="time", amount=amount))
    assert f"(here {round(after, 3):g} s)" in text
    assert "capped at 45 s" in text


def test_token_budget_rules() -> None:
    text = system_prompt(kind="tokens", amount=100_000)
    assert "a batch the remaining tokens cannot cover is refused" in text
    assert "(here" not in text  # no allowance under a token budget


def test_the_operator_list_is_the_evaluators() -> None:
    text = system_prompt()
    line = next(ln for ln in text.splitlines() if "accepts only these aten operators" in ln)
    listed = set(line.split("`out=`): ", 1)[1].split(". Anything else")[0].split())
    assert listed == set(ALLOWED_OPS)
    for op in contract.REFUSED_EXAMPLES:
        assert op not in ALLOWED_OPS and f"`{op}`" in line


def _at(bar: float, factor: float, n: int) -> dict[int, float]:
    return {s: 3.0 - bar * factor for s in range(n)}


@pytest.mark.parametrize("case", range(12))
def test_the_stated_bar_is_the_keep_rules(case: int) -> None:
    """A candidate just past the stated bar is kept (or goes on from the screen), one just
    short of it is not, by decide.decide itself, for a spread of run noises and plans."""
    rng = random.Random(case)
    noise = rng.uniform(0.005, 0.1)
    df = rng.randint(1, 30)
    seeds = rng.randint(1, 6)
    min_delta = rng.choice([0.0, 0.0, 0.01])
    bar = contract.keep_bar(noise, df, seeds, min_delta, 3.0)
    champion = dict.fromkeys(range(seeds), 3.0)
    plan = list(range(seeds))

    def verdict(cand: dict[int, float]) -> str:
        return decide.decide(cand, champion, noise_std=noise, noise_df=df, min_delta=min_delta,
                             seeds=plan).verdict

    assert verdict(_at(bar.final, 1.0001, seeds)) == "keep"
    assert verdict(_at(bar.final, 0.9999, seeds)) == "discard"
    if seeds > 1:
        assert verdict(_at(bar.screen, 1.0001, 1)) == "confirm"
        assert verdict(_at(bar.screen, 0.9999, 1)) == "discard"
    text = system_prompt(noise=noise, df=df, seeds=seeds, min_delta=min_delta)
    assert f"exceeds {bar.final:.4f}" in text and f"σ = {noise:.4f}" in text
    stages = decide.stages(seeds)
    if len(stages) == 3:  # the second stage's bar, as stated
        m = stages[1]
        stated = re.search(rf"after {m} seeds only if better on average by more than "
                           r"([0-9.]+)", text)
        assert stated is not None, text
        second = float(stated.group(1))
        assert verdict(_at(second, 1.03, m)) == "confirm"  # (stated to 4 decimals)
        assert verdict(_at(second, 0.97, m)) == "discard"


def test_unmeasured_noise_uses_the_rules_fallback() -> None:
    bar = contract.keep_bar(None, 0, 3, 0.0, 3.0)
    assert math.isclose(bar.noise_std, decide.FALLBACK_REL_NOISE * 3.0)
    for factor, verdict in ((1.0001, "keep"), (0.9999, "discard")):
        d = decide.decide(_at(bar.final, factor, 3), dict.fromkeys(range(3), 3.0),
                          noise_std=None, min_delta=0.0, seeds=[0, 1, 2])
        assert d.verdict == verdict
