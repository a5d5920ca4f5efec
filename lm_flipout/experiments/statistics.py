"""Statistics over the seeds of a suite row: mean, sample standard deviation, the Student-t
95% confidence interval of the mean, and paired differences between two rows over the seeds
both ran, with a verdict (lower perplexity or bits per character is better)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PairedDifference:
    """``row - baseline`` over the seeds both have: the estimate of the mean difference, the
    baseline's mean over those seeds (for a relative figure) and the verdict."""

    seeds: tuple[Optional[int], ...]
    difference: Estimate
    baseline_mean: float
    verdict: str  # "better" | "worse" | "not resolved at N seeds"


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
                            verdict(difference))
