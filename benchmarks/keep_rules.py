"""The keep rule's measurement plan against the one it replaced, and against the naive rule, by
Monte-Carlo simulation under the documented noise model.

    python benchmarks/keep_rules.py [--runs 400] [--candidates 30] [--seeds 3] [--rng 11]

Each simulated run measures a baseline on K seeds, then proposes ``--candidates`` changes drawn
from a realistic mix of true effects (in units of σ, the noise of one measurement): 70%
harmful (+1σ to +6σ, uniform), 20% null, 10% real gains of 1, 2, 3 or 4σ (2.5% each) — the
mix on which the old plan spent 2.00 measurements per candidate under a time budget and 1.40
under a token budget (issue 20). A kept change becomes the champion, its stored values those
it was kept on (selected for being low: the winner's curse is in the simulation).

Every measurement is ``level + N(0, σ²)`` independently (no pairing benefit: the worst case).
Under a time budget the final test pairs the candidate with the champion re-measured alongside
(fresh draws at the champion's level: the same conditions), under a token budget with the
champion's stored values. The plans:

- ``old`` (``paired-t-floor/v1``): screen on one seed with a bar of zero, then every other
  seed; under a time budget the champion is re-measured on every seed as soon as the screen
  passes; noise from the baseline's seeds only.
- ``new`` (``sequential-paired-t/v2``, decide.py): bars from the noise at one seed
  (``SCREEN_Z``) and at about half the seeds (``SECOND_Z``), the champion re-measured only for
  the final test, noise pooled over the champion's neighbourhood (``decide.pool_noise``: its
  own values and every group measured against it; reset at each keep).
- ``naive``: one seed, kept if lower than the champion's stored value at all.

Prints, per budget kind and plan: measurements per candidate (candidate runs plus champion
re-measurements), false keeps of nulls, power for gains of 2σ and 3σ, and the expected
champion improvement (in σ, true effects of every kept change summed, harmful keeps
subtracting) per 100 measurements.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from autoresearch.decide import SCREEN_Z, SECOND_Z, Decision, decide, pool_noise, stages

Kind = Literal["time", "tokens"]


def naive_decide(
    candidate: dict[int, float],
    champion: dict[int, float],
    *,
    noise_std: float | None = None,
    min_delta: float = 0.0,
    seeds: list[int],
    **_: Any,
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


@dataclass(frozen=True)
class Plan:
    """How a candidate is measured: the seeds after each stage, the stage bars, where the noise
    comes from, and when the champion is re-measured under a time budget."""

    name: str
    stages: Callable[[int], list[int]]
    screen_z: float
    second_z: float
    pooled: bool  # noise pooled over the run (else the baseline's seeds only)
    decider: Callable[..., Decision] = decide


OLD = Plan("old", lambda k: sorted({1, k}), 0.0, 0.0, pooled=False)
NEW = Plan("new", stages, SCREEN_Z, SECOND_Z, pooled=True)
NAIVE = Plan("naive", lambda k: [1], 0.0, 0.0, pooled=False, decider=naive_decide)
PLANS = {p.name: p for p in (OLD, NEW, NAIVE)}


@dataclass
class _Run:
    """One simulated run's state: the champion's true level and stored values, the noise."""

    seeds: list[int]
    baseline: list[float]  # the champion's own values (the baseline's, until a keep)
    level: float = 0.0
    stored: dict[int, float] = field(default_factory=dict)
    groups: list[list[float]] = field(default_factory=list)

    def noise(self, plan: Plan) -> tuple[float | None, int]:
        return pool_noise(self.baseline, self.groups if plan.pooled else ())


@dataclass(frozen=True)
class Trial:
    effect: float  # true effect in σ (positive: worse)
    kept: bool
    measurements: int  # candidate runs plus champion re-measurements
    screened: bool  # passed the first stage


def one_candidate(plan: Plan, run: _Run, effect: float, kind: Kind, sigma: float,
                  gen: np.random.Generator) -> Trial:
    """Measure one candidate of true level ``run.level + effect·σ`` with ``plan``; on a keep,
    it becomes the champion."""
    seeds, k = run.seeds, len(run.seeds)
    level = run.level + effect * sigma
    values: dict[int, float] = {}
    spent, screened, verdict = 0, False, None
    noise, df = run.noise(plan)
    for n in plan.stages(k):
        for s in seeds[len(values):n]:
            values[s] = level + sigma * gen.standard_normal()
            spent += 1
        champion = run.stored
        if n == k and kind == "time" and plan.decider is decide:
            # the final test pairs the candidate with the champion re-measured alongside
            champion = {s: run.level + sigma * gen.standard_normal() for s in seeds}
            spent += k
            run.groups.append(list(champion.values()))
        verdict = plan.decider(values, champion, noise_std=noise, noise_df=df, min_delta=0.0,
                               seeds=seeds, screen_z=plan.screen_z, second_z=plan.second_z)
        if n == 1:
            screened = verdict.verdict != "discard"
        if verdict.verdict != "confirm":
            break
    if len(values) >= 3:  # the seeds after the screen: spread not shrunk by selection
        run.groups.append([values[s] for s in seeds[1:] if s in values])
    kept = verdict is not None and verdict.verdict == "keep"
    if kept:  # the noise of the new champion's neighbourhood: its own values, then later groups
        run.level, run.stored = level, dict(values)
        if plan.pooled:
            run.baseline, run.groups = list(values.values()), []
        if plan.decider is naive_decide:  # a one-seed loop has one stored value per seed
            run.stored = {s: values.get(s, level + sigma * gen.standard_normal())
                          for s in seeds}
    return Trial(effect, kept, spent, screened)


def simulate_runs(plan: Plan, kind: Kind, *, runs: int, candidates: int, k: int = 3,
                  sigma: float = 1.0, mix: Callable[[np.random.Generator], float] | None = None,
                  rng: int | np.random.Generator = 0) -> list[Trial]:
    """Every candidate of ``runs`` simulated runs of ``candidates`` each (module docstring)."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    draw = mix or realistic_mix
    out: list[Trial] = []
    seeds = list(range(k))
    for _ in range(runs):
        base = [sigma * float(x) for x in gen.standard_normal(k)]
        run = _Run(seeds, base, 0.0, dict(zip(seeds, base, strict=True)))
        for _ in range(candidates):
            out.append(one_candidate(plan, run, draw(gen), kind, sigma, gen))
    return out


