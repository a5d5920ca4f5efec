"""The statistics of a suite over seeds, against numbers worked out by hand: mean, sample
standard deviation, the Student-t 95% interval, paired differences and their verdicts; and
the t quantiles against a numerical integration of Student's t density; the t test's
p-value against closed forms, and Holm's correction worked out by hand."""

from __future__ import annotations

import math

import pytest

from lm_flipout.experiments.statistics import (
    corrected,
    estimate,
    holm,
    mean,
    paired_difference,
    sample_sd,
    t_quantile_975,
    t_two_sided_p,
)


def test_mean_and_sample_standard_deviation_by_hand() -> None:
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    # sum 40 over 8 values; squared deviations 9+1+1+1+0+0+4+16 = 32, divided by n-1 = 7
    assert mean(values) == 5.0
    assert sample_sd(values) == pytest.approx(math.sqrt(32 / 7))
    with pytest.raises(ValueError):
        sample_sd([1.0])
    with pytest.raises(ValueError):
        mean([])


def test_t_interval_by_hand() -> None:
    est = estimate([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    half = 2.365 * math.sqrt(32 / 7) / math.sqrt(8)  # t(0.975, 7) = 2.365
    assert (est.n, est.mean) == (8, 5.0)
    assert (est.low, est.high) == (pytest.approx(5.0 - half), pytest.approx(5.0 + half))
    assert half == pytest.approx(1.78777, abs=1e-5)
    # Two values 1 and 3: sd √2, standard error 1, so the half-width is t(0.975, 1) itself.
    two = estimate([1.0, 3.0])
    assert two.sd == pytest.approx(math.sqrt(2))
    assert (two.low, two.high) == (pytest.approx(2.0 - 12.706), pytest.approx(2.0 + 12.706))
    # One value: no spread, no interval.
    one = estimate([61.5])
    assert (one.n, one.mean, one.sd, one.low, one.high) == (1, 61.5, None, None, None)


def t_cdf(t: float, df: int, steps: int = 4000) -> float:
    """P(T <= t) for t > 0: 1/2 plus Simpson's rule over Student's t density on [0, t]."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    h = t / steps
    inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + h / 3 * (density(0.0) + inner + density(t))


@pytest.mark.parametrize("df", [*range(1, 31), 31, 40, 60, 120, 1000])
def test_t_quantiles_leave_two_and_a_half_percent_above(df: int) -> None:
    # The table has three decimals: at most 0.0005 off in t, under 5e-5 in probability.
    assert t_cdf(t_quantile_975(df), df) == pytest.approx(0.975, abs=5e-5)


def test_t_quantile_tends_to_the_normal_one() -> None:
    assert t_quantile_975(10**7) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_paired_difference_better_worse_and_unresolved_by_hand() -> None:
    row = {1: 80.0, 2: 82.0, 3: 81.0}
    base = {1: 85.0, 2: 86.5, 3: 84.0, 4: 90.0}  # seed 4 has no partner: left out
    better = paired_difference(row, base)
    # differences -5, -4.5, -3: mean -12.5/3, squared deviations sum 13/6, sd √(13/12)
    sd = math.sqrt(13 / 12)
    half = 4.303 * sd / math.sqrt(3)  # t(0.975, 2) = 4.303
    assert better.seeds == (1, 2, 3)
    assert better.difference.mean == pytest.approx(-12.5 / 3)
    assert better.difference.sd == pytest.approx(sd)
    assert better.difference.low == pytest.approx(-12.5 / 3 - half)
    assert better.difference.high == pytest.approx(-12.5 / 3 + half)
    assert better.difference.high == pytest.approx(-1.58089, abs=1e-5)
    assert better.baseline_mean == pytest.approx(255.5 / 3)
    assert better.verdict == "better"

    worse = paired_difference(base, row)
    assert worse.difference.low == pytest.approx(12.5 / 3 - half)
    assert worse.verdict == "worse"

    # differences -1 and +1: the interval 0 ± 12.706 holds zero
    unresolved = paired_difference({1: 79.0, 2: 81.0}, {1: 80.0, 2: 80.0})
    assert unresolved.difference.mean == 0.0
    assert unresolved.verdict == "not resolved at 2 seeds"

    single = paired_difference({2: 70.0, 3: 71.0}, {2: 80.0})
    assert single.seeds == (2,) and single.difference.mean == -10.0
    assert single.difference.low is None
    assert single.verdict == "not resolved at 1 seed"

    assert paired_difference({1: 70.0}, {2: 80.0}) is None
    # A row without seeds (the recipe's own seed) pairs with another row without seeds.
    assert paired_difference({None: 70.0}, {None: 80.0}).difference.mean == -10.0


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, -4.0, 17.0])
def test_t_test_p_value_against_closed_forms(t: float) -> None:
    # df = 1 is the Cauchy distribution: P(|T| >= t) = 1 - (2/pi) atan|t|;
    # df = 2: P(|T| >= t) = 1 - |t| / sqrt(2 + t^2).
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), abs=1e-12)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-12)


def test_t_test_p_value_at_the_tabled_quantiles_is_five_percent() -> None:
    for df in (1, 3, 7, 30, 60):  # the table has three decimals: p within about 1e-4
        assert t_two_sided_p(t_quantile_975(df), df) == pytest.approx(0.05, abs=1e-4)


def test_holm_adjusted_p_values_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 of m = 3: 3 * 0.01 = 0.03; 2 * 0.03 = 0.06;
    # 1 * 0.04 = 0.04, raised to the running maximum 0.06. None is not counted in m.
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_a_verdict_holds_after_holms_correction_over_the_rows() -> None:
    base = {1: 100.0, 2: 101.0, 3: 99.0}
    diffs = {"a": (-2.2, -2.0, -1.8), "b": (-1.0, -2.0, -3.0), "c": (-1.3, -1.0, -0.7)}
    rows = {name: paired_difference({s: base[s] + d for s, d in zip((1, 2, 3), ds)}, base)
            for name, ds in diffs.items()}
    # By hand, df = 2 so p = 1 - |t| / sqrt(2 + t^2), t = mean / (sd / sqrt 3):
    # a: t = -2 / (0.2 / √3); b: t = -2 / (1 / √3); c: t = -1 / (0.3 / √3).
    p = {name: 1 - abs(t) / math.sqrt(2 + t * t) for name, t in (
        ("a", -2 / (0.2 / math.sqrt(3))), ("b", -2 / (1 / math.sqrt(3))),
        ("c", -1 / (0.3 / math.sqrt(3))))}
    assert p["a"] < p["c"] < 0.05 < p["b"]
    for name in rows:
        assert rows[name].p_value == pytest.approx(p[name], abs=1e-9)
    assert [rows[n].verdict for n in "abc"] == ["better", "not resolved at 3 seeds", "better"]
    # Holm over three: a 3·p_a; c max(3·p_a, 2·p_c) = 2·p_c > 0.05; b max(2·p_c, p_b) = p_b.
    a, b, c = corrected([rows["a"], rows["b"], rows["c"]])
    assert (a.holm_p, c.holm_p, b.holm_p) == pytest.approx((3 * p["a"], 2 * p["c"], p["b"]))
    assert a.verdict == "better" and b.verdict == "not resolved at 3 seeds"
    assert c.verdict == "not resolved after correction (better per comparison)"
    assert (c.difference.low, c.difference.high) == (rows["c"].difference.low,
                                                      rows["c"].difference.high)
    # A family of one: no correction, the interval's verdict stands.
    [alone] = corrected([rows["c"]])
    assert alone.verdict == "better" and alone.holm_p == pytest.approx(p["c"])
