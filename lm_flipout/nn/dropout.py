"""Activation regularizers: locked (variational), naive per-step and embedding dropout.

Each is active in training mode, or in eval mode when ``sample_in_eval`` is set
(Monte-Carlo evaluation, see `set_mc_sampling`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_rate(p: float, name: str) -> float:
    """``p`` as a float, or a ValueError naming ``name`` unless it is a rate in [0, 1)."""
    if not (isinstance(p, (int, float)) and 0 <= p < 1):
        raise ValueError(f"{name}: p={p!r} must lie in [0, 1).")
    return float(p)


def inverted_keep_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Bernoulli(1 − p) keep-mask of ``shape`` scaled by 1/(1 − p) (inverted dropout, so the
    mask's expectation is 1), on ``like``'s device and in its dtype."""
    keep = torch.rand(shape, device=like.device) >= p
    return keep.to(like.dtype).div_(1.0 - p)


class _Stochastic(nn.Module):
    """A module that draws random masks when training or when asked to sample in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = check_rate(p, type(self).__name__)
        self.sample_in_eval = False

    @property
    def active(self) -> bool:
        return self.p > 0 and (self.training or self.sample_in_eval)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LockedDropout(_Stochastic):
    """Variational dropout (Gal & Ghahramani 2016): one mask per sequence, reused at every
    time step. Input (T, B, D)."""

    def mask(self, batch_size: int, size: int, like: Tensor) -> Tensor:
        """A (B, D) mask scaled by 1/(1-p); used directly for the hidden state h_{t-1}."""
        return inverted_keep_mask((batch_size, size), self.p, like)

    def forward(self, x: Tensor) -> Tensor:
        if not self.active:
            return x
        return x * self.mask(x.shape[1], x.shape[2], x).unsqueeze(0)


class NaiveDropout(_Stochastic):
    """Zaremba et al. (2014) dropout: a fresh mask for every element and time step."""

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=True) if self.active else x


class EmbeddingDropout(_Stochastic):
    """Drops whole rows (word types) of an embedding matrix (Gal & Ghahramani 2016)."""

    def forward(self, tokens: Tensor, weight: Tensor) -> Tensor:
        if self.active:
            weight = weight * inverted_keep_mask((weight.shape[0], 1), self.p, weight)
        return F.embedding(tokens, weight)


def activation_dropout(kind: str, p: float) -> _Stochastic:
    """Dropout on non-recurrent connections: ``locked`` (per sequence) or ``naive`` (per step)."""
    if kind == "locked":
        return LockedDropout(p)
    if kind == "naive":
        return NaiveDropout(p)
    raise ValueError(f"dropout kind={kind!r} is unknown; use 'locked' or 'naive'.")


def set_mc_sampling(module: nn.Module, enabled: bool) -> None:
    """Make every stochastic regularizer in ``module`` draw samples in eval mode too."""
    for sub in module.modules():
        if hasattr(sub, "sample_in_eval"):
            sub.sample_in_eval = enabled
