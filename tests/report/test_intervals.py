"""Intervals over seeds: the t quantile against published tables and closed forms, the intervals against direct
computation, Welch's interval against the Welch-Satterthwaite formula with a numerically integrated t density."""
import itertools
import math
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bnexp.report.intervals import (bootstrap_interval, difference_interval, holds_beyond_interval, mean_interval,
                                    student_t_cdf, student_t_quantile, t_interval)


# two-sided 95% critical values t(0.975, df), as printed in standard t tables (3 decimals)
T_TABLE_0975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042,
                120: 1.980}


@pytest.mark.parametrize("df, expected", sorted(T_TABLE_0975.items()))
def test_t_quantile_matches_the_published_table(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_other_levels_and_limits():
    assert student_t_quantile(0.95, 5) == pytest.approx(2.015, abs=5e-4)   # one-sided 95%, df 5
    assert student_t_quantile(0.995, 3) == pytest.approx(5.841, abs=5e-4)  # two-sided 99%, df 3
    assert student_t_quantile(0.975, 1e7) == pytest.approx(1.95996, abs=1e-4)  # the normal limit
    assert student_t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert student_t_quantile(0.5, 7) == 0.0
    # df = 1 is the Cauchy distribution, whose quantile has a closed form
    assert student_t_quantile(0.9, 1) == pytest.approx(math.tan(math.pi * 0.4), rel=1e-9)


def _t_density(t, df):
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) \
        * (1 + t * t / df) ** (-(df + 1) / 2)


@pytest.mark.parametrize("df", [1, 2.5, 7, 40])
@pytest.mark.parametrize("t", [-3.0, -0.4, 0.0, 1.0, 2.2])
def test_t_cdf_matches_numerical_integration_of_the_density(t, df):
    # Simpson's rule from 0 to t, plus the 1/2 below 0
    steps = 2000
    width = t / steps
    integral = _t_density(0, df) + _t_density(t, df)
    integral += sum((4 if k % 2 else 2) * _t_density(k * width, df) for k in range(1, steps))
    assert student_t_cdf(t, df) == pytest.approx(0.5 + integral * width / 3, abs=1e-9)


