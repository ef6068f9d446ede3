"""Seed statistics for sweeps, in plain Python: the mean with a Student-t 95% interval, and differences paired
by seed with a paired t-test and an exact sign-flip permutation test.

Seeds are few (2-10), so the t distribution is computed exactly (through the regularised incomplete beta
function) rather than approximated by a normal, and the permutation test enumerates all 2^n sign flips.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

CONFIDENCE = 0.95
MAX_EXACT_FLIPS = 16  # 2^16 sign patterns; beyond that a seeded sample of them


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on ``t_cdf``)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Estimate:
    """The mean of a metric over seeds with its 95% interval (None for one seed, or no finite values)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int  # finite values
    std: float | None = None

    @classmethod
    def of(cls, values) -> "Estimate":
        xs = [float(v) for v in values if v is not None and math.isfinite(v)]
        n = len(xs)
        if n == 0:
            return cls(None, None, None, 0)
        mean = sum(xs) / n
        if n == 1:
            return cls(mean, None, None, 1)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = t_ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
        return cls(mean, mean - half, mean + half, n, std)


@dataclass
class PairedDifference:
    """``a - b`` paired by seed: the mean difference with its interval, and two-sided p-values."""

    diff: Estimate
    p_t: float | None  # paired t-test
    p_perm: float | None  # exact sign-flip permutation test on the mean difference
    n: int  # seeds where both are finite

    @classmethod
    def of(cls, a: dict, b: dict) -> "PairedDifference":
        """``a``, ``b``: seed -> value. Seeds missing from either, or not finite in either, are left out."""
        seeds = sorted(s for s in a.keys() & b.keys() if _finite(a[s]) and _finite(b[s]))
        d = [float(a[s]) - float(b[s]) for s in seeds]
        return cls(Estimate.of(d), paired_t_pvalue(d), permutation_pvalue(d), len(d))


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def paired_t_pvalue(diffs: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test (H0: mean difference 0); None under two pairs."""
    n = len(diffs)
    if n < 2:
        return None
    mean = sum(diffs) / n
    var = sum((x - mean) ** 2 for x in diffs) / (n - 1)
    if var == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / math.sqrt(var / n)
    return 2 * (1 - t_cdf(abs(t), n - 1))


def permutation_pvalue(diffs: list[float], samples: int = 100_000) -> float | None:
    """Two-sided p-value of the sign-flip test: the share of sign patterns whose |mean| is at least the
    observed one (all 2^n patterns up to MAX_EXACT_FLIPS pairs). With n pairs it cannot go below 2 / 2^n."""
    n = len(diffs)
    if n < 1:
        return None
    observed = abs(sum(diffs)) * (1 - 1e-12)  # ties within rounding count as "at least"
    if n <= MAX_EXACT_FLIPS:
        hits = sum(abs(sum(s * x for s, x in zip(signs, diffs))) >= observed
                   for signs in itertools.product((1, -1), repeat=n))
        return hits / 2 ** n
    import random

    rng = random.Random(0)
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in diffs)) >= observed for _ in range(samples))
    return (hits + 1) / (samples + 1)
