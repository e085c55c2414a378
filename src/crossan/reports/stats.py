"""Statistics for comparing methods over seeds (METHOD.md §11): a t-interval over seeds and a paired bootstrap
over users.

* :func:`t_interval` — mean and half-width of the 95% confidence interval of a metric over seeds,
  ``mean ± t(0.975, n-1) · s / sqrt(n)``. Student's t quantile is computed here (closed-form CDF for integer
  degrees of freedom, inverted by bisection) so that numpy is the only dependency.
* :func:`paired_bootstrap` — a two-sided paired bootstrap test of "run A and the reference have the same mean
  per-user NDCG@10" on the *same* test users, pooled over seeds.
* :func:`holm_adjust` — Holm–Bonferroni adjusted p-values for the family of comparisons in one report, so
  that the chance of at least one false "significant" mark stays at most the level however many runs are
  compared with the reference.

Why a bootstrap and not a paired t-test: per-user NDCG@10 is mostly exact zeros with a long right tail (a hit
is worth 1/log2(rank+1)), so the differences are far from normal; the bootstrap makes no assumption on their
shape, is exact for the two cases that matter for reading a report (identical runs give p = 1; a constant
shift gives the smallest p the resamples can show), and with thousands of users agrees with the t-test where
the t-test is valid (checked in ``tests/test_stats.py``). It is seeded, so a report is reproducible.

How seeds are pooled: a user's difference is averaged over the seeds first (same seed ↔ same split, so the
same users appear under every seed) and users are then resampled; when the seeds' user lists differ, users
are resampled within each seed (stratified) and the seeds' means averaged. The test is about users, for the
seeds that were run: it does not include the variation between training seeds, which the t-interval over
seeds shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22
"""Resampled indices drawn at a time by :func:`paired_bootstrap` (4M: 32 MiB of indices and 32 MiB of their
values), so its memory does not grow with users × resamples per chunk (500 resamples of 1M users were 8 GB)."""


# --------------------------------------------------------------------------------------------- t-interval
def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with integer ``df`` ≥ 1 (closed form: Abramowitz & Stegun 26.7.3–4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    df = int(df)  # 3.0 is 3: the series below count terms with it
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:  # A(t|df) = 2/π (θ + sinθ (cosθ + 2/3 cos³θ + … ))
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + s * total) if df > 1 else 2 / math.pi * theta
    else:  # A(t|df) = sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + … )
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        a = s * total
    return 0.5 + 0.5 * a if t >= 0 else 0.5 - 0.5 * a


def t_quantile(p: float, df: int) -> float:
    """The ``p``-quantile of Student's t with integer ``df`` (bisection on :func:`t_cdf`, to 1e-12)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its ``level`` t-interval over ``values`` (one per seed).

    One value gives a half-width of NaN (no interval from a single run); identical values give that value and
    0 exactly (their computed mean and spread would differ from them in the last bits).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan
    if np.all(x == x[0]):
        return float(x[0]), 0.0
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, t_quantile(0.5 + level / 2, x.size - 1) * sem


# --------------------------------------------------------------------------------------------- paired test
@dataclass
class PairedTest:
    """Result of a paired comparison of run A against a reference on the same users."""

    diff: float
    """Mean per-user difference A − reference (pooled over seeds)."""
    ci95: tuple[float, float]
    """95% interval of ``diff`` that the test inverts: ``diff ± h``, ``h`` the bootstrap's 95th percentile of
    ``|resampled − diff|`` (counted as the p-value is), so that it excludes 0 exactly when ``p_value`` < 0.05."""
    p_value: float
    """Two-sided bootstrap p-value of "no difference"."""
    users: int
    """Users resampled: the users every seed shares, or, where seeds hold their own users, the fewest of a seed."""
    seeds: int
    resamples: int


