"""The LSTM cell with flipout: its operands and one step's equations, forward and backward,
in plain PyTorch ops. This is the reference every backend is tested against.

Per step, with gate order i, f, g, o as in ``torch.nn.LSTM`` and ``u = h_{t-1} ∘ m`` for
an optional locked-dropout mask m (Gal & Ghahramani 2016):

    a_t = x_t W_ihᵀ + b + E_t + u W̄ᵀ + ((u ∘ s) ΔŴᵀ) ∘ r      (Wen et al. 2018, eq. 5)
    i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
    c_t = f ∘ c_{t-1} + i ∘ g;         h_t = o ∘ tanh(c_t)

where ΔŴ = W̄ ∘ U for the unit noise U (noise.py), r and s are the per-sequence Rademacher
signs and E an optional extra input term (input-weight noise, computed outside).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

import torch
from torch import Tensor


class _TensorFields:
    """A dataclass of tensors that hands them out in field order."""

    def tensors(self) -> tuple[Optional[Tensor], ...]:
        """The fields in order, uncopied (``dataclasses.astuple`` would deep-copy them); the
        class called on them makes the same operands again."""
        return tuple(getattr(self, field.name) for field in fields(self))


@dataclass(frozen=True)
class LayerInputs(_TensorFields):
    """The tensors of one layer call that take gradients: x (T, B, in), W_ih (4H, in),
    b (4H,), h0 and c0 (B, H), W̄ (4H, H) and the extra input term E (T, B, 4H) or None."""

    x: Tensor
    weight_ih: Tensor
    bias: Tensor
    h0: Tensor
    c0: Tensor
    weight: Tensor
    extra: Optional[Tensor] = None


@dataclass(frozen=True)
class CellOptions(_TensorFields):
    """The per-call operands of the cell that take no gradient: flipout's unit noise U
    (4H, H) with its signs r (B, 4H) and s (B, H), and the hidden-state mask m (B, H); a
    sign or mask tensor may also be one row shared by the batch. A new option of the cell
    (say a recurrent-dropout mask on g, or zoneout's masks) joins here, so that every
    backend receives it the same way."""

    unit: Optional[Tensor] = None
    out_signs: Optional[Tensor] = None
    in_signs: Optional[Tensor] = None
    hidden_mask: Optional[Tensor] = None

    @property
    def flipout(self) -> bool:
        return self.unit is not None

    def names(self) -> list[str]:
        """The options set in this call, by field name."""
        return [field.name for field in fields(self) if getattr(self, field.name) is not None]


class Step(NamedTuple):
    """One step's result: the activated gates (B, 4H) in order i, f, g, o, and h_t, c_t."""

    gates: Tensor
    h: Tensor
    c: Tensor


def recurrent_input(h_prev: Tensor, options: CellOptions) -> Tensor:
    """u = h_{t-1} ∘ m, the input of the recurrent products."""
    return h_prev if options.hidden_mask is None else h_prev * options.hidden_mask


def recurrent_term(u: Tensor, weight: Tensor, delta: Optional[Tensor],
                   options: CellOptions) -> Tensor:
    """u W̄ᵀ + ((u ∘ s) ΔŴᵀ) ∘ r (Wen et al. 2018, eq. 5); ``delta`` is ΔŴ or None."""
    term = u @ weight.t()
    if delta is not None:
        term = term + ((u * options.in_signs) @ delta.t()) * options.out_signs
    return term


def activate_and_update(preactivation: Tensor, c_prev: Tensor) -> Step:
    """The gates from a_t, then c_t = f ∘ c_{t-1} + i ∘ g and h_t = o ∘ tanh(c_t)."""
    a_i, a_f, a_g, a_o = preactivation.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c = f * c_prev + i * g
    h = o * torch.tanh(c)
    return Step(torch.cat([i, f, g, o], dim=1), h, c)


def forward_step(input_term: Tensor, h_prev: Tensor, c_prev: Tensor, weight: Tensor,
                 delta: Optional[Tensor], options: CellOptions) -> Step:
    """One step from the input term x_t W_ihᵀ + b + E_t (B, 4H) and the previous state."""
    u = recurrent_input(h_prev, options)
    return activate_and_update(input_term + recurrent_term(u, weight, delta, options), c_prev)


def backward_step(grad_h: Tensor, grad_c: Tensor, step: Step, c_prev: Tensor, weight: Tensor,
                  delta: Optional[Tensor], options: CellOptions
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Back through one step: from ∂h_t (all of it: the output's and the next step's) and
    ∂c_t to (∂a_t, ∂h_{t-1} through the recurrent products, ∂c_{t-1})."""
    i, f, g, o = step.gates.chunk(4, dim=1)
    tanh_c = torch.tanh(step.c)
    grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c)
    grad_gates = torch.cat([grad_c * g * i * (1 - i),      # ∂a_i = ∂c g σ'(a_i)
                            grad_c * c_prev * f * (1 - f),  # ∂a_f = ∂c c_{t-1} σ'(a_f)
                            grad_c * i * (1 - g * g),       # ∂a_g = ∂c i tanh'(a_g)
                            grad_h * tanh_c * o * (1 - o)],  # ∂a_o = ∂h tanh(c) σ'(a_o)
                           dim=1)
    grad_u = grad_gates @ weight
    if delta is not None:  # ∂u of ((u ∘ s) ΔŴᵀ) ∘ r
        grad_u = grad_u + ((grad_gates * options.out_signs) @ delta) * options.in_signs
    grad_h_prev = grad_u if options.hidden_mask is None else grad_u * options.hidden_mask
    return grad_gates, grad_h_prev, grad_c * f
