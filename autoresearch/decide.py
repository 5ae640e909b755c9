"""Keep, discard or measure further: the noise-aware, sequential decision rule.

A candidate is measured on the champion's seeds (paired seeds) in stages (``stages``): one
seed, then about half of them, then all K (for K = 3: 1, 2, 3 seeds). With paired differences
``d_s = cand[s] - champ[s]`` (negative is better) over the n seeds measured so far and the
noise floor ``sqrt(2) * noise_std`` (the stdev of a difference of two independent draws):

- **Stages before the last** only ever *discard*: the candidate goes on ("confirm") while

      mean(d) < -(min_delta + z_stage * sqrt(2) * noise_std / sqrt(n))

  with ``z_stage`` = ``screen_z`` at one seed and ``second_z`` after (``SCREEN_Z``,
  ``SECOND_Z``: set from the simulation in benchmarks/keep_rules.py). A null change passes
  the screen about 30% of the time instead of 50%, and most of those stop at the second stage.
- **The final test** (all K seeds):

      sd        = max(stdev(d), sqrt(2) * noise_std)     # the floor alone when K == 1
      se        = sd / sqrt(K)
      df        = (K - 1) + noise_df
      threshold = min_delta + t_{1-alpha, df} * se       # z_{1-alpha} when df == 0
      keep  iff  mean(d) < -threshold

The stages cannot raise the false-keep rate: a keep needs the final test on *all* K seeds to
pass, so P(keep) = P(every stage passes and the final test passes) <= P(final test passes)
<= alpha, whatever the earlier stages did; they only cost power and save measurements.

``noise_std`` is the noise of the champion's neighbourhood (``pool_noise``): the champion's own
seed-to-seed stdev pooled with the spread of every configuration measured on several seeds
against it since, so its degrees of freedom grow while a champion stands. The floor keeps a
lucky, tiny sample stdev of three differences from shrinking the threshold; the sample stdev
keeps a candidate that makes runs noisier from hiding behind the champion's noise.

When ``noise_std`` is unknown (one baseline seed, 0, NaN or None) the rule falls back to a
conservative guess of ``FALLBACK_REL_NOISE`` (1%) of the champion's mean value — about twice
the seed noise measured on CPU (0.53%), since time budgets add throughput noise — treated as
having no degrees of freedom, and says so in the reason.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

RULE_NAME = "sequential-paired-t/v2"
DEFAULT_ALPHA = 0.05  # target false-keep rate for a candidate that changes nothing
FALLBACK_REL_NOISE = 0.01  # noise guess when unmeasured: 1% of the value (~2x the CPU data)
# the bars of the stages before the final test, in standard errors of the mean paired
# difference (benchmarks/keep_rules.py: the measurements they save against the power they cost)
SCREEN_Z = 0.3
SECOND_Z = 1.0


class Decision(BaseModel):
    verdict: Literal["keep", "discard", "confirm"]
    reason: str
    threshold: float = 0.0  # improvement needed: keep iff -delta > threshold (keep/discard)
    delta: float | None = None  # mean paired (candidate - champion); negative is better
    evidence: dict[str, Any] = Field(default_factory=dict)


class Reproduction(BaseModel):
    """Whether a replay reproduces an original result (``replay --seeds K``)."""

    reproduces: bool
    reason: str
    threshold: float = 0.0  # largest |delta| that still counts as the same result
    delta: float | None = None  # mean (replay - original); paired when the seeds are shared
    evidence: dict[str, Any] = Field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Quantiles: Student t for integer degrees of freedom, exact closed form (no scipy needed).


def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1 (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 1:
        series = 0.0
        if df > 1:
            term = series = math.cos(theta)
            for k in range(3, df - 1, 2):
                term *= cos2 * (k - 1) / k
                series += term
        inside = (2.0 / math.pi) * (theta + math.sin(theta) * series)
    else:
        term = series = 1.0
        for k in range(2, df - 1, 2):
            term *= cos2 * (k - 1) / k
            series += term
        inside = math.sin(theta) * series
    upper = 0.5 + 0.5 * inside
    return upper if t >= 0 else 1.0 - upper


def t_quantile(p: float, df: int | None) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom; normal when df is None,
    0 or large."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df is None or df <= 0 or df > 2000:
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------------------------
# The rule.


def estimate_noise(values: Mapping[int, float] | Sequence[float]) -> float:
    """Seed noise of one configuration: the sample stdev (ddof 1) of its values; 0.0 when
    fewer than two values are known (``decide`` then falls back to its default)."""
    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    return statistics.stdev(vals) if len(vals) >= 2 else 0.0


def stages(k: int) -> list[int]:
    """How many seeds a candidate has after each stage of a K-seed plan: one, then about half,
    then all (K = 3: [1, 2, 3]; K = 5: [1, 3, 5]; K = 2: [1, 2]; K = 1: [1])."""
    if k < 1:
        raise ValueError(f"a plan needs at least one seed, got {k}")
    return sorted({1, (k + 1) // 2, k})


def pool_noise(champion: Sequence[float], groups: Sequence[Sequence[float]] = ()
               ) -> tuple[float | None, int]:
    """The noise of comparisons with a champion: (stdev, degrees of freedom) pooled over the
    champion's own values on its seeds and ``groups`` (each the values of one configuration
    on different seeds, measured against that champion); None when nothing has two values.

    Pooled variance = sum((n_i - 1) s_i^2) / sum(n_i - 1). Each group's spread is a draw
    independent of the difference a test is made on, so the t quantile with the pooled degrees
    of freedom accounts for its uncertainty. A group's values must not have been selected on
    their own spread (the loop leaves out the seed a screen selected)."""
    usable = [list(map(float, g)) for g in (list(champion), *groups) if len(g) >= 2]
    usable = [g for g in usable if all(math.isfinite(v) for v in g)]
    if not usable:
        return None, 0
    df = sum(len(g) - 1 for g in usable)
    ss = sum((len(g) - 1) * statistics.variance(g) for g in usable)
    return math.sqrt(ss / df), df


@dataclass(frozen=True)
class _Noise:
    std: float
    df: int
    source: Literal["measured", "fallback"]


def _noise(noise_std: float | None, noise_df: int | None, ref: float, planned: int) -> _Noise:
    if noise_std is not None and math.isfinite(noise_std) and noise_std > 0:
        df = planned - 1 if noise_df is None else noise_df
        return _Noise(float(noise_std), max(int(df), 0), "measured")
    guess = FALLBACK_REL_NOISE * abs(ref) if math.isfinite(ref) else 0.0
    return _Noise(guess if guess > 0 else FALLBACK_REL_NOISE, 0, "fallback")


def _noise_note(noise: _Noise) -> str:
    if noise.source == "measured":
        return f"noise σ={noise.std:.4g} measured"
    return (
        f"noise unknown, assumed σ={noise.std:.4g} "
        f"({FALLBACK_REL_NOISE:.1%} of the champion; measure the baseline on ≥2 seeds)"
    )


def _paired(deltas: Sequence[float], noise: _Noise) -> tuple[float, float | None, float, float]:
    """(mean, sample stdev or None, floor, standard error) of paired differences: the stdev
    is floored at sqrt(2)·noise_std, the stdev of a difference of two independent draws."""
    n = len(deltas)
    std = statistics.stdev(deltas) if n >= 2 else None
    floor = math.sqrt(2.0) * noise.std
    sd = max(std, floor) if std is not None else floor
    return statistics.fmean(deltas), std, floor, sd / math.sqrt(n)


def _check_args(
    champion: Mapping[int, float], seeds: Sequence[int], min_delta: float, alpha: float
) -> None:
    if not seeds:
        raise ValueError("seeds is empty: at least one seed is needed")
    missing = [s for s in seeds if s not in champion]
    if missing:
        raise ValueError(f"champion has no measurement for seed(s) {missing}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if not (math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta}")


def decide(
    candidate: dict[int, float],
    champion: dict[int, float],
    *,
    noise_std: float | None,
    min_delta: float,
    seeds: list[int],
    alpha: float = DEFAULT_ALPHA,
    noise_df: int | None = None,
    screen_z: float = SCREEN_Z,
    second_z: float = SECOND_Z,
) -> Decision:
    """Compare a candidate with the champion on the seeds both have (module docstring).

    ``candidate`` maps seed -> val_bpb for the seeds measured so far (a subset of ``seeds``);
    ``champion`` has every seed in ``seeds``. ``noise_std`` is the baseline's seed noise
    (sample stdev over its seeds; ``noise_df`` its degrees of freedom, default
    ``len(seeds) - 1``). "confirm" asks the loop to measure the next stage's seeds and call
    again; the stage is set by how many seeds are measured (``stages``).
    """
    _check_args(champion, seeds, min_delta, alpha)
    paired = [s for s in seeds if s in candidate]
    if not paired:
        raise ValueError(f"candidate has no measurement on the planned seeds {list(seeds)}")
    cand = [float(candidate[s]) for s in paired]
    champ = [float(champion[s]) for s in paired]
    deltas = [c - h for c, h in zip(cand, champ, strict=True)]
    n, k = len(paired), len(seeds)
    noise = _noise(noise_std, noise_df, statistics.fmean(float(champion[s]) for s in seeds), k)
    evidence: dict[str, Any] = {
        "rule": RULE_NAME,
        "stage": "final" if n == k else "screen" if n == 1 else "second-stage",
        "seeds": paired,
        "seeds_planned": list(seeds),
        "candidate": cand,
        "champion": champ,
        "deltas": deltas,
        "alpha": alpha,
        "min_delta": min_delta,
        "noise_std": noise.std,
        "noise_df": noise.df,
        "noise_source": noise.source,
    }
    if not all(math.isfinite(v) for v in cand):
        return Decision(
            verdict="discard",
            reason=f"discarded: non-finite val_bpb on seed(s) "
            f"{[s for s, v in zip(paired, cand, strict=True) if not math.isfinite(v)]}",
            threshold=math.inf,
            delta=None,
            evidence=evidence | {"mean": None, "std": None, "threshold": None},
        )

    mean, std, floor, se = _paired(deltas, noise)
    evidence |= {"mean": mean, "std": std, "floor_std": floor, "se": se}

    if n < k:  # a stage before the final test: is it worth measuring further?
        z = screen_z if n == 1 else second_z
        se_floor = floor / math.sqrt(n)
        bar = min_delta + z * se_floor
        evidence |= {"threshold": bar, "stage_z": z, "se": se_floor}
        where = f"seed{'s' if n > 1 else ''} {', '.join(map(str, paired))}"
        name = "the screen" if n == 1 else "the second stage"
        nxt = next(m for m in stages(k) if m > n)
        if mean < -bar:
            return Decision(
                verdict="confirm",
                reason=f"promising: Δ {mean:+.4f} on {where} (improvement needed > {bar:.4f} at "
                f"{name}, {z:g}·se); measuring {nxt - n} more seed{'s' if nxt - n > 1 else ''}",
                threshold=bar,
                delta=mean,
                evidence=evidence,
            )
        return Decision(
            verdict="discard",
            reason=f"discarded at {name}: Δ {mean:+.4f} on {where} "
            f"(improvement needed > {bar:.4f}, {z:g}·se; {_noise_note(noise)})",
            threshold=bar,
            delta=mean,
            evidence=evidence,
        )

    df = (n - 1) + noise.df
    q = t_quantile(1.0 - alpha, df if df > 0 else None)
    threshold = min_delta + q * se
    evidence |= {"df": df, "quantile": q, "threshold": threshold}
    stats = (
        f"mean paired Δ {mean:+.4f} over {n} seed{'s' if n > 1 else ''}, needs < "
        f"-{threshold:.4f} (t{df}·se {q * se:.4f} + min_delta {min_delta:.4f}, "
        f"α={alpha:g}; {_noise_note(noise)})"
    )
    if mean < -threshold:
        return Decision(
            verdict="keep", reason=f"kept: {stats}", threshold=threshold, delta=mean,
            evidence=evidence,
        )
    return Decision(
        verdict="discard", reason=f"discarded: {stats}", threshold=threshold, delta=mean,
        evidence=evidence,
    )


def reproduces(
    original: dict[int, float],
    replay: dict[int, float],
    *,
    noise_std: float | None,
    alpha: float = DEFAULT_ALPHA,
    noise_df: int | None = None,
) -> Reproduction:
    """Does ``replay`` (seed -> val_bpb) reproduce ``original``? Two-sided test of "same mean".

    Shared seeds are compared paired: sd = max(stdev(d), sqrt(2)·noise_std), se = sd/sqrt(n),
    df = (n - 1) + noise_df. Without shared seeds the means are compared unpaired with
    sd = max(pooled stdev, noise_std), se = sd·sqrt(1/n1 + 1/n2), df = n1 + n2 - 2 + noise_df.
    It reproduces iff |mean difference| <= t_{1-alpha/2, df} · se.
    """
    if not original or not replay:
        raise ValueError("reproduces() needs at least one value on each side")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    orig = {int(s): float(v) for s, v in original.items()}
    rep = {int(s): float(v) for s, v in replay.items()}
    shared = sorted(set(orig) & set(rep))
    noise = _noise(noise_std, noise_df, statistics.fmean(orig.values()), len(orig))
    evidence: dict[str, Any] = {
        "rule": RULE_NAME + ":reproduce",
        "original": orig,
        "replay": rep,
        "alpha": alpha,
        "noise_std": noise.std,
        "noise_df": noise.df,
        "noise_source": noise.source,
    }
    if not all(math.isfinite(v) for v in rep.values()):
        return Reproduction(reproduces=False,
                            reason="differs: the replay has non-finite values",
                            threshold=0.0, delta=None, evidence=evidence)
    if shared:
        deltas = [rep[s] - orig[s] for s in shared]
        n = len(deltas)
        delta, std, _, se = _paired(deltas, noise)
        df = (n - 1) + noise.df
        how = f"paired on seed{'s' if n > 1 else ''} {', '.join(map(str, shared))}"
        evidence |= {"paired": True, "seeds": shared, "deltas": deltas, "std": std}
    else:
        a, b = list(orig.values()), list(rep.values())
        delta = statistics.fmean(b) - statistics.fmean(a)
        dof = len(a) + len(b) - 2
        pooled = (
            math.sqrt(
                (sum((x - statistics.fmean(a)) ** 2 for x in a)
                 + sum((x - statistics.fmean(b)) ** 2 for x in b)) / dof
            )
            if dof > 0
            else None
        )
        sd = max(pooled, noise.std) if pooled is not None else noise.std
        se = sd * math.sqrt(1.0 / len(a) + 1.0 / len(b))
        df = dof + noise.df
        how = "unpaired (no shared seeds)"
        evidence |= {"paired": False, "std": pooled}
    q = t_quantile(1.0 - alpha / 2.0, df if df > 0 else None)
    tol = q * se
    evidence |= {"mean": delta, "se": se, "df": df, "quantile": q, "threshold": tol}
    ok = abs(delta) <= tol
    reason = (
        f"{'reproduces' if ok else 'differs'}: mean Δ {delta:+.4f} {how}, "
        f"{'within' if ok else 'outside'} ±{tol:.4f} (two-sided α={alpha:g}; "
        f"{_noise_note(noise)})"
    )
    return Reproduction(reproduces=ok, reason=reason,
                        threshold=tol, delta=delta,
                        evidence=evidence)
