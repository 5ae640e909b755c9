"""What the benchmarks compare the keep rule with: the naive rule a careless loop uses, and a
Monte-Carlo simulation of the loop's two-stage flow under the documented noise model.

Not part of the package: ``autoresearch.decide`` holds the keep rule only. Imported by
benchmarks/false_keeps.py (run as a script) and by tests/test_decide.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from autoresearch.decide import Decision, decide


def naive_decide(
    candidate: dict[int, float],
    champion: dict[int, float],
    *,
    noise_std: float | None = None,
    min_delta: float = 0.0,
    seeds: list[int],
) -> Decision:
    """The rule a careless loop uses, for benchmarks only: keep whenever the candidate is lower
    than the champion on the first seed, by any amount. Ignores noise (and ``min_delta``)."""
    del noise_std, min_delta
    seed = next((s for s in seeds if s in candidate and s in champion), None)
    if seed is None:
        raise ValueError("no seed measured for both candidate and champion")
    delta = float(candidate[seed]) - float(champion[seed])
    evidence = {"rule": "naive/v1", "seeds": [seed], "candidate": [candidate[seed]],
                "champion": [champion[seed]], "deltas": [delta], "mean": delta,
                "threshold": 0.0}
    verdict: Literal["keep", "discard"] = "keep" if delta < 0 else "discard"
    return Decision(verdict=verdict, reason=f"naive: Δ {delta:+.4f} on seed {seed}",
                    threshold=0.0, delta=delta, evidence=evidence)


# -- Monte Carlo: how often a rule keeps, under the documented noise model

Decider = Callable[..., Decision]


@dataclass(frozen=True)
class Simulation:
    keep_rate: float  # fraction of candidates kept
    confirm_rate: float  # fraction that passed the screen
    runs_per_candidate: float  # mean candidate measurements spent


def simulate(
    decider: Decider = decide,
    *,
    shift: float,
    sigma: float = 0.017,
    level: float = 3.2,
    seeds: Sequence[int] = (0, 1, 2),
    baseline_seeds: int | None = None,
    min_delta: float = 0.0,
    trials: int = 2000,
    rng: np.random.Generator | int = 0,
) -> Simulation:
    """Run ``trials`` experiments through the loop's two-stage flow under the worst-case noise
    model: every measurement is ``level + N(0, sigma²)`` independently (no pairing benefit);
    the candidate's true mean is ``level + shift``. The noise is estimated from
    ``baseline_seeds`` (default: the planned seeds) baseline measurements, whose first
    ``len(seeds)`` values are also the champion's, as in a fresh run."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    plan = [int(s) for s in seeds]
    k = len(plan)
    kb = max(baseline_seeds or k, k)
    kept = confirmed = runs = 0
    for _ in range(trials):
        base = level + sigma * gen.standard_normal(kb)
        champion = {s: float(v) for s, v in zip(plan, base[:k], strict=True)}
        noise = float(np.std(base, ddof=1)) if kb >= 2 else 0.0
        values = level + shift + sigma * gen.standard_normal(k)
        cand = {plan[0]: float(values[0])}
        kwargs: dict[str, Any] = {"noise_std": noise, "min_delta": min_delta, "seeds": plan}
        if decider is decide:
            kwargs["noise_df"] = kb - 1
        d = decider(cand, champion, **kwargs)
        runs += 1
        if d.verdict == "confirm":
            confirmed += 1
            cand = {s: float(v) for s, v in zip(plan, values, strict=True)}
            runs += k - 1
            d = decider(cand, champion, **kwargs)
        kept += d.verdict == "keep"
    return Simulation(kept / trials, confirmed / trials, runs / trials)
