"""Means with 95% intervals over seeds, and whether a difference between two groups holds beyond its interval.

- `t_interval`: mean ± t(1 - α/2, n - 1) · s / √n, the Student-t interval (the default: it is exact for normal
  per-seed outcomes and honest about how little 3 seeds say: t(0.975, 2) = 4.303).
- `bootstrap_interval`: the percentile bootstrap of the mean. With a handful of seeds it is too narrow (it cannot
  see spread the seeds did not show), so it is offered for comparison, not as the report's default.
- `difference_interval`: the Welch t-interval of a difference of two means (unequal variances) with its p-value;
  the difference is *resolved* when the interval excludes 0.
- `holm_adjusted`: Holm's step-down adjustment of the p-values of a family of tests.

One value gives no interval: the result says so (`low`/`high` are None) instead of inventing a width.
The t distribution and Welch's test are scipy.stats'. The bootstrap is not scipy.stats.bootstrap: that one always
draws resamples at random, and with 2 or 3 seeds its 95% percentile interval is their minimum and maximum; this one
enumerates every resample of a few seeds and interpolates between the sorted resample means (exact, the same each
run, and what the report has always shown).
"""
from __future__ import annotations

import itertools
import math
import random
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

from scipy import stats

DEFAULT_LEVEL = 0.95


# --- the Student-t distribution (scipy.stats.t) ----------------------------------------------------------------

def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (df > 0, not necessarily an integer)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(stats.t.cdf(t, df))


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie strictly between 0 and 1")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(stats.t.ppf(p, df))


# --- intervals of one group ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A mean over n values with its interval; low/high are None when the values cannot give one (n = 1)."""
    mean: float
    n: int
    low: float | None
    high: float | None
    method: str          # "t" or "bootstrap"

    @property
    def has_interval(self) -> bool:
        return self.low is not None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2.0

    def format(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        """'55.4% [53.1, 57.7]' (n is the caller's to state), or '55.4% (n=1, no interval)'."""
        mean = f"{self.mean * scale:.{digits}f}{unit}"
        if not self.has_interval:
            return f"{mean} (n={self.n}, no interval)"
        return f"{mean} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def _finite_values(values: Iterable[float]) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values: an interval needs at least one")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite, got {values}")
    return values


def sample_variance(values: Sequence[float]) -> float:
    """The unbiased (n - 1) variance."""
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def t_interval(values: Iterable[float], level: float = DEFAULT_LEVEL) -> Interval:
    """The Student-t interval of the mean: mean ± t((1 + level) / 2, n - 1) · s / √n."""
    values = _finite_values(values)
    n, mean = len(values), math.fsum(values) / len(values)
    if n < 2:
        return Interval(mean, n, None, None, "t")
    half_width = student_t_quantile((1.0 + level) / 2.0, n - 1) * math.sqrt(sample_variance(values) / n)
    return Interval(mean, n, mean - half_width, mean + half_width, "t")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The fraction-quantile of sorted values, interpolating linearly between order statistics."""
    position = fraction * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (position - below) * (sorted_values[above] - sorted_values[below])


def bootstrap_interval(values: Iterable[float], level: float = DEFAULT_LEVEL, resamples: int = 10_000,
                       seed: int = 0) -> Interval:
    """The percentile bootstrap interval of the mean.

    With n^n <= resamples (n <= 5 at the default) every resample is enumerated, so the interval is exact and
    needs no seed; otherwise `resamples` resamples are drawn with a seeded generator.
    """
    values = _finite_values(values)
    n, mean = len(values), math.fsum(values) / len(values)
    if n < 2:
        return Interval(mean, n, None, None, "bootstrap")
    if n ** n <= resamples:
        means = [math.fsum(resample) / n for resample in itertools.product(values, repeat=n)]
    else:
        generator = random.Random(seed)
        means = [math.fsum(generator.choices(values, k=n)) / n for _ in range(resamples)]
    means.sort()
    tail = (1.0 - level) / 2.0
    return Interval(mean, n, percentile(means, tail), percentile(means, 1.0 - tail), "bootstrap")


def mean_interval(values: Iterable[float], method: str = "t", level: float = DEFAULT_LEVEL) -> Interval:
    if method == "t":
        return t_interval(values, level)
    if method == "bootstrap":
        return bootstrap_interval(values, level)
    raise ValueError(f"interval method {method!r} is not one of 't', 'bootstrap'")


# --- the difference of two groups ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its Welch t-interval and two-sided p-value; low/high/p_value are None when a group
    has fewer than 2 values. The interval excludes 0 exactly when p_value < 1 - level."""
    difference: float
    low: float | None
    high: float | None
    df: float | None
    n_a: int
    n_b: int
    p_value: float | None = None

    @property
    def resolved(self) -> bool:
        """True when the interval excludes 0: the sign of the difference holds beyond its interval."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def verdict(self, name_a: str = "a", name_b: str = "b") -> str:
        """'a > b', 'a < b', or 'a vs b: not resolved' (with why, when there is no interval)."""
        if self.low is None:
            return f"{name_a} vs {name_b}: not resolved (n={self.n_a} and n={self.n_b}; an interval needs 2 each)"
        if not self.resolved:
            return f"{name_a} vs {name_b}: not resolved (the interval includes 0)"
        return f"{name_a} {'>' if self.difference > 0 else '<'} {name_b}"


def difference_interval(a: Iterable[float], b: Iterable[float], level: float = DEFAULT_LEVEL) -> Difference:
    """Welch's t-interval of mean(a) - mean(b): each group keeps its own variance, and the degrees of freedom
    are Welch-Satterthwaite's.

    When both groups show no spread at all (e.g. every seed at chance), the interval is the point itself.
    """
    a, b = _finite_values(a), _finite_values(b)
    difference = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(difference, None, None, None, len(a), len(b))
    share_a, share_b = sample_variance(a) / len(a), sample_variance(b) / len(b)
    if share_a + share_b == 0.0:  # no spread at all: a difference is certain, no difference is certain too
        return Difference(difference, difference, difference, math.inf, len(a), len(b),
                          0.0 if difference != 0 else 1.0)
    with warnings.catch_warnings():
        # seeds equal to the last digits make scipy warn of precision loss; the interval is still that of the values
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(a, b, equal_var=False)
    interval = welch.confidence_interval(level)
    return Difference(difference, float(interval.low), float(interval.high), float(welch.df), len(a), len(b),
                      float(welch.pvalue))


def holds_beyond_interval(a: Iterable[float], b: Iterable[float], level: float = DEFAULT_LEVEL) -> bool:
    """Whether mean(a) - mean(b) keeps its sign across its Welch t-interval."""
    return difference_interval(a, b, level).resolved


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: with the m p-values sorted, the i-th smallest
    becomes max over j <= i of min(1, (m - j + 1) · p_(j)). A test holds at family-wise error α when its adjusted
    p-value is at most α (Holm 1979; no assumption on how the tests depend on each other)."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [0.0] * len(p_values)
    running_max = 0.0
    for rank, index in enumerate(order):
        running_max = max(running_max, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running_max
    return adjusted
