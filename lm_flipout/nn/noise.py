"""Weight noise as a noise family × an estimator.

A perturbed weight is ``W = W̄ + ΔW`` with ``ΔW = W̄ ∘ U`` for a unit-noise tensor ``U``:

* ``gaussian``:    ``U = σE``, E ~ N(0, 1)            → ``W = W̄ ∘ (1 + σE)``
* ``dropconnect``: ``U = m / (1 − p) − 1``, m ~ Bernoulli(1 − p) → ``W = W̄ ∘ m / (1 − p)``

and the estimator decides how the batch shares it (Wen et al. 2018, §3):

* ``shared``:      one ``U`` for the whole batch and every time step;
* ``flipout``:     one base ``U`` per call and per-sequence Rademacher signs ``r_n`` (outputs)
  and ``s_n`` (inputs), so sequence n sees ``ΔW_n = ΔŴ ∘ (r_n s_nᵀ)`` (paper eq. 4);
* ``independent``: a separate ``U_n`` for every sequence (exact and expensive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

FAMILIES = ("gaussian", "dropconnect")
ESTIMATORS = ("shared", "flipout", "independent")


@dataclass
class NoiseSample:
    """One draw of a perturbation, kept as unit noise so that ΔW follows W̄ (and its grad).

    ``unit`` is (out, in) for shared and flipout, (B, out, in) for independent;
    ``out_signs`` (B, out) and ``in_signs`` (B, in) are the flipout signs r and s.
    """

    unit: Tensor
    out_signs: Optional[Tensor] = None
    in_signs: Optional[Tensor] = None

    @property
    def shared(self) -> bool:
        """One ΔW for the whole batch (no signs, no per-sequence noise)."""
        return self.out_signs is None and self.unit.dim() == 2

    @property
    def independent(self) -> bool:
        """A separate ΔW_n for every sequence."""
        return self.unit.dim() == 3

    def delta(self, mean_weight: Tensor) -> Tensor:
        """ΔŴ = W̄ ∘ U (one matrix, or one per sequence for ``independent``)."""
        return mean_weight * self.unit


def rademacher(
    shape: tuple[int, ...],
    *,
    device: torch.device,
    dtype: torch.dtype,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Independent ±1 entries with equal probability."""
    bits = torch.randint(0, 2, shape, device=device, generator=generator)
    return bits.to(dtype).mul_(2).sub_(1)


def flipout_asymmetry(family: str, estimator: str, p: float) -> Optional[str]:
    """Why this noise cannot use flipout, or None when it can.

    Flipout (Wen et al. 2018, §3) flips the signs of one shared perturbation ΔŴ per
    sequence, which leaves its distribution unchanged only if ΔŴ is symmetric around zero.
    DropConnect's ΔW = W̄∘(m/(1−p) − 1) is −W̄ or W̄·p/(1−p): symmetric only at p = 0.5,
    where it is W̄ times a random ±1 matrix.
    """
    if family == "dropconnect" and estimator == "flipout" and p != 0.5:
        return (
            f"flipout with DropConnect needs p=0.5, got p={p!r}. Flipout flips the signs of one "
            "shared perturbation, which needs a perturbation symmetric around zero; "
            "DropConnect's perturbation (-W or W*p/(1-p)) is symmetric only at p=0.5. Use "
            "p=0.5, or estimator shared or independent for other rates."
        )
    return None


class WeightNoise:
    """Specification of the noise on one kind of weight matrix; draws `NoiseSample`s."""

    def __init__(
        self,
        family: str = "gaussian",
        sigma: float = 1.0,
        estimator: str = "flipout",
        p: float = 0.5,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"WeightNoise: family={family!r} is unknown; use one of {FAMILIES}.")
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"WeightNoise: estimator={estimator!r} is unknown; use one of {ESTIMATORS}."
            )
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"WeightNoise: sigma={sigma!r} must be a finite number >= 0.")
        if not (isinstance(p, (int, float)) and 0 <= p < 1):
            raise ValueError(f"WeightNoise: p={p!r} must lie in [0, 1) "
                             "(the DropConnect drop rate).")
        problem = flipout_asymmetry(family, estimator, p)
        if problem:
            raise ValueError(f"WeightNoise: {problem}")
        self.family = family
        self.sigma = float(sigma)
        self.estimator = estimator
        self.p = float(p)

    def __repr__(self) -> str:
        strength = f"sigma={self.sigma}" if self.family == "gaussian" else f"p={self.p}"
        return f"WeightNoise(family={self.family!r}, {strength}, estimator={self.estimator!r})"

    @property
    def per_sequence(self) -> bool:
        """True when sequences of a batch see different weights (no fused kernel possible)."""
        return self.estimator != "shared"

    def _unit(
        self,
        shape: tuple[int, ...],
        device: torch.device,
        dtype: torch.dtype,
        generator: Optional[torch.Generator],
    ) -> Tensor:
        if self.family == "gaussian":
            return torch.randn(shape, device=device, dtype=dtype, generator=generator).mul_(
                self.sigma
            )
        keep = torch.rand(shape, device=device, generator=generator) >= self.p
        return keep.to(dtype).div_(1.0 - self.p).sub_(1.0)

    def sample(
        self, weight: Tensor, batch_size: int, generator: Optional[torch.Generator] = None
    ) -> NoiseSample:
        """Draw the unit noise (and flipout signs) for ``weight`` of shape (out, in), from
        ``generator`` when given, else from PyTorch's default generator."""
        out_features, in_features = weight.shape
        kw = dict(device=weight.device, dtype=weight.dtype, generator=generator)
        if self.estimator == "independent":
            return NoiseSample(self._unit((batch_size, out_features, in_features), **kw))
        unit = self._unit((out_features, in_features), **kw)
        if self.estimator == "shared":
            return NoiseSample(unit)
        return NoiseSample(
            unit,
            out_signs=rademacher((batch_size, out_features), **kw),
            in_signs=rademacher((batch_size, in_features), **kw),
        )
