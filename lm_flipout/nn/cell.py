"""The LSTM cell with flipout: its operands and one step's equations, forward and backward,
in plain PyTorch ops. This is the reference every backend is tested against.

Per step, with gate order i, f, g, o as in ``torch.nn.LSTM`` and ``u = h_{t-1} ∘ m`` for
an optional locked-dropout mask m (Gal & Ghahramani 2016):

    a_t = x_t W_ihᵀ + b + E_t + u W̄ᵀ + ((u ∘ s) ΔŴᵀ) ∘ r      (Wen et al. 2018, eq. 5)
    i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
    c̃_t = f ∘ c_{t-1} + i ∘ (d^g_t ∘ g);   h̃_t = o ∘ tanh(c̃_t)
    c_t = d^c_t ∘ c_{t-1} + (1 − d^c_t) ∘ c̃_t;   h_t = d^h_t ∘ h_{t-1} + (1 − d^h_t) ∘ h̃_t

where ΔŴ = W̄ ∘ U for the unit noise U (noise.py), r and s are the per-sequence Rademacher
signs and E an optional extra input term (input-weight noise, computed outside).

d^g is recurrent dropout without memory loss (Semeniuta et al. 2016, the LSTM case): a
dropout mask, scaled by 1/(1 − p), on the cell update g only, so c_{t-1} is never dropped.
d^c and d^h are zoneout (Krueger et al. 2017, "Zoneout and preliminaries", the LSTM
equations): per unit and step, 1 keeps the previous value and 0 takes the new one; in
evaluation they are the zoneout rates z_c, z_h themselves (the expectation). As in Krueger
et al., the new h is computed from the candidate c̃_t, not from the zoned-out c_t. A mask
not in use is left out (None), which gives the plain cell.
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
    sign or mask tensor may also be one row shared by the batch. The per-step masks of
    recurrent dropout d^g and of zoneout d^c, d^h are (T, B, H). A new option of the cell
    joins here, so that every backend receives it the same way."""

    unit: Optional[Tensor] = None
    out_signs: Optional[Tensor] = None
    in_signs: Optional[Tensor] = None
    hidden_mask: Optional[Tensor] = None
    update_mask: Optional[Tensor] = None
    zoneout_cell: Optional[Tensor] = None
    zoneout_hidden: Optional[Tensor] = None

    @property
    def flipout(self) -> bool:
        return self.unit is not None

    @property
    def per_step(self) -> bool:
        """Whether a per-step mask (recurrent dropout or zoneout) is set."""
        return any(m is not None for m in (self.update_mask, self.zoneout_cell,
                                           self.zoneout_hidden))

    def names(self) -> list[str]:
        """The options set in this call, by field name."""
        return [field.name for field in fields(self) if getattr(self, field.name) is not None]

    def at_step(self, t: int) -> "StepMasks":
        """The per-step masks of step t."""
        return StepMasks(*(None if m is None else m[t]
                           for m in (self.update_mask, self.zoneout_cell, self.zoneout_hidden)))


class StepMasks(NamedTuple):
    """One step's masks (B, H), or None where unused: recurrent dropout's d^g on the update,
    zoneout's d^c and d^h (see the module docstring)."""

    update: Optional[Tensor] = None
    cell: Optional[Tensor] = None
    hidden: Optional[Tensor] = None


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


def _zone(candidate: Tensor, prev: Tensor, keep: Optional[Tensor]) -> Tensor:
    """d ∘ prev + (1 − d) ∘ candidate (Krueger et al. 2017), or the candidate."""
    return candidate if keep is None else torch.lerp(candidate, prev, keep)


def _update(g: Tensor, masks: StepMasks) -> Tensor:
    """d^g ∘ g, the dropped cell update (Semeniuta et al. 2016), or g."""
    return g if masks.update is None else g * masks.update


def activate_and_update(preactivation: Tensor, h_prev: Tensor, c_prev: Tensor,
                        masks: StepMasks = StepMasks()) -> Step:
    """The gates from a_t, then c̃_t, h̃_t and their zoned-out c_t, h_t (module docstring)."""
    a_i, a_f, a_g, a_o = preactivation.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    candidate = f * c_prev + i * _update(g, masks)
    h = _zone(o * torch.tanh(candidate), h_prev, masks.hidden)
    return Step(torch.cat([i, f, g, o], dim=1), h, _zone(candidate, c_prev, masks.cell))


def forward_step(input_term: Tensor, h_prev: Tensor, c_prev: Tensor, weight: Tensor,
                 delta: Optional[Tensor], options: CellOptions,
                 masks: StepMasks = StepMasks()) -> Step:
    """One step from the input term x_t W_ihᵀ + b + E_t (B, 4H) and the previous state."""
    u = recurrent_input(h_prev, options)
    preactivation = input_term + recurrent_term(u, weight, delta, options)
    return activate_and_update(preactivation, h_prev, c_prev, masks)


def backward_step(grad_h: Tensor, grad_c: Tensor, step: Step, c_prev: Tensor, weight: Tensor,
                  delta: Optional[Tensor], options: CellOptions,
                  masks: StepMasks = StepMasks()) -> tuple[Tensor, Tensor, Tensor]:
    """Back through one step: from ∂h_t (all of it: the output's and the next step's) and
    ∂c_t to (∂a_t, ∂h_{t-1}, ∂c_{t-1}). Zoneout passes d ∘ ∂h_t, d ∘ ∂c_t straight back
    and (1 − d) ∘ ∂ to h̃_t, c̃_t; c̃_t is recomputed from the gates when c_t was zoned."""
    i, f, g, o = step.gates.chunk(4, dim=1)
    update = _update(g, masks)
    candidate = step.c if masks.cell is None else f * c_prev + i * update
    tanh_c = torch.tanh(candidate)
    grad_h_new = grad_h if masks.hidden is None else grad_h * (1 - masks.hidden)  # ∂h̃_t
    grad_c_new = grad_c if masks.cell is None else grad_c * (1 - masks.cell)
    grad_c_new = grad_c_new + grad_h_new * o * (1 - tanh_c * tanh_c)  # ∂c̃_t
    grad_g = _update(grad_c_new * i, masks)  # ∂g = ∂c̃ i d^g
    grad_gates = torch.cat([grad_c_new * update * i * (1 - i),   # ∂a_i = ∂c̃ d^g g σ'(a_i)
                            grad_c_new * c_prev * f * (1 - f),   # ∂a_f = ∂c̃ c_{t-1} σ'(a_f)
                            grad_g * (1 - g * g),                # ∂a_g = ∂g tanh'(a_g)
                            grad_h_new * tanh_c * o * (1 - o)],  # ∂a_o = ∂h̃ tanh(c̃) σ'(a_o)
                           dim=1)
    grad_u = grad_gates @ weight
    if delta is not None:  # ∂u of ((u ∘ s) ΔŴᵀ) ∘ r
        grad_u = grad_u + ((grad_gates * options.out_signs) @ delta) * options.in_signs
    grad_h_prev = grad_u if options.hidden_mask is None else grad_u * options.hidden_mask
    grad_c_prev = grad_c_new * f
    if masks.hidden is not None:
        grad_h_prev = grad_h_prev + grad_h * masks.hidden
    if masks.cell is not None:
        grad_c_prev = grad_c_prev + grad_c * masks.cell
    return grad_gates, grad_h_prev, grad_c_prev
