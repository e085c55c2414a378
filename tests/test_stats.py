"""Known values for the suite statistics (crossan.reports.stats): Student's t quantiles and intervals, per-user
NDCG from ranks, and the paired bootstrap's behaviour on identical runs, constant shifts and its sign."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossan.evaluation import metrics_from_ranks
from crossan.reports.stats import holm_adjust, ndcg_at, paired_bootstrap, t_cdf, t_interval, t_quantile

# two-sided 95% critical values t(0.975, df) from printed tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.5.3)
TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045}


@pytest.mark.parametrize("df, expected", sorted(TABLE_975.items()))
def test_t_quantile_matches_printed_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 30])
def test_t_cdf_and_quantile_against_scipy(df: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    for t in (-3.0, -0.5, 0.0, 0.7, 2.0, 10.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)
    for p in (0.6, 0.9, 0.95, 0.975, 0.995):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-9)


def test_t_interval_hand_computed() -> None:
    # values 0.10, 0.12, 0.14: mean 0.12, s = 0.02, n = 3 → half-width 4.3027 · 0.02 / √3 = 0.049683
    mean, half = t_interval([0.10, 0.12, 0.14])
    assert mean == pytest.approx(0.12)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert t_interval([0.2, 0.2, 0.2]) == (pytest.approx(0.2), pytest.approx(0.0, abs=1e-15))
    m1, h1 = t_interval([0.3])
    assert m1 == 0.3 and math.isnan(h1)


def test_ndcg_from_ranks_equals_the_evaluation_module() -> None:
    ranks = torch.tensor([1.0, 2.0, 10.0, 11.0, math.inf, 3.0], dtype=torch.float64)
    want = metrics_from_ranks(ranks, [10])["NDCG@10"].numpy()
    np.testing.assert_allclose(ndcg_at(ranks.numpy(), 10), want)
    np.testing.assert_allclose(ndcg_at(ranks.numpy(), 10)[:3], [1.0, 1 / math.log2(3), 1 / math.log2(11)])


def _per_user(seed: int, n: int = 2000) -> np.ndarray:
    """Zero-inflated per-user NDCG-like values (most users miss)."""
    rng = np.random.default_rng(seed)
    ranks = rng.geometric(0.02, size=n).astype(float)
    return ndcg_at(ranks, 10)


def test_identical_runs_give_p_one_and_zero_difference() -> None:
    a = [_per_user(s) for s in range(3)]
    res = paired_bootstrap(a, [x.copy() for x in a], resamples=2000)
    assert res.p_value == 1.0 and res.diff == 0.0 and res.ci95 == (0.0, 0.0)
    assert res.users == 2000 and res.seeds == 3


def test_constant_shift_gives_the_smallest_p_and_its_sign() -> None:
    b = [_per_user(s) for s in range(3)]
    up = paired_bootstrap([x + 0.01 for x in b], b, resamples=2000)
    assert up.p_value == pytest.approx(1 / 2001) and up.diff == pytest.approx(0.01)
    down = paired_bootstrap([x - 0.01 for x in b], b, resamples=2000)
    assert down.p_value == pytest.approx(1 / 2001) and down.diff == pytest.approx(-0.01)
    assert down.ci95[1] < 0 < up.ci95[0]


def test_seeded_and_reproducible_and_agrees_with_a_paired_t_test() -> None:
    b = [_per_user(s) for s in range(3)]
    # a small real improvement: 8% of users move to a better rank
    rng = np.random.default_rng(9)
    a = [np.where(rng.random(x.size) < 0.08, np.maximum(x, 1 / math.log2(3)), x) for x in b]
    r1, r2 = paired_bootstrap(a, b, resamples=4000), paired_bootstrap(a, b, resamples=4000)
    assert r1 == r2 and r1.diff > 0
    stats = pytest.importorskip("scipy.stats")
    d = np.mean([x - y for x, y in zip(a, b)], axis=0)
    t_p = stats.ttest_1samp(d, 0.0).pvalue
    assert r1.p_value < 0.05 and t_p < 0.05
    # a difference of pure noise: both tests say "not significant" and roughly agree on p
    noise = [x + np.random.default_rng(20 + i).normal(0, 0.05, x.size) for i, x in enumerate(b)]
    r3 = paired_bootstrap(noise, b, resamples=4000)
    t3 = stats.ttest_1samp(np.mean([x - y for x, y in zip(noise, b)], axis=0), 0.0).pvalue
    assert abs(r3.p_value - t3) < 0.05


def test_stratified_when_users_differ_between_seeds() -> None:
    b = [_per_user(0, 100), _per_user(1, 150)]
    res = paired_bootstrap([x + 0.02 for x in b], b, same_users=False, resamples=1000)
    assert res.diff == pytest.approx(0.02) and res.p_value == pytest.approx(1 / 1001)
    with pytest.raises(ValueError, match="different numbers of users"):
        paired_bootstrap(b, b, same_users=True)
    with pytest.raises(ValueError, match="differ in shape"):
        paired_bootstrap([b[0]], [b[1]])


def test_the_bootstrap_interval_is_a_95_percent_one() -> None:
    """Mutation testing (2026-12-02): the tests used constant differences (an interval of width 0), so a 90%
    interval passed for a 95% one. For 400 standard normal differences the half-width is 1.96 standard errors."""
    d = np.random.default_rng(0).normal(0.0, 1.0, 400)
    res = paired_bootstrap([d], [np.zeros(400)], resamples=4000)
    half = (res.ci95[1] - res.ci95[0]) / 2
    assert half / (d.std() / math.sqrt(400)) == pytest.approx(1.96, rel=0.05)


def test_the_bootstrap_draws_every_user() -> None:
    """Two users with differences 0 and 1: resamples range from all-0 to all-1 (one that never drew the
    last user would give (0, 0))."""
    res = paired_bootstrap([np.array([0.0, 1.0])], [np.zeros(2)], resamples=2000)
    assert res.ci95 == (0.0, 1.0)
    # the resampled means are 0, 1/2 and 1 (a quarter, a half, a quarter): half of them are as far from the
    # observed 1/2 as 0 is; a bootstrap that never drew the last user would give p = 1 (mutation testing)
    assert 0.45 < res.p_value < 0.55


def test_seeds_over_the_same_users_are_resampled_together() -> None:
    """Seeds scored on the same users share one draw of users per resample: three identical seeds give the
    one seed's interval exactly (independent draws per seed would narrow it and shrink the p-values)."""
    d = np.random.default_rng(1).normal(0.0, 1.0, 300)
    one = paired_bootstrap([d], [np.zeros(300)], resamples=2000)
    three = paired_bootstrap([d] * 3, [np.zeros(300)] * 3, resamples=2000)
    assert three.ci95 == pytest.approx(one.ci95, rel=1e-9)


