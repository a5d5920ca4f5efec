"""The study: for every estimator, R draws of nested mini-batches (common data windows across
estimators), reduced to the per-weight variance of each gate block at each batch size."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ...model import LanguageModel
from ...nn.noise import ESTIMATORS
from .gradients import DrawNoise, lm_chunk_gradient, random_windows, under_noise
from .statistics import GATES, SUB_BATCH, block_variance, chunk_bounds, nested_mean_gradients


@dataclass
class VarianceSettings:
    """What `run_variance` measures; the command-line flags."""

    batch_sizes: tuple[int, ...] = tuple(2**k for k in range(13))
    repeats: int = 10
    estimators: tuple[str, ...] = ESTIMATORS
    sigma: float = 1.0
    sub_batch: int = SUB_BATCH
    max_independent: int = 256
    bptt: Optional[int] = None  # window length; None = the recipe's data.bptt
    seed: int = 0


def run_variance(
    model: LanguageModel,
    tokens: Tensor,
    settings: VarianceSettings,
    bptt: int,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """CSV rows (estimator, batch_size, gate, variance, ci_low, ci_high) for every estimator,
    batch size and gate block of layer 1's W_h."""
    from tqdm import tqdm

    weight = model.lstm.weight_hh_l0
    hidden = model.lstm.sizes[0]
    plans = {}
    for estimator in settings.estimators:
        cap = settings.max_independent if estimator == "independent" else max(settings.batch_sizes)
        sizes = [n for n in settings.batch_sizes if n <= cap]
        if sizes:
            plans[estimator] = sizes
    total = sum(len(chunk_bounds(s, settings.sub_batch)) for s in plans.values()) * settings.repeats
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, desc="sub-batches", unit="batch", disable=not progress,
              file=sys.stderr) as bar:
        for estimator, sizes in plans.items():
            draws = []
            for draw in range(settings.repeats):
                # draw r reads the same windows under every estimator (common random numbers)
                data_rng = torch.Generator().manual_seed(_seed(settings.seed, 0, draw))
                windows = random_windows(tokens, max(settings.batch_sizes), bptt, data_rng)
                noise_rng = torch.Generator().manual_seed(
                    _seed(settings.seed, 1 + ESTIMATORS.index(estimator), draw))
                noise = DrawNoise(estimator, settings.sigma, weight, noise_rng)
                bar.set_postfix(estimator=estimator, draw=draw + 1)
                draws.append(nested_mean_gradients(
                    under_noise(lm_chunk_gradient(model, windows), noise), sizes,
                    settings.sub_batch, on_chunk=bar.update,
                ))
            stacked = torch.stack(draws)  # (R, sizes, 4H, H)
            for k, size in enumerate(sizes):
                for gate, block in zip(GATES, stacked[:, k].split(hidden, dim=1)):
                    estimate = block_variance(block)
                    rows.append({"estimator": estimator, "batch_size": size, "gate": gate,
                                 **asdict(estimate)})
    return rows


def _seed(*parts: int) -> int:
    """A generator seed from a tuple of small integers."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**62)
    return value