def t_quantile_closed_form(p: float, df: int) -> float:
    """The t quantile where it has a closed form: df 1 (Cauchy), 2 and 4 (solving the cdf's polynomial)."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    if df == 4:
        alpha = 4 * p * (1 - p)
        root = math.sqrt(math.cos(math.acos(math.sqrt(alpha)) / 3) / math.sqrt(alpha) - 1)
        return math.copysign(2 * root, p - 0.5)
    raise ValueError(df)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.3, 0.025])
def test_t_quantile_matches_its_closed_forms(p, df):
    assert student_t_quantile(p, df) == pytest.approx(t_quantile_closed_form(p, df), rel=1e-12)


def test_t_quantile_at_the_levels_the_report_uses():
    # t(0.975, 2) is 0.95 / √0.04875 exactly; 4.302652729749464 to double precision
    assert student_t_quantile(0.975, 2) == pytest.approx(4.302652729749464, rel=1e-14)
    for bad_p, bad_df in ((0.0, 3), (1.0, 3), (0.5, 0), (0.5, -1)):
        with pytest.raises(ValueError):
            student_t_quantile(bad_p, bad_df)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_t_interval_half_width_uses_the_exact_quantile(n):
    generator = random.Random(n)
    values = [generator.uniform(0.1, 0.9) for _ in range(n)]
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_closed_form(0.975, n - 1) * sd / math.sqrt(n)
    interval = t_interval(values)
    assert (interval.low, interval.high) == pytest.approx((mean - half, mean + half), rel=1e-12)


def simpson_t_cdf(t: float, df: float, steps: int = 2000) -> float:
    """P(T <= t) by Simpson's rule on the t density from 0 to t: independent of any library's t distribution."""
    width = t / steps
    integral = _t_density(0, df) + _t_density(t, df)
    integral += sum((4 if k % 2 else 2) * _t_density(k * width, df) for k in range(1, steps))
    return 0.5 + integral * width / 3


samples = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=7)


@settings(max_examples=40, deadline=None)
@given(a=samples, b=samples, level=st.sampled_from([0.9, 0.95, 0.99]))
def test_welch_interval_covers_what_the_welch_formula_says(a, b, level):
    """The interval is mean(a) - mean(b) ± q · se, se and df by Welch-Satterthwaite, and q the t quantile whose
    cdf (integrated numerically here) is (1 + level) / 2."""
    def share(values):  # s² / n
        mean = math.fsum(values) / len(values)
        return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)

    share_a, share_b = share(a), share(b)
    assume(share_a + share_b > 1e-12)  # no spread at all is the point interval, tested apart
    se = math.sqrt(share_a + share_b)
    df = (share_a + share_b) ** 2 / (share_a ** 2 / (len(a) - 1) + share_b ** 2 / (len(b) - 1))
    difference = difference_interval(a, b, level)
    assert difference.df == pytest.approx(df, rel=1e-9)
    centre = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    assert (difference.low + difference.high) / 2 == pytest.approx(centre, abs=1e-12)
    quantile = (difference.high - difference.low) / 2 / se
    assert simpson_t_cdf(quantile, df) == pytest.approx((1 + level) / 2, abs=1e-9)
    # the p-value is the two tails beyond the t statistic, and it agrees with the interval
    statistic = min(abs(centre) / se, 40.0)  # Simpson's rule keeps 1e-9 up to 40; beyond, a bound
    tails = 2 * (1 - simpson_t_cdf(statistic, df, steps=4000))
    if abs(centre) / se <= 40.0:
        assert difference.p_value == pytest.approx(tails, abs=1e-9)
    else:
        assert difference.p_value <= tails
    if abs(difference.p_value - (1 - level)) > 1e-9:
        assert difference.resolved == (difference.p_value < 1 - level)


@settings(max_examples=60, deadline=None)
@given(p=st.floats(0.001, 0.999), df=st.floats(0.5, 200))
def test_t_quantile_inverts_the_cdf(p, df):
    assert student_t_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_interval_against_direct_computation():
    values = [0.52, 0.55, 0.61]
    interval = t_interval(values)
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2) to 6 decimals
    assert interval.mean == pytest.approx(mean)
    assert (interval.low, interval.high) == pytest.approx((mean - half, mean + half), rel=1e-6)
    assert interval.n == 3 and interval.method == "t" and interval.has_interval
    assert interval.format(scale=100) == f"{mean * 100:.1f} [{(mean - half) * 100:.1f}, {(mean + half) * 100:.1f}]"
    wider = t_interval(values, level=0.99)
    assert wider.low < interval.low and wider.high > interval.high


def test_one_value_gives_no_interval_and_says_so():
    for method in ("t", "bootstrap"):
        interval = mean_interval([0.42], method)
        assert (interval.mean, interval.n, interval.low, interval.high) == (0.42, 1, None, None)
        assert not interval.has_interval and interval.half_width is None
        assert interval.format(scale=100, unit="%") == "42.0% (n=1, no interval)"
    with pytest.raises(ValueError, match="no values"):
        t_interval([])
    with pytest.raises(ValueError, match="finite"):
        t_interval([0.1, math.nan])
    with pytest.raises(ValueError, match="not one of"):
        mean_interval([0.1, 0.2], "jackknife")


def test_bootstrap_enumerates_small_samples_exactly():
    values = [0.0, 0.3, 1.0]
    # all 27 resamples with replacement, their means sorted, then the 2.5% and 97.5% points interpolated
    means = sorted(sum(r) / 3 for r in itertools.product(values, repeat=3))
    position_low, position_high = 0.025 * 26, 0.975 * 26
    low = means[0] + (position_low - 0) * (means[1] - means[0])
    high = means[25] + (position_high - 25) * (means[26] - means[25])
    interval = bootstrap_interval(values)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    assert interval.method == "bootstrap"


def test_bootstrap_by_sampling_is_reproducible_and_near_the_normal_interval():
    generator = random.Random(7)
    values = [generator.gauss(0.5, 0.05) for _ in range(41)]  # 41^41 resamples: too many to enumerate
    first, again = bootstrap_interval(values, seed=3), bootstrap_interval(values, seed=3)
    assert (first.low, first.high) == (again.low, again.high)
    t_based = t_interval(values)
    # with 41 values the bootstrap interval is close to the t interval (within a fifth of its width)
    assert first.low == pytest.approx(t_based.low, abs=0.2 * t_based.half_width)
    assert first.high == pytest.approx(t_based.high, abs=0.2 * t_based.half_width)


def test_welch_difference_against_direct_computation():
    a, b = [0.55, 0.56, 0.54, 0.57], [0.30, 0.41, 0.35]
    mean_a, mean_b = sum(a) / 4, sum(b) / 3
    var_a = sum((v - mean_a) ** 2 for v in a) / 3
    var_b = sum((v - mean_b) ** 2 for v in b) / 2
    share_a, share_b = var_a / 4, var_b / 3
    df = (share_a + share_b) ** 2 / (share_a ** 2 / 3 + share_b ** 2 / 2)
    difference = difference_interval(a, b)
    assert difference.difference == pytest.approx(mean_a - mean_b)
    assert difference.df == pytest.approx(df)
    half = student_t_quantile(0.975, df) * math.sqrt(share_a + share_b)
    assert (difference.low, difference.high) == pytest.approx((mean_a - mean_b - half, mean_a - mean_b + half))
    assert 2 < df < 3  # dominated by b's variance: about b's n - 1 degrees of freedom
    assert difference.resolved and holds_beyond_interval(a, b)
    assert difference.verdict("correct_bn", "shared_bn") == "correct_bn > shared_bn"
    assert difference_interval(b, a).verdict("shared_bn", "correct_bn") == "shared_bn < correct_bn"


def test_overlapping_groups_are_not_resolved():
    a, b = [0.50, 0.56, 0.44], [0.47, 0.53, 0.52]
    difference = difference_interval(a, b)
    assert difference.low < 0 < difference.high
    assert not difference.resolved and not holds_beyond_interval(a, b)
    assert difference.verdict("g2", "g4") == "g2 vs g4: not resolved (the interval includes 0)"


def test_difference_needs_two_values_per_group_and_handles_no_spread():
    single = difference_interval([0.5], [0.1, 0.2, 0.3])
    assert single.low is None and not single.resolved
    assert "not resolved" in single.verdict() and "n=1" in single.verdict()
    # every seed at the same value in both groups: the interval is the point, and a non-zero point is resolved
    flat = difference_interval([0.125, 0.125, 0.125], [0.25, 0.25, 0.25])
    assert flat.low == flat.high == -0.125 and flat.resolved and flat.p_value == 0.0
    assert not difference_interval([0.1, 0.1], [0.1, 0.1]).resolved
    assert difference_interval([0.1, 0.1], [0.1, 0.1]).p_value == 1.0
    assert single.p_value is None
    # one group without spread: Welch's degrees of freedom fall back to the other group's n - 1
    assert difference_interval([0.5, 0.5, 0.5], [0.3, 0.2, 0.25]).df == pytest.approx(2)