def test_the_bootstrap_memory_does_not_grow_with_users_times_resamples() -> None:
    """Resamples were drawn 500 at a time whatever the number of users: 500 × n indices and their values,
    8 GB for a report over 1M test users (issue 14's scale). Chunks are now capped in elements; the draws
    come from the same stream, so the result is the one of a single chunk, to the bit."""
    import tracemalloc

    n, resamples = 400_000, 40
    d = np.random.default_rng(2).normal(0.0, 1.0, n)
    zeros = np.zeros(n)
    tracemalloc.start()
    try:
        capped = paired_bootstrap([d], [zeros], resamples=resamples)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_chunk = paired_bootstrap([d], [zeros], resamples=resamples, max_elements=resamples * n)
    assert (capped.diff, capped.ci95, capped.p_value) == (one_chunk.diff, one_chunk.ci95, one_chunk.p_value)
    # one chunk of all 40 resamples holds 40 × 400k × (8 + 8) bytes = 256 MB; the cap is 4M × 16 = 64 MB
    assert peak < 110e6, f"peak {peak / 1e6:.0f} MB"


def test_the_interval_excludes_zero_exactly_when_p_is_below_five_percent() -> None:
    """A second reader (2026-12-04) found a starred row printing `+0.0539 [-0.0012, +0.1066]`: the interval
    was the percentile interval of the resampled means, the p-value the shifted-null test, and for skewed
    per-user differences (NDCG's: mostly zeros, a long tail) the two disagreed in about one case in six. The
    interval is now the one the test inverts."""
    rng = np.random.default_rng(0)
    disagreed = 0
    for _ in range(150):
        n = int(rng.integers(10, 60))
        d = (np.where(rng.random(n) < 0.15, rng.exponential(1.0, n), 0.0)
             - np.where(rng.random(n) < 0.05, rng.exponential(0.3, n), 0.0))
        res = paired_bootstrap([d], [np.zeros(n)], resamples=2000)
        holds_zero = res.ci95[0] <= 0.0 <= res.ci95[1]
        disagreed += holds_zero == (res.p_value < 0.05)
        assert res.ci95[0] <= res.diff <= res.ci95[1]
    assert disagreed == 0


