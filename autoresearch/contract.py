"""The rules the agent is shown, generated from what enforces them.

A hand-written rules section drifts from the code: it once said "the standard library" where
the guard allows a couple of dozen modules, and "more than the noise" where the keep rule asks
for about three standard errors. Every number and list here is read from the module that
enforces it (the guard's allow-list and rule table, the broker's allowance, the setup cap, the
evaluator's operator allow-list, the keep rule's quantiles and the run's own noise), so the
prompt cannot disagree with them; tests/test_contract.py checks each against its enforcer.
"""

from __future__ import annotations

import math

from autoresearch import decide, guard, leak
from autoresearch.harness.graph import ALLOWED_OPS
from autoresearch.models import KeepBar
from autoresearch.runner.broker import ALLOWANCE, TOKEN_BUDGET_TIMEOUT

# operators a model's forward commonly reaches for that the evaluator refuses, named so the
# model need not read the whole allow-list to learn them (each checked absent from ALLOWED_OPS)
REFUSED_EXAMPLES = ("empty", "empty_like", "as_strided", "dropout", "rand", "randn",
                    "bernoulli", "normal", "native_dropout")


def keep_bar(noise_std: float | None, noise_df: int, seeds: int, min_delta: float,
             champion: float | None, alpha: float = decide.DEFAULT_ALPHA) -> KeepBar:
    """The improvement a candidate needs at the screen (one seed) and at the final test (all
    ``seeds``) when its paired differences are no noisier than the run's noise: the rule of
    ``decide.decide`` with its sample stdev at the floor. With no measured noise, the rule's
    own fallback (a share of the champion, no degrees of freedom)."""
    if noise_std is None or not math.isfinite(noise_std) or noise_std <= 0:
        ref = abs(champion) if champion is not None and math.isfinite(champion) else 0.0
        noise_std = decide.FALLBACK_REL_NOISE * ref or decide.FALLBACK_REL_NOISE
        noise_df = 0
    floor = math.sqrt(2.0) * noise_std
    screen = min_delta + (decide.SCREEN_Z * floor if seeds > 1 else 0.0)
    df = (seeds - 1) + noise_df
    q = decide.t_quantile(1.0 - alpha, df if df > 0 else None)
    final = min_delta + q * floor / math.sqrt(seeds)
    if seeds == 1:
        screen = final  # one seed: the screen is the final test
    return KeepBar(noise_std=noise_std, noise_df=noise_df, alpha=alpha, seeds=seeds,
                   min_delta=min_delta, screen=screen, final=final)


def _seconds(x: float) -> str:
    return f"{x:g} s"


def budget_rule(kind: str, amount: float, setup_cap: float) -> str:
    share, extra = ALLOWANCE
    if kind == "time":
        after = (f"Everything after the budget runs out (the step under way, `eval()`, the "
                 f"export) must fit in {share:.0%} of the budget + {_seconds(extra)} "
                 f"(here {_seconds(round(amount * share + extra, 3))}), or the run is a "
                 "timeout; no batch is served after that.")
    else:
        after = ("Under a token budget a batch the remaining tokens cannot cover is refused; "
                 "stop when `run.tokens_left()` is smaller than your next batch. The whole job "
                 f"(setup, training, export) must end within {_seconds(TOKEN_BUDGET_TIMEOUT)}.")
    return (f"The clock is the harness's. It runs from your first `get_batch` until the model "
            f"you return has been exported and handed back. {after} Setup before the first "
            f"batch (building the model, compiling) is capped at {_seconds(setup_cap)} and gets "
            "no data.")


def imports_rule() -> str:
    allowed = ", ".join(sorted(guard.ALLOWED_IMPORTS - {"__future__"}))
    return (f"Imports: only these modules (and their submodules, where no rule below forbids "
            f"them) and `from __future__`: {allowed}. Nothing else, standard library "
            "included, and no new dependencies.")


def guard_rules() -> str:
    lines = [f"   - {r.id}: {r.forbids}." for r in guard.RULES if r.id not in ("syntax",)]
    return ("These are refused before anything trains (the guard's rules):\n" + "\n".join(lines))


