"""Statistics over the seeds of a suite row: mean, sample standard deviation, the Student-t
95% confidence interval of the mean, and paired differences between two rows over the seeds
both ran, with a verdict (lower perplexity or bits per character is better). When several
rows are compared with one baseline, Holm's method over those comparisons keeps the chance
of any false verdict among them at 5%."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Optional

# Upper 0.975 quantiles of Student's t distribution for 1..30 degrees of freedom, i.e. the
# factor of a two-sided 95% interval: NIST/SEMATECH e-Handbook of Statistical Methods,
# Sec. 1.3.6.7.2, "Critical values of the Student's t distribution".
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959963984540054  # the standard normal's 0.975 quantile, the limit of large df


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom: the table above for
    df <= 30, beyond it the Cornish-Fisher expansion in 1/df of Abramowitz & Stegun (1964),
    formula 26.7.5 (error below 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` values, their sample standard deviation and the 95% t interval of
    the mean; ``sd`` and the interval are None for a single value."""

    n: int
    mean: float
    sd: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("the mean of no values is undefined")
    return math.fsum(values) / len(values)


def sample_sd(values: Sequence[float]) -> float:
    """The standard deviation with Bessel's correction (divides by n - 1)."""
    if len(values) < 2:
        raise ValueError("a sample standard deviation needs at least two values")
    centre = mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (len(values) - 1))


def estimate(values: Sequence[float]) -> Estimate:
    """Mean, sample standard deviation and the interval mean ± t(0.975, n-1) · sd / √n."""
    centre = mean(values)
    if len(values) < 2:
        return Estimate(len(values), centre)
    sd = sample_sd(values)
    half = t_quantile_975(len(values) - 1) * sd / math.sqrt(len(values))
    return Estimate(len(values), centre, sd, centre - half, centre + half)


ALPHA = 0.05  # the error rate of a verdict: per comparison, or family-wise after Holm


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction
    (DLMF 8.17.22) evaluated with Lentz's method; I_x(a, b) = 1 - I_{1-x}(b, a) (DLMF 8.17.4)
    serves where the fraction converges slowly."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], not {x}")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    log_front = (a * math.log(x) + b * math.log1p(-x) - math.log(a)
                 - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))
    tiny, fraction, c, d = 1e-300, 1.0, 1.0, 0.0  # 1 + d1/(1 + d2/(1 + ...))
    for j in range(1, 1000):
        m = j // 2
        if j % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) / fraction


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)
    (Abramowitz & Stegun 1964, 26.7.1 with 26.5.27)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / (df + t * t), df / 2, 0.5)


def holm(p_values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's (1979) step-down adjusted p-values: the k-th smallest of m becomes
    max over j <= k of min(1, (m - j + 1) p_(j)); rejecting where the adjusted value is below
    α keeps the family-wise error at α. None (no test possible) stays None and is not
    counted in m."""
    order = sorted((i for i, p in enumerate(p_values) if p is not None),
                   key=lambda i: p_values[i])
    adjusted: list[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PairedDifference:
    """``row - baseline`` over the seeds both have: the estimate of the mean difference, the
    baseline's mean over those seeds (for a relative figure), the paired t test's p-value
    (None for a single pair), the p-value after Holm's correction where the difference is
    one of several compared with the baseline, and the verdict."""

    seeds: tuple[Optional[int], ...]
    difference: Estimate
    baseline_mean: float
    verdict: str  # "better" | "worse" | "not resolved at N seeds" | "... after correction"
    p_value: Optional[float] = None
    holm_p: Optional[float] = None


def paired_p_value(difference: Estimate) -> Optional[float]:
    """The two-sided p-value of the paired t test of a zero mean difference."""
    if difference.sd is None:
        return None
    if difference.sd == 0:
        return 1.0 if difference.mean == 0 else 0.0
    t = difference.mean / (difference.sd / math.sqrt(difference.n))
    return t_two_sided_p(t, difference.n - 1)


def corrected(differences: Sequence[PairedDifference]) -> list[PairedDifference]:
    """The differences of several rows to one baseline (one metric), each with its Holm
    p-value and a verdict that holds after the correction: better or worse only where the
    adjusted p-value is below `ALPHA`."""
    adjusted = holm([diff.p_value for diff in differences])
    family = sum(p is not None for p in adjusted)
    out = []
    for diff, holm_p in zip(differences, adjusted):
        result = diff.verdict  # alone (a family of one) the interval's verdict stands
        if family > 1 and holm_p >= ALPHA and result in ("better", "worse"):
            result = f"not resolved after correction ({result} per comparison)"
        out.append(replace(diff, holm_p=holm_p, verdict=result))
    return out


def verdict(difference: Estimate) -> str:
    """Better or worse when the 95% interval of ``row - baseline`` excludes zero (lower is
    better); otherwise, or with a single pair (no interval), not resolved."""
    if difference.high is not None and difference.high < 0:
        return "better"
    if difference.low is not None and difference.low > 0:
        return "worse"
    return f"not resolved at {difference.n} seed{'s' if difference.n != 1 else ''}"


def paired_difference(row: Mapping[Optional[int], float],
                      baseline: Mapping[Optional[int], float]) -> Optional[PairedDifference]:
    """Pair the values of two rows by seed (None: the recipe's own seed); None when they
    share no seed."""
    seeds = tuple(sorted((s for s in row if s in baseline), key=lambda s: -1 if s is None else s))
    if not seeds:
        return None
    difference = estimate([row[s] - baseline[s] for s in seeds])
    return PairedDifference(seeds, difference, mean([baseline[s] for s in seeds]),
                            verdict(difference), paired_p_value(difference))
