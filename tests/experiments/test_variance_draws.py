"""The draws of the gradient-variance study against closed forms on a linear model: nested
mean gradients under shared, flipout and independent noise (`DrawNoise`).

Closed forms. Take y_n = W_n x_n with W_n = W̄ ∘ (1 + U_n), U entries N(0, σ²), and the linear
loss L = (1/N) Σ_n a_nᵀ y_n with the data (a_n, x_n) held fixed. Writing A_n = a_n x_nᵀ, the
gradient w.r.t. W̄ is g = (1/N) Σ_n A_n ∘ (1 + U_n), so per weight ij:

* shared (U_n = U):                 Var g_ij = σ² Ā_ij²,  Ā = (1/N) Σ_n A_n  — no 1/N decay;
* independent (U_n i.i.d.):         Var g_ij = σ² Σ_n A_nij² / N²;
* flipout (U_n = U ∘ r_n s_nᵀ):     g_ij − Ā_ij = U_ij (1/N) Σ_n A_nij r_ni s_nj, and the
  ε_n = r_ni s_nj are i.i.d. ±1 independent of U, so Var g_ij = σ² Σ_n A_nij² / N²:
  exactly the independent value.
"""

from __future__ import annotations

import pytest
import torch

from lm_flipout.experiments.variance.gradients import DrawNoise, under_noise
from lm_flipout.experiments.variance.statistics import (
    block_variance,
    loglog_slope,
    nested_mean_gradients,
)
from lm_flipout.nn import NoiseSample, perturbed_linear

OUT, IN, SIGMA = 5, 4, 0.7
SIZES = (1, 2, 4, 8, 16, 32, 64)


def linear_problem(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean weight (OUT, IN), inputs x (n, IN) and loss directions a (n, OUT). Both have a
    common part, so Ā stays away from zero and shared noise keeps a floor."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(OUT, IN, generator=gen)
    x = 1.0 + torch.randn(n, IN, generator=gen)
    a = 1.0 + 0.5 * torch.randn(n, OUT, generator=gen)
    return weight, x, a


def linear_chunk_gradient(weight: torch.Tensor, x: torch.Tensor, a: torch.Tensor):
    """Gradient w.r.t. W̄ of Σ_{n in [start, end)} a_nᵀ W_n x_n under the chunk's sample."""
    weight = weight.clone().requires_grad_(True)

    def gradient(start: int, end: int, sample: NoiseSample) -> torch.Tensor:
        y = perturbed_linear(x[start:end], weight, sample)
        (grad,) = torch.autograd.grad((a[start:end] * y).sum(), weight)
        return grad

    return gradient


def closed_form(estimator: str, weight, x, a, n: int) -> float:
    """Per-weight variance of the batch-n gradient averaged over the weights (module doc)."""
    outer = a[:n, :, None] * x[:n, None, :]  # A_n, (n, OUT, IN)
    if estimator == "shared":
        per_weight = SIGMA**2 * outer.mean(0) ** 2
    else:
        per_weight = SIGMA**2 * (outer**2).sum(0) / n**2
    return per_weight.mean().item()


def estimated(estimator: str, repeats: int, sub_batch: int = 16) -> dict[int, float]:
    weight, x, a = linear_problem(max(SIZES))
    gen = torch.Generator().manual_seed(1)
    gradient = linear_chunk_gradient(weight, x, a)
    draws = torch.stack([
        nested_mean_gradients(under_noise(gradient, DrawNoise(estimator, SIGMA, weight, gen)),
                              SIZES, sub_batch)
        for _ in range(repeats)
    ])
    return {n: block_variance(draws[:, k]).variance
            for k, n in enumerate(SIZES)}


@pytest.mark.parametrize("estimator", ["shared", "flipout", "independent"])
def test_variance_matches_closed_form(estimator):
    measured = estimated(estimator, repeats=300)
    weight, x, a = linear_problem(max(SIZES))
    for n in SIZES:
        expected = closed_form(estimator, weight, x, a, n)
        assert measured[n] == pytest.approx(expected, rel=0.15), (estimator, n)


def test_closed_forms_separate_the_estimators():
    """The case is informative: shared has a floor, flipout/independent fall as 1/N."""
    weight, x, a = linear_problem(max(SIZES))
    shared = [closed_form("shared", weight, x, a, n) for n in SIZES]
    flipout = [closed_form("flipout", weight, x, a, n) for n in SIZES]
    assert shared[-1] > 10 * flipout[-1]
    assert flipout[-1] < flipout[0] / 20
    assert loglog_slope(SIZES[-4:], shared[-4:]) > -0.3


@pytest.mark.parametrize("estimator", ["shared", "flipout", "independent"])
def test_without_noise_every_draw_is_the_exact_mean_gradient(estimator):
    weight, x, a = linear_problem(max(SIZES))
    gen = torch.Generator().manual_seed(0)
    noise = DrawNoise(estimator, 0.0, weight, gen)
    means = nested_mean_gradients(under_noise(linear_chunk_gradient(weight, x, a), noise), SIZES,
                                  sub_batch=8)
    for k, n in enumerate(SIZES):
        exact = (a[:n, :, None] * x[:n, None, :]).mean(0)
        torch.testing.assert_close(means[k], exact, rtol=1e-5, atol=1e-6)


def test_flipout_sub_batches_share_the_base_perturbation():
    gen = torch.Generator().manual_seed(0)
    weight = torch.ones(OUT, IN)
    noise = DrawNoise("flipout", 1.0, weight, gen)
    first, second = noise.chunk(3), noise.chunk(3)
    assert first.unit is second.unit
    assert not torch.equal(first.out_signs, second.out_signs)
    shared = DrawNoise("shared", 1.0, weight, gen)
    assert shared.chunk(2).unit is shared.chunk(5).unit
    assert DrawNoise("independent", 1.0, weight, gen).chunk(3).unit.shape == (3, OUT, IN)