def export_rule() -> str:
    ops = " ".join(sorted(ALLOWED_OPS))
    refused = ", ".join(f"`{o}`" for o in REFUSED_EXAMPLES)
    return ("The returned model is exported with `torch.export` and run by an evaluator that "
            f"accepts only these aten operators in `forward` (any overload but `out=`): {ops}. "
            f"Anything else is refused, for example {refused} (no random numbers, no "
            "uninitialised memory, no custom operators); dropout must be off in `eval()`.")


def _second_stage(bar: KeepBar) -> str:
    """', after 2 seeds only if better on average by more than X' when the plan has a second
    stage (``decide.stages``): the rule's bar with its sample stdev at the floor."""
    plan = decide.stages(bar.seeds)
    if len(plan) < 3:
        return ""
    n = plan[1]
    second = bar.min_delta + decide.SECOND_Z * math.sqrt(2.0) * bar.noise_std / math.sqrt(n)
    return f", after {n} seeds only if better on average by more than {second:.4f}"


def bar_rule(bar: KeepBar | None, metric: str) -> str:
    if bar is None:
        return ("A change is kept only if it beats the champion on paired seeds by more than "
                f"the keep rule's bar ({decide.RULE_NAME}); the bar is set once the baseline "
                "is measured.")
    src = "measured" if bar.noise_df > 0 else "assumed (not measured yet)"
    dof = f"{bar.noise_df} degree{'s' if bar.noise_df != 1 else ''} of freedom"
    recent = ""
    if bar.recent:
        shown = ", ".join(f"{x:.4f}" for x in bar.recent)
        recent = (f" The last final tests in this run needed {shown}: a candidate whose seeds "
                  "disagree needs more than the floor.")
    return (f"The keep bar, in this run's numbers: the seed noise of {metric} is "
            f"σ = {bar.noise_std:.4f} ({src}, {dof}). A candidate "
            f"is measured on {bar.seeds} paired seed{'s' if bar.seeds > 1 else ''} against the "
            f"champion, stage by stage, and stops at the first stage it fails. After the "
            f"first seed it goes on only if it is better by more than {bar.screen:.4f}"
            + _second_stage(bar) + "; it is kept only if its mean paired improvement over all "
            f"{bar.seeds} exceeds {bar.final:.4f} (one-sided t test at α = {bar.alpha:g}"
            + (f", plus min_delta {bar.min_delta:g}" if bar.min_delta else "")
            + "; more if its seeds disagree more than the run's noise)." + recent
            + f" An improvement smaller than {bar.final:.4f} is not worth proposing: aim well "
            "above it.")


def rules(*, metric: str, budget_kind: str, budget_amount: float, setup_cap: float,
          bar: KeepBar | None) -> str:
    """The numbered rules of the system prompt (the template's ``{{rules}}``)."""
    items = [
        "Keep the contract: `train(run)` returns a `torch.nn.Module` mapping a LongTensor "
        "(B, T) of token ids to logits (B, T, vocab_size). Use `run.get_batch(batch_size, "
        "seq_len)` for data, `run.time_left()` / `run.tokens_left()` to stop in budget, "
        f"and only these members of `run`: {', '.join(guard.RUN_PUBLIC)}.",
        "The model must stay causal: logits at position t may depend only on tokens up to t "
        "(and on nothing in other rows of the batch). The harness checks this on many "
        "positions of every row, comparing log-probabilities.",
        budget_rule(budget_kind, budget_amount, setup_cap),
        export_rule(),
        imports_rule(),
        guard_rules(),
        "Never put text of the validation data into a proposal, in code, strings, comments "
        f"or numbers, even if you know it (a public corpus, say). A proposal that adds "
        f"{leak.WINDOW} bytes or more in a row of the validation split is refused before "
        "anything trains.",
        bar_rule(bar, metric),
        "One idea per proposal, so that its effect can be measured, or a combination of "
        "earlier experiments that each looked promising: then name them in the rationale "
        "(\"combines #12 and #15\").",
        "Simplicity matters. A tiny gain that adds ugly or fragile code is not worth it; "
        "removing code for an equal result is a win.",
    ]
    return "\n".join(f"{i}. {text}" for i, text in enumerate(items, 1))