GAINS = (-1.0, -2.0, -3.0, -4.0)


def realistic_mix(gen: np.random.Generator) -> float:
    """70% harmful (+1σ..+6σ), 20% null, 10% gains of 1-4σ."""
    u = gen.random()
    if u < 0.70:
        return float(gen.uniform(1.0, 6.0))
    if u < 0.90:
        return 0.0
    return GAINS[int(gen.integers(len(GAINS)))]


@dataclass(frozen=True)
class Simulation:
    keep_rate: float  # fraction of candidates kept
    confirm_rate: float  # fraction that passed the first stage
    runs_per_candidate: float  # mean measurements spent (champion re-measurements included)


def simulate(decider: Callable[..., Decision] = decide, *, shift: float, sigma: float = 0.017,
             seeds: Sequence[int] = (0, 1, 2), baseline_seeds: int | None = None,
             kind: Kind = "tokens", plan: Plan = NEW, trials: int = 2000,
             rng: np.random.Generator | int = 0) -> Simulation:
    """``trials`` candidates of true level ``champion + shift``, each against a fresh baseline
    of ``baseline_seeds`` (default K) values whose first K are the champion's (as in a fresh
    run; no pooled noise yet)."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if decider is not decide:
        plan = Plan("custom", lambda k: [1], 0.0, 0.0, pooled=False, decider=decider)
    k = len(list(seeds))
    kb = max(baseline_seeds or k, k)
    kept = screened = spent = 0
    for _ in range(trials):
        base = [sigma * float(x) for x in gen.standard_normal(kb)]
        run = _Run(list(range(k)), base, 0.0, dict(enumerate(base[:k])))
        t = one_candidate(plan, run, shift / sigma, kind, sigma, gen)
        kept += t.kept
        screened += t.screened
        spent += t.measurements
    return Simulation(kept / trials, screened / trials, spent / trials)


def summary(trials: list[Trial]) -> dict[str, float]:
    def rate(sel: list[Trial]) -> float:
        return sum(t.kept for t in sel) / len(sel) if sel else float("nan")

    spent = sum(t.measurements for t in trials)
    gain = -sum(t.effect for t in trials if t.kept)
    return {
        "per_candidate": spent / len(trials),
        "false_keeps": rate([t for t in trials if t.effect == 0.0]),
        "power_2": rate([t for t in trials if t.effect == -2.0]),
        "power_3": rate([t for t in trials if t.effect == -3.0]),
        "harmful_kept": rate([t for t in trials if t.effect > 0]),
        "gain_per_100": 100.0 * gain / spent,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400, help="simulated runs per plan and budget")
    ap.add_argument("--candidates", type=int, default=30, help="candidates per run")
    ap.add_argument("--seeds", type=int, default=3, help="K, the seeds of the final test")
    ap.add_argument("--rng", type=int, default=11)
    args = ap.parse_args(argv)
    print(f"keep_rules: {args.runs} runs x {args.candidates} candidates, K={args.seeds}, mix "
          "70% harmful (+1..+6σ) / 20% null / 10% gains (1,2,3,4σ); new plan: screen "
          f"{SCREEN_Z}·se, second stage {SECOND_Z}·se, stages {stages(args.seeds)}")
    head = (f"{'budget':<7} {'plan':<6} {'meas/cand':>9} {'false keeps':>11} {'power 2σ':>9} "
            f"{'power 3σ':>9} {'harmful kept':>12} {'gain σ/100 meas':>15}")
    print("in a run (the champion's stored values are those it was kept on: selected low)")
    print(head)
    kinds: tuple[Kind, Kind] = ("time", "tokens")
    for kind in kinds:
        for plan in (OLD, NEW, NAIVE):
            r = summary(simulate_runs(plan, kind, runs=args.runs, candidates=args.candidates,
                                      k=args.seeds, rng=args.rng))
            print(f"{kind:<7} {plan.name:<6} {r['per_candidate']:>9.2f} "
                  f"{r['false_keeps']:>11.1%} {r['power_2']:>9.1%} {r['power_3']:>9.1%} "
                  f"{r['harmful_kept']:>12.1%} {r['gain_per_100']:>15.1f}", flush=True)
    trials = args.runs * 10
    print(f"one candidate against an unselected champion, {trials} trials each: the test's own "
          "power; noise from 3 baseline seeds (a run's start) or pooled to 20 df (after about "
          "ten experiments)")
    print(f"{'budget':<7} {'plan':<6} {'noise df':>8} {'false keeps':>11} {'power 2σ':>9} "
          f"{'power 3σ':>9}")
    for kind in kinds:
        for plan in (OLD, NEW):
            for kb in (args.seeds, 21):
                if kb == 21 and not plan.pooled:
                    continue
                rates = [simulate(shift=-m, sigma=1.0, seeds=range(args.seeds),
                                  baseline_seeds=kb, kind=kind, plan=plan, trials=trials,
                                  rng=args.rng + m).keep_rate for m in (0, 2, 3)]
                print(f"{kind:<7} {plan.name:<6} {kb - 1:>8} {rates[0]:>11.1%} "
                      f"{rates[1]:>9.1%} {rates[2]:>9.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
