"""The keep rule on synthetic measurements: pure functions, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoresearch.decide import (
    DEFAULT_ALPHA,
    FALLBACK_REL_NOISE,
    RULE_NAME,
    SCREEN_Z,
    SECOND_Z,
    _t_cdf,
    decide,
    estimate_noise,
    pool_noise,
    reproduces,
    stages,
    t_quantile,
)
from benchmarks.keep_rules import naive_decide, simulate

SIGMA = 0.017  # seed noise measured on CPU (DESIGN.md)
SEEDS = [0, 1, 2]
CHAMP = {0: 3.210, 1: 3.235, 2: 3.221}
FLOOR = math.sqrt(2) * SIGMA / math.sqrt(3)  # se floor for K = 3


def shifted(by: float, *, jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict:
    return {s: CHAMP[s] + by + j for s, j in zip(SEEDS, jitter, strict=True)}


# ----------------------------------------------------------------------------------------------
# Quantiles.


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.95, 1, 6.313752), (0.95, 2, 2.919986), (0.95, 4, 2.131847), (0.975, 2, 4.302653),
     (0.95, 10, 1.812461), (0.99, 3, 4.540703), (0.95, None, 1.644854), (0.05, 4, -2.131847)],
)
def test_t_quantiles_match_the_tables(p: float, df: int | None, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-5)


def test_t_quantiles_invert_the_cdf_across_the_range() -> None:
    for df in [1, 2, 3, 5, 8, 13, 29, 60, 200]:
        for p in (0.9, 0.95, 0.975, 0.995):
            assert _t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# The stages: a screen on the first seed, a second stage, the final test on all seeds.


def test_the_stages_of_a_plan() -> None:
    assert stages(1) == [1] and stages(2) == [1, 2] and stages(3) == [1, 2, 3]
    assert stages(5) == [1, 3, 5] and stages(8) == [1, 4, 8]
    with pytest.raises(ValueError):
        stages(0)


def test_a_promising_first_seed_goes_on_to_the_second_stage() -> None:
    d = decide({0: CHAMP[0] - 0.01}, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.verdict == "confirm"
    assert d.delta == pytest.approx(-0.01)
    assert d.evidence["stage"] == "screen"
    assert "1 more seed" in d.reason
    # the bar comes from the noise: SCREEN_Z standard errors of one paired difference
    assert d.threshold == pytest.approx(SCREEN_Z * math.sqrt(2) * SIGMA)


def test_a_first_seed_barely_better_than_the_champion_is_discarded() -> None:
    # under the old bar of zero, any improvement passed the screen; now it must clear the
    # noise-derived bar (0.3 se of one paired difference: 0.0072 here)
    just = decide({0: CHAMP[0] - 0.005}, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert just.verdict == "discard" and "at the screen" in just.reason
    worse = decide({0: CHAMP[0] + 0.002}, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert worse.verdict == "discard"


def test_the_second_stage_discards_a_candidate_the_second_seed_does_not_support() -> None:
    bar = SECOND_Z * math.sqrt(2) * SIGMA / math.sqrt(2)
    two = {0: CHAMP[0] - 0.02, 1: CHAMP[1] + 0.02}  # mean paired Δ 0: nothing
    d = decide(two, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.verdict == "discard" and d.evidence["stage"] == "second-stage"
    assert d.threshold == pytest.approx(bar) and "second stage" in d.reason
    good = {0: CHAMP[0] - 0.03, 1: CHAMP[1] - 0.03}
    d = decide(good, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.verdict == "confirm" and d.evidence["stage"] == "second-stage"


def test_the_screen_requires_min_delta() -> None:
    bar = 0.005 + SCREEN_Z * math.sqrt(2) * SIGMA
    d = decide({0: CHAMP[0] - bar + 0.001}, CHAMP, noise_std=SIGMA, min_delta=0.005,
               seeds=SEEDS)
    assert d.verdict == "discard"
    d = decide({0: CHAMP[0] - bar - 0.001}, CHAMP, noise_std=SIGMA, min_delta=0.005,
               seeds=SEEDS)
    assert d.verdict == "confirm"


def test_the_noise_pools_every_configuration_measured_against_the_champion() -> None:
    champ = [3.20, 3.23, 3.22]
    alone, df = pool_noise(champ)
    assert alone == pytest.approx(estimate_noise(champ)) and df == 2
    # groups as wide as the champion's own keep the noise and add degrees of freedom
    groups = [[3.0, 3.03, 3.02], [2.9, 2.93, 2.92]]
    same, df = pool_noise(champ, groups)
    assert same == pytest.approx(alone) and df == 6
    wider, _ = pool_noise(champ, [[3.0, 3.2], [2.8, 3.1]])
    assert wider > 5 * alone  # a neighbourhood noisier than the champion's seeds says so
    # and a champion whose three seeds spread by luck is corrected by what follows
    lucky, df = pool_noise([3.0, 3.3, 3.02], [[2.9, 2.92, 2.91]] * 10)
    assert lucky < 0.5 * estimate_noise([3.0, 3.3, 3.02]) and df == 22
    assert pool_noise([3.2]) == (None, 0)
    assert pool_noise([3.2], [[float("nan"), 3.0]]) == (None, 0)


def test_noise_alone_is_not_kept() -> None:
    # lower on every seed, by about one sigma of seed noise: that is noise, not a result
    cand = shifted(-0.012, jitter=(-0.010, 0.004, 0.006))
    assert decide({0: cand[0]}, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS).verdict == (
        "confirm"
    )
    # the second stage already stops it (mean Δ -0.015 on two seeds, bar 1.0·se = 0.017) ...
    assert decide({s: cand[s] for s in SEEDS[:2]}, CHAMP, noise_std=SIGMA, min_delta=0.0,
                  seeds=SEEDS).verdict == "discard"
    # ... and the final test would not keep it either
    d = decide(cand, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.verdict == "discard"
    assert d.delta == pytest.approx(-0.012)
    # and the naive rule would have kept it
    assert naive_decide({0: cand[0]}, CHAMP, seeds=SEEDS).verdict == "keep"


def test_a_real_shift_is_kept() -> None:
    cand = shifted(-0.06, jitter=(0.008, -0.011, 0.003))
    d = decide(cand, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.verdict == "keep"
    assert d.reason.startswith("kept: mean paired Δ -0.0600 over 3 seeds")


def test_the_threshold_is_the_documented_formula() -> None:
    # consistent paired differences: their stdev is below the floor, so the floor applies
    cand = shifted(-0.035, jitter=(0.001, -0.001, 0.0))
    d = decide(cand, CHAMP, noise_std=SIGMA, min_delta=0.002, seeds=SEEDS)
    q = t_quantile(1 - DEFAULT_ALPHA, (3 - 1) + (3 - 1))  # df: paired + baseline noise
    assert d.threshold == pytest.approx(0.002 + q * FLOOR)
    assert d.evidence["se"] == pytest.approx(FLOOR)
    assert d.evidence["df"] == 4 and d.evidence["quantile"] == pytest.approx(2.131847, abs=1e-6)
    assert d.threshold < 0.035 and d.verdict == "keep"
    worse = decide(shifted(-0.030), CHAMP, noise_std=SIGMA, min_delta=0.002, seeds=SEEDS)
    assert worse.threshold == pytest.approx(d.threshold) and worse.verdict == "discard"


def test_a_wider_spread_of_paired_differences_raises_the_threshold() -> None:
    # a candidate that makes runs noisier cannot hide behind the baseline's noise
    cand = shifted(-0.05, jitter=(-0.06, 0.0, 0.06))
    d = decide(cand, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.evidence["std"] == pytest.approx(0.06)
    assert d.evidence["se"] == pytest.approx(0.06 / math.sqrt(3))
    assert d.verdict == "discard"


def test_a_no_op_in_a_deterministic_run_is_not_kept() -> None:
    d = decide(dict(CHAMP), CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.verdict == "discard" and d.delta == 0.0


def test_a_single_planned_seed_decides_at_once_against_the_floor() -> None:
    champ = {0: 3.2}
    d = decide({0: 3.1}, champ, noise_std=SIGMA, min_delta=0.0, seeds=[0], noise_df=4)
    assert d.verdict == "keep"
    assert d.threshold == pytest.approx(t_quantile(0.95, 4) * math.sqrt(2) * SIGMA)
    d = decide({0: 3.17}, champ, noise_std=SIGMA, min_delta=0.0, seeds=[0], noise_df=4)
    assert d.verdict == "discard"


@pytest.mark.parametrize("noise", [0.0, None, float("nan"), -1.0])
def test_unknown_noise_falls_back_to_a_documented_default(noise: float | None) -> None:
    cand = shifted(-0.03)
    d = decide(cand, CHAMP, noise_std=noise, min_delta=0.0, seeds=SEEDS)
    guess = FALLBACK_REL_NOISE * sum(CHAMP.values()) / 3
    assert d.evidence["noise_source"] == "fallback"
    assert d.evidence["noise_std"] == pytest.approx(guess)
    assert d.evidence["df"] == 2  # the guess brings no degrees of freedom
    assert "noise unknown" in d.reason
    assert d.threshold == pytest.approx(t_quantile(0.95, 2) * math.sqrt(2) * guess / math.sqrt(3))


def test_every_decision_carries_its_evidence() -> None:
    cand = shifted(-0.05)
    d = decide(cand, CHAMP, noise_std=SIGMA, min_delta=0.001, seeds=SEEDS)
    ev = d.evidence
    assert ev["rule"] == RULE_NAME and ev["stage"] == "final"
    assert ev["seeds"] == SEEDS
    assert ev["candidate"] == [cand[s] for s in SEEDS]
    assert ev["champion"] == [CHAMP[s] for s in SEEDS]
    assert ev["deltas"] == pytest.approx([-0.05] * 3)
    assert ev["mean"] == pytest.approx(-0.05) and ev["std"] == pytest.approx(0.0, abs=1e-12)
    assert ev["alpha"] == DEFAULT_ALPHA and ev["min_delta"] == 0.001
    assert ev["threshold"] == d.threshold and ev["noise_std"] == SIGMA
    assert "\n" not in d.reason
    d.model_dump_json()  # storable as JSON


def test_a_non_finite_candidate_is_discarded() -> None:
    d = decide({0: float("nan")}, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    assert d.verdict == "discard" and "non-finite" in d.reason


def test_bad_calls_are_refused() -> None:
    with pytest.raises(ValueError, match="champion"):
        decide({0: 3.0}, {0: 3.1}, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    with pytest.raises(ValueError, match="candidate"):
        decide({7: 3.0}, CHAMP, noise_std=SIGMA, min_delta=0.0, seeds=SEEDS)
    with pytest.raises(ValueError, match="min_delta"):
        decide({0: 3.0}, CHAMP, noise_std=SIGMA, min_delta=-1.0, seeds=SEEDS)


def test_estimate_noise() -> None:
    assert estimate_noise({0: 1.0, 1: 2.0, 2: 3.0}) == pytest.approx(1.0)
    assert estimate_noise([3.2]) == 0.0


# ----------------------------------------------------------------------------------------------
# Reproduction (replay --seeds K).


def test_a_replay_with_the_same_values_reproduces() -> None:
    r = reproduces(CHAMP, dict(CHAMP), noise_std=SIGMA)
    assert r.reproduces and r.delta == 0.0
    assert r.reason.startswith("reproduces")


def test_a_replay_within_noise_reproduces_and_a_shifted_one_does_not() -> None:
    near = {s: v + j for (s, v), j in zip(CHAMP.items(), (0.01, -0.015, 0.02), strict=True)}
    assert reproduces(CHAMP, near, noise_std=SIGMA).reproduces
    far = {s: v + 0.08 for s, v in CHAMP.items()}
    r = reproduces(CHAMP, far, noise_std=SIGMA)
    assert not r.reproduces and r.reason.startswith("differs")


def test_a_replay_on_other_seeds_is_compared_unpaired() -> None:
    other = {10: 3.22, 11: 3.23}
    r = reproduces(CHAMP, other, noise_std=SIGMA)
    assert r.evidence["paired"] is False and r.reproduces


# ----------------------------------------------------------------------------------------------
# Monte Carlo under the documented noise model (independent draws: the worst case for pairing).


def test_false_keeps_of_no_op_candidates_stay_under_five_percent() -> None:
    rng = np.random.default_rng(20240605)
    for kind in ("tokens", "time"):
        sim = simulate(shift=0.0, sigma=SIGMA, seeds=SEEDS, kind=kind, trials=3000, rng=rng)
        assert sim.keep_rate <= 0.05
        assert 0.3 < sim.confirm_rate < 0.45  # the bar lets about 38% of the no-ops go on
        # and most of those stop at the second stage: well under the old plan's 2.0 runs
        assert sim.runs_per_candidate < (1.7 if kind == "tokens" else 2.5)  # old: 2.0, 3.6
    naive = simulate(naive_decide, shift=0.0, sigma=SIGMA, seeds=SEEDS, trials=1000, rng=rng)
    assert naive.keep_rate > 0.4  # the careless rule keeps about half of them


def test_a_three_sigma_improvement_is_kept_with_high_probability() -> None:
    rng = np.random.default_rng(7)
    # with the noise pooled to 20 degrees of freedom, as after about ten experiments
    sim = simulate(shift=-3 * SIGMA, sigma=SIGMA, seeds=SEEDS, baseline_seeds=21, trials=2000,
                   rng=rng)
    assert sim.keep_rate >= 0.88
    assert sim.confirm_rate >= 0.95  # the screen rarely loses a real gain


def test_the_new_plan_spends_fewer_measurements_than_the_old_on_a_realistic_mix() -> None:
    from benchmarks.keep_rules import NEW, OLD, simulate_runs, summary

    # (benchmarks/keep_rules.py, 400 runs: time 2.07 -> 1.58, tokens 1.40 -> 1.27)
    for kind, saved in (("time", 0.2), ("tokens", 0.0)):
        new = summary(simulate_runs(NEW, kind, runs=40, candidates=30, rng=1))
        old = summary(simulate_runs(OLD, kind, runs=40, candidates=30, rng=1))
        assert new["per_candidate"] < old["per_candidate"] - saved
        assert new["false_keeps"] <= 0.05 and new["harmful_kept"] <= 0.01


def test_five_seeds_and_a_larger_baseline_keep_the_false_keep_rate() -> None:
    rng = np.random.default_rng(3)
    sim = simulate(shift=0.0, sigma=SIGMA, seeds=range(5), baseline_seeds=8, trials=2000, rng=rng)
    assert sim.keep_rate <= 0.05
