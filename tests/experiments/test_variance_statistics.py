"""The statistics of the gradient-variance study: the averaged per-weight variance and its
jackknife interval, Student's t quantiles, sub-batch bounds and log-log slopes."""

from __future__ import annotations

import math

import pytest
import torch

from lm_flipout.experiments.variance.statistics import (
    block_variance,
    chunk_bounds,
    loglog_slope,
    student_t_quantile,
)


def test_block_variance_is_the_averaged_unbiased_variance():
    gen = torch.Generator().manual_seed(3)
    draws = 2.0 * torch.randn(400, 30, generator=gen) + 100.0  # large mean: no cancellation
    estimate = block_variance(draws)
    assert estimate.variance == pytest.approx(draws.double().var(0).mean().item(), rel=1e-9)
    assert estimate.ci_low < 4.0 < estimate.ci_high
    assert estimate.ci_high - estimate.ci_low < 1.0


def test_confidence_interval_covers_the_truth_at_small_repeats():
    """Few draws of strongly correlated weights (as gradients are): the 95% interval should
    still hold the true averaged variance in about 95% of experiments."""
    gen = torch.Generator().manual_seed(4)
    trials, covered = 300, 0
    for _ in range(trials):
        basis = torch.randn(4, 200, generator=gen)  # 200 weights driven by 4 directions
        scales = 0.1 + torch.rand(4, generator=gen)
        truth = (basis**2 * scales[:, None] ** 2).sum(0).mean().item()
        draws = (torch.randn(8, 4, generator=gen) * scales) @ basis
        estimate = block_variance(draws)
        covered += estimate.ci_low <= truth <= estimate.ci_high
    assert covered / trials > 0.9


def test_student_t_quantile():
    for dof, expected in ((3, 3.182), (7, 2.365), (19, 2.093), (10_000, 1.960)):
        assert student_t_quantile(0.975, dof) == pytest.approx(expected, rel=2e-3)


def test_chunk_bounds_and_slopes():
    assert chunk_bounds((1, 2, 4, 8, 16), sub_batch=4) == [(0, 1), (1, 2), (2, 4), (4, 8),
                                                            (8, 12), (12, 16)]
    assert math.isclose(loglog_slope([1, 2, 4], [8.0, 4.0, 2.0]), -1.0)

