"""Statistics on gradient draws: nested means over sub-batches, the per-weight variance with
its jackknife confidence interval, log-log slopes and the summary the paper's claims rest on
(Wen et al. 2018, Figure 1c)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ...errors import UserError
from ...nn.noise import ESTIMATORS

GATES = ("input", "forget", "cell", "output")  # torch.nn.LSTM's row blocks i, f, g, o
SUB_BATCH = 64  # sequences per forward/backward pass, as in the paper


def chunk_bounds(batch_sizes: Sequence[int], sub_batch: int = SUB_BATCH) -> list[tuple[int, int]]:
    """Consecutive [start, end) sub-batches covering the largest batch size, each at most
    ``sub_batch`` long, with every batch size falling on a boundary."""
    largest = max(batch_sizes)
    edges = sorted(set(batch_sizes) | set(range(0, largest, sub_batch)))
    return list(itertools.pairwise(edges))


def nested_mean_gradients(
    chunk_gradient: Callable[[int, int], Tensor],
    batch_sizes: Sequence[int],
    sub_batch: int = SUB_BATCH,
    on_chunk: Optional[Callable[[], None]] = None,
) -> Tensor:
    """One draw: the gradient of the mean loss over the first N sequences for every N in
    ``batch_sizes`` (ascending), stacked as (len(batch_sizes), *weight shape).
    ``chunk_gradient(start, end)`` is the gradient of the summed loss of sequences
    [start, end); it is called once per sub-batch, in order."""
    wanted = set(batch_sizes)
    total: Optional[Tensor] = None
    means = {}
    for start, end in chunk_bounds(batch_sizes, sub_batch):
        grad = chunk_gradient(start, end).detach().double()
        total = grad if total is None else total + grad
        if end in wanted:
            means[end] = (total / end).float()
        if on_chunk is not None:
            on_chunk()
    return torch.stack([means[n] for n in batch_sizes])


@dataclass
class VarianceEstimate:
    """Per-weight variance averaged over a block, with a confidence interval."""

    variance: float
    ci_low: float
    ci_high: float


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t (Cornish-Fisher expansion in 1/dof around the normal quantile;
    within 0.2% for dof >= 3, which is all a confidence interval here needs)."""
    z = torch.special.ndtri(torch.tensor(p, dtype=torch.float64)).item()
    return (z + (z**3 + z) / (4 * dof)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * dof**4))


def block_variance(draws: Tensor, level: float = 0.95) -> VarianceEstimate:
    """The unbiased per-weight variance over R draws (R, ...) averaged over the weights,
    with a jackknife confidence interval.

    The interval is ``v · exp(±t · se)``, se the leave-one-draw-out jackknife standard error
    of log v and t Student's quantile with R−1 degrees of freedom. (A percentile bootstrap
    covers the truth far less often than asked for at the R ≈ 10 affordable here, since a
    resample's variance is biased low by (R−1)/R.) Each weighted variance is
    ``(Σ_r w_r K_rr − wᵀKw) / P · c`` with K the Gram matrix of the centred draws, P the
    number of weights and c the unbiasing factor, so the jackknife costs R quadratic forms.
    """
    repeats = draws.shape[0]
    if repeats < 3:
        raise UserError(
            f"a variance with a confidence interval needs at least 3 draws, got {repeats}."
        )
    flat = draws.reshape(repeats, -1).double()
    flat = flat - flat.mean(0)  # variance is shift-invariant; centring avoids cancellation
    gram = flat @ flat.t()

    def averaged(weights: Tensor, kept: int) -> Tensor:  # weights (B, R), rows sum to 1 → (B,)
        quadratic = torch.einsum("br,rs,bs->b", weights, gram, weights)
        return (weights @ gram.diagonal() - quadratic) * kept / (kept - 1) / flat.shape[1]

    point = averaged(torch.full((1, repeats), 1.0 / repeats, dtype=gram.dtype), repeats)[0].item()
    leave_one_out = (1 - torch.eye(repeats, dtype=gram.dtype)) / (repeats - 1)
    partial = averaged(leave_one_out, repeats - 1)
    if point <= 0 or bool((partial <= 0).any()):  # identical draws: no spread to measure
        return VarianceEstimate(point, math.nan, math.nan)
    logs = partial.log()
    std_error = math.sqrt((repeats - 1) / repeats * ((logs - logs.mean()) ** 2).sum().item())
    half_width = student_t_quantile(0.5 + level / 2, repeats - 1) * std_error
    return VarianceEstimate(point, point * math.exp(-half_width), point * math.exp(half_width))


def loglog_slope(batch_sizes: Sequence[int], variances: Sequence[float]) -> float:
    """Least-squares slope of log(variance) against log(batch size)."""
    x = torch.log(torch.tensor(batch_sizes, dtype=torch.float64))
    y = torch.log(torch.tensor(variances, dtype=torch.float64))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def _curve(
    rows: Sequence[dict[str, Any]], estimator: str, gate: str
) -> tuple[list[int], list[float]]:
    picked = sorted((r["batch_size"], r["variance"]) for r in rows
                    if r["estimator"] == estimator and r["gate"] == gate)
    return [n for n, _ in picked], [v for _, v in picked]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fitted log-log slopes and the ratios the paper's claims rest on, per gate block.

    ``slope``: over every batch size; ``slope_top``: over the largest four batch sizes
    (three doublings for a power-of-two list); ``shared_over_flipout``: at the largest batch
    size both have; ``flipout_over_independent``: at every batch size independent has;
    ``batch1_ci_overlap``: whether all estimators' intervals at the smallest batch overlap.
    """
    estimators = sorted({r["estimator"] for r in rows}, key=ESTIMATORS.index)
    summary: dict[str, Any] = {"slope": {}, "slope_top": {}, "slope_top_batch_sizes": {}}
    for estimator in estimators:
        summary["slope"][estimator], summary["slope_top"][estimator] = {}, {}
        for gate in GATES:
            sizes, variances = _curve(rows, estimator, gate)
            if len(sizes) >= 2:
                summary["slope"][estimator][gate] = loglog_slope(sizes, variances)
            if len(sizes) >= 4:
                summary["slope_top"][estimator][gate] = loglog_slope(sizes[-4:], variances[-4:])
                summary["slope_top_batch_sizes"][estimator] = sizes[-4:]
    lookup = {(r["estimator"], r["batch_size"], r["gate"]): r for r in rows}

    def ratios(top: str, bottom: str, sizes: Sequence[int]) -> dict[str, dict[str, float]]:
        return {gate: {str(n): lookup[top, n, gate]["variance"]
                       / lookup[bottom, n, gate]["variance"] for n in sizes}
                for gate in GATES}

    def sizes_of(estimator: str) -> set[int]:
        return {n for (e, n, _) in lookup if e == estimator}

    if {"shared", "flipout"} <= set(estimators):
        largest = max(sizes_of("shared") & sizes_of("flipout"))
        summary["shared_over_flipout"] = ratios("shared", "flipout", [largest])
    if {"flipout", "independent"} <= set(estimators):
        common = sorted(sizes_of("flipout") & sizes_of("independent"))
        summary["flipout_over_independent"] = ratios("flipout", "independent", common)
    smallest = min(n for (_, n, _) in lookup)
    overlap = {}
    for gate in GATES:
        present = [lookup[e, smallest, gate] for e in estimators if (e, smallest, gate) in lookup]
        overlap[gate] = max(r["ci_low"] for r in present) <= min(r["ci_high"] for r in present)
    summary["batch1_ci_overlap"] = {"batch_size": smallest, **overlap}
    return summary