def test_non_finite_per_user_values_are_refused() -> None:
    """NaN made every comparison false: identical runs got the smallest p (1/(R+1)) and a NaN interval."""
    x = np.array([0.0, 0.5, math.nan, 0.3] * 25)
    for a, b, which in [(x, x.copy(), "the first run"), (np.zeros(100), np.full(100, math.inf), "the reference")]:
        with pytest.raises(ValueError, match=f"seed 0: per-user values must be finite .*in {which}"):
            paired_bootstrap([a], [b])


def test_identical_values_give_their_value_and_no_spread() -> None:
    """``t_interval([0.1] * 3)`` was (0.10000000000000002, 4.2e-17), written so into results.csv."""
    assert t_interval([0.1] * 3) == (0.1, 0.0)
    assert t_interval([0.1, 0.1]) == (0.1, 0.0)


def test_t_functions_take_whole_floats_for_degrees_of_freedom() -> None:
    """``t_cdf(1.0, 3.0)`` passed the integer check and raised a TypeError in range()."""
    assert t_cdf(1.0, 3.0) == t_cdf(1.0, 3)
    assert t_quantile(0.975, 2.0) == t_quantile(0.975, 2)
    with pytest.raises(ValueError, match="positive integer"):
        t_cdf(1.0, 2.5)


def test_bootstrap_and_holm_refuse_what_they_cannot_answer() -> None:
    """Mutation testing (2026-12-04): these checks could be removed without a test failing."""
    x = np.linspace(0.0, 1.0, 50)
    with pytest.raises(ValueError, match="same positive number of seeds"):
        paired_bootstrap([x, x], [x])
    with pytest.raises(ValueError, match="p-values must be in"):
        holm_adjust([0.5, 1.2])
    # with 10 resamples no p below 0.05 can be reached: the interval the test inverts is the whole line
    res = paired_bootstrap([x], [x - 0.1], resamples=10)
    assert res.ci95 == (-math.inf, math.inf) and res.p_value == pytest.approx(1 / 11)


def test_the_interval_follows_the_tolerance_the_p_value_counts_with() -> None:
    """A review (2026-12-04): p counts resampled distances within 1e-12 of |Δ| as "as far", the interval did not,
    so p = 0.05 came with an interval (1.1e-16, 0.5) that excluded 0."""
    res = paired_bootstrap([np.array([0.2, 0.2, -0.1, 0.7])], [np.zeros(4)], resamples=99, seed=264)
    assert (res.ci95[0] <= 0.0 <= res.ci95[1]) == (res.p_value >= 0.05)
    rng = np.random.default_rng(5)
    for _ in range(300):  # small, discrete per-user values: resampled means tie with Δ up to rounding
        d = rng.choice([-0.1, 0.0, 0.2, 0.7], size=int(rng.integers(3, 7)))
        res = paired_bootstrap([d], [np.zeros(d.size)], resamples=99, seed=int(rng.integers(1000)))
        assert (res.ci95[0] <= 0.0 <= res.ci95[1]) == (res.p_value >= 0.05)
