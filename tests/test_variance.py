"""The gradient-variance experiment (issue 8): the estimator against closed forms on a linear
model, the command end to end on a tiny trained checkpoint, and its error messages.

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

import csv
import json
import math

import pytest
import torch
from helpers import tiny_recipe

from lm_flipout.config import Recipe, from_dict
from lm_flipout.errors import UserError
from lm_flipout.experiments import variance
from lm_flipout.experiments.variance import (
    DrawNoise,
    block_variance,
    chunk_bounds,
    loglog_slope,
    nested_mean_gradients,
    parse_batch_sizes,
    parse_estimators,
)
from lm_flipout.nn import NoiseSample, perturbed_linear
from lm_flipout.training import Trainer

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
    draws = torch.stack([
        nested_mean_gradients(linear_chunk_gradient(weight, x, a),
                              DrawNoise(estimator, SIGMA, (OUT, IN), gen), SIZES, sub_batch)
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
    means = nested_mean_gradients(linear_chunk_gradient(weight, x, a),
                                  DrawNoise(estimator, 0.0, (OUT, IN), gen), SIZES, sub_batch=8)
    for k, n in enumerate(SIZES):
        exact = (a[:n, :, None] * x[:n, None, :]).mean(0)
        torch.testing.assert_close(means[k], exact, rtol=1e-5, atol=1e-6)


def test_flipout_sub_batches_share_the_base_perturbation():
    gen = torch.Generator().manual_seed(0)
    noise = DrawNoise("flipout", 1.0, (OUT, IN), gen)
    first, second = noise.chunk(3), noise.chunk(3)
    assert first.unit is second.unit
    assert not torch.equal(first.out_signs, second.out_signs)
    shared = DrawNoise("shared", 1.0, (OUT, IN), gen)
    assert shared.chunk(2).unit is shared.chunk(5).unit
    assert DrawNoise("independent", 1.0, (OUT, IN), gen).chunk(3).unit.shape == (3, OUT, IN)


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
        assert variance.student_t_quantile(0.975, dof) == pytest.approx(expected, rel=2e-3)


def test_chunks_and_argument_parsing():
    assert chunk_bounds((1, 2, 4, 8, 16), sub_batch=4) == [(0, 1), (1, 2), (2, 4), (4, 8),
                                                            (8, 12), (12, 16)]
    assert parse_batch_sizes("1,2,4,...,64") == (1, 2, 4, 8, 16, 32, 64)
    assert parse_batch_sizes("1,2,...,100") == (1, 2, 4, 8, 16, 32, 64, 100)
    assert parse_batch_sizes("3, 10") == (3, 10)
    assert parse_batch_sizes("1,3,...,30") == (1, 3, 9, 27, 30)
    assert parse_estimators("independent,shared") == ("shared", "independent")
    for bad in ("4,2", "1", "0,1", "a,b", "1,...,8", "2,3,...,8", "1,2,...,", "1,2,...,8,16"):
        with pytest.raises(UserError, match="--batch-sizes"):
            parse_batch_sizes(bad)
    with pytest.raises(UserError, match="unknown estimator 'dropout'"):
        parse_estimators("shared,dropout")
    assert math.isclose(loglog_slope([1, 2, 4], [8.0, 4.0, 2.0]), -1.0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """best.pt of a two-layer character model trained for one epoch on the tiny corpus."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("variance")
    recipe = tiny_recipe(root, model={"num_layers": 2, "tie_weights": False},
                         train={"epochs": 1})
    Trainer(from_dict(Recipe, recipe, "test recipe"), root / "runs" / "run",
            echo=lambda _: None).run()
    yield root / "runs" / "run" / "best.pt"
    torch.set_num_threads(before)


def test_command_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = variance.main([str(tiny_checkpoint), "--batch-sizes", "1,2,4,8", "--repeats", "4",
                          "--sub-batch", "4", "--max-independent", "4", "--out", str(out),
                          "--wandb-mode", "disabled", "--no-progress", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    with (out / "variance.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["estimator", "batch_size", "gate", "variance", "ci_low", "ci_high"]
    keys = {(r["estimator"], int(r["batch_size"]), r["gate"]) for r in rows}
    expected = {(e, n, g) for e in ("shared", "flipout") for n in (1, 2, 4, 8)
                for g in ("input", "forget", "cell", "output")}
    expected |= {("independent", n, g) for n in (1, 2, 4)
                 for g in ("input", "forget", "cell", "output")}
    assert keys == expected and len(rows) == len(expected)
    for row in rows:
        assert 0 <= float(row["ci_low"]) <= float(row["variance"]) <= float(row["ci_high"])
    assert (out / "variance.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "slopes.json").read_text())
    assert set(summary["slope"]) == {"shared", "flipout", "independent"}
    assert set(summary["slope"]["flipout"]) == {"input", "forget", "cell", "output"}
    assert summary["slope_top_batch_sizes"]["shared"] == [1, 2, 4, 8]
    assert set(summary["flipout_over_independent"]["input"]) == {"1", "2", "4"}
    assert not (out / "wandb").exists()


@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "does not exist"),
    (["{ckpt}", "--batch-sizes", "8,4"], "strictly increasing"),
    (["{ckpt}", "--estimators", "shared,magic"], "unknown estimator 'magic'"),
    (["{ckpt}", "--repeats", "2"], "--repeats=2 must be at least 3"),
])
def test_user_errors_are_one_line_messages(args, message, tiny_checkpoint, tmp_path, capsys):
    args = [a.replace("{ckpt}", str(tiny_checkpoint)) for a in args]
    assert variance.main([*args, "--out", str(tmp_path), "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_corrupt_checkpoint_is_a_user_error(tmp_path, capsys):
    broken = tmp_path / "best.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert variance.main([str(broken), "--wandb-mode", "disabled", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "best.pt" in err