def ndcg_at(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k from strict ranks (``inf`` = masked target: 0), as ``crossan.evaluation`` defines it."""
    r = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(r)
    hit = r <= k
    out[hit] = 1.0 / np.log2(r[hit] + 1.0)
    return out


def paired_bootstrap(a: Sequence[np.ndarray], b: Sequence[np.ndarray], same_users: bool = True,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     chunk: int = 500, max_elements: int = BOOTSTRAP_CHUNK_ELEMENTS) -> PairedTest:
    """Paired bootstrap test of mean(a − b) = 0, pooled over seeds.

    ``a[s]`` and ``b[s]`` hold one per-user value each for seed ``s`` (the same users in the same order for the
    two runs). With ``same_users`` the seeds hold the same users too: a user's differences are averaged over
    seeds and users are resampled; otherwise users are resampled within each seed.

    The p-value is the share of resampled mean differences at least as far from the observed one as the
    observed one is from 0 (the bootstrap distribution shifted to the null), counted as
    ``(hits + 1) / (resamples + 1)`` so that it is never 0; identical inputs give exactly 1. The interval is
    the one this test inverts (symmetric about the observed difference): it holds 0 exactly when p ≥ 0.05.
    A percentile interval beside this p-value could exclude 0 at p ≥ 0.05, or hold it at p < 0.05, for
    skewed differences such as NDCG's. Non-finite values are refused (a NaN would make every comparison
    false and give the smallest p).

    Resamples are drawn ``chunk`` at a time, fewer where ``chunk`` × users would exceed ``max_elements``;
    the generator's stream, and so the result, is the same whatever the chunking.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same positive number of seeds for both runs (got {len(a)} and {len(b)})")
    diffs = []
    for s, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1 or x.size == 0:
            raise ValueError(f"seed {s}: per-user values differ in shape ({x.shape} vs {y.shape})")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError(f"seed {s}: per-user values must be finite (NaN or inf in "
                             f"{'the first run' if not np.isfinite(x).all() else 'the reference'})")
        diffs.append(x - y)
    if same_users:
        if len({d.size for d in diffs}) != 1:
            raise ValueError("same_users=True but the seeds hold different numbers of users")
        strata = [np.mean(diffs, axis=0)]
    else:
        strata = diffs
    observed = float(np.mean([d.mean() for d in strata]))
    rng = np.random.default_rng(seed)
    boot = np.zeros(resamples)
    for d in strata:
        n = d.size
        rows = max(1, min(chunk, max_elements // n))
        for start in range(0, resamples, rows):
            stop = min(resamples, start + rows)
            idx = rng.integers(0, n, size=(stop - start, n))
            boot[start:stop] += d[idx].mean(axis=1)
    boot /= len(strata)
    # compare with a tolerance: the resampled means of a constant or zero difference are equal to the
    # observed one up to floating-point summation order
    tol = 1e-12 * max(1.0, abs(observed))
    dist = np.abs(boot - observed)
    far = dist >= abs(observed) - tol
    p = float((far.sum() + 1) / (resamples + 1))
    half = _inverted_half_width(dist, resamples, ALPHA)
    if half < abs(observed) <= half + tol:  # p counts distances within tol of |observed|: so does the interval
        half = abs(observed)
    ci = (observed - half, observed + half)
    return PairedTest(observed, ci, min(1.0, p), int(min(d.size for d in strata)), len(a), resamples)


ALPHA = 0.05
"""The level a report's claims are made at (``p_holm`` < ALPHA), and 1 − the level of :attr:`PairedTest.ci95`: one
value, so that the interval holds 0 exactly when the raw p is at least it."""


def _inverted_half_width(dist: np.ndarray, resamples: int, alpha: float) -> float:
    """The half-width ``h`` of the interval the bootstrap test inverts: with ``hits(x)`` = #{dist ≥ x}, the
    p-value of a difference ``x`` away from the observed one is ``(hits(x) + 1) / (resamples + 1)``, below
    ``alpha`` exactly when ``hits(x)`` ≤ m (the largest integer under ``alpha · (resamples + 1) − 1``), i.e.
    when ``x`` exceeds the (m + 1)-th largest of ``dist``. Infinite when no p below ``alpha`` can be reached
    with so few resamples."""
    m = math.ceil(alpha * (resamples + 1) - 1) - 1
    if m < 0:
        return math.inf
    return float(np.partition(dist, dist.size - 1 - m)[dist.size - 1 - m])


# ------------------------------------------------------------------------------------------ many comparisons
def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given (Holm 1979, step-down).

    With the ``m`` p-values sorted ascending, p₍₁₎ ≤ … ≤ p₍ₘ₎, the adjusted value of the i-th is
    ``max_{j ≤ i} min(1, (m − j + 1) · p₍ⱼ₎)``: rejecting where it is below α keeps the family-wise error rate
    (the chance of any false rejection among the ``m``) at most α, under any dependence between the tests.
    ``holm_adjust([0.01, 0.04, 0.03])`` is ``[0.03, 0.06, 0.06]``.
    """
    p = [float(x) for x in p_values]
    if any(not 0.0 <= x <= 1.0 for x in p):  # NaN fails this too
        raise ValueError(f"p-values must be in [0, 1], got {p}")
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for i, idx in enumerate(sorted(range(m), key=lambda k: p[k])):  # stable: ties keep their order
        running = max(running, min(1.0, (m - i) * p[idx]))
        adjusted[idx] = running
    return adjusted
