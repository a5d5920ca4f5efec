"""The reference recurrence: the cell of cell.py looped over time, as one autograd Function
with a hand-written backward through time, in plain PyTorch ops (any device, any dtype).

Forward keeps each step's activated gates and states; backward walks the steps in reverse
with `cell.backward_step` (the per-step masks of recurrent dropout and zoneout are operands,
drawn before the call, so backward reuses them) and then forms the parameter gradients over
all steps at once:

    ∂W_ih = Σ_t ∂a_tᵀ x_t,   ∂b = Σ_t ∂a_t,   ∂x_t = ∂a_t W_ih,   ∂E_t = ∂a_t,
    ∂W̄ = Σ_t ∂a_tᵀ u_t + U ∘ Σ_t (∂a_t ∘ r)ᵀ (u_t ∘ s)

the last because ΔŴ = W̄ ∘ U passes its gradient to W̄ (Wen et al. 2018, eq. 5).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .cell import CellOptions, LayerInputs, Step, backward_step, forward_step


def _noise_weight(weight: Tensor, options: CellOptions) -> Optional[Tensor]:
    """ΔŴ = W̄ ∘ U, or None without flipout."""
    return weight * options.unit if options.flipout else None


def _summed_over_steps(grads: Tensor, inputs: Tensor) -> Tensor:
    """Σ_t grads_tᵀ inputs_t for (T, B, out) grads and (T, B, in) inputs: (out, in)."""
    return grads.flatten(0, 1).t() @ inputs.flatten(0, 1)


class ReferenceRecurrence(torch.autograd.Function):
    """(options, x, W_ih, b, h0, c0, W̄, E) → (outputs (T, B, H), h_T, c_T); see `LayerInputs`
    and `CellOptions` for the operands. The options take no gradient."""

    @staticmethod
    def forward(ctx, options: CellOptions, x: Tensor, weight_ih: Tensor, bias: Tensor,
                h0: Tensor, c0: Tensor, weight: Tensor, extra: Optional[Tensor]):
        input_terms = x @ weight_ih.t() + bias  # x_t W_ihᵀ + b of every step, one product
        if extra is not None:
            input_terms = input_terms + extra
        delta = _noise_weight(weight, options)
        gates, hs, cs = [], [h0], [c0]
        for t, input_term in enumerate(input_terms):
            step = forward_step(input_term, hs[-1], cs[-1], weight, delta, options,
                                options.at_step(t))
            gates.append(step.gates)
            hs.append(step.h)
            cs.append(step.c)
        gates, hs, cs = torch.stack(gates), torch.stack(hs), torch.stack(cs)
        ctx.save_for_backward(x, weight_ih, weight, gates, hs, cs, *options.tensors())
        return hs[1:], hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_h: Tensor, grad_c: Tensor):
        x, weight_ih, weight, gates, hs, cs, *option_tensors = ctx.saved_tensors
        options = CellOptions(*option_tensors)
        delta = _noise_weight(weight, options)
        grad_gates = torch.empty_like(gates)
        for t in reversed(range(gates.shape[0])):
            step = Step(gates[t], hs[t + 1], cs[t + 1])
            grad_gates[t], grad_h, grad_c = backward_step(
                grad_h + grad_outputs[t], grad_c, step, cs[t], weight, delta, options,
                options.at_step(t))
        needs = ctx.needs_input_grad  # (options, x, W_ih, b, h0, c0, W̄, E)
        grad_weight = None
        if needs[6]:
            u = hs[:-1] if options.hidden_mask is None else hs[:-1] * options.hidden_mask
            grad_weight = _summed_over_steps(grad_gates, u)
            if options.flipout:
                grad_delta = _summed_over_steps(grad_gates * options.out_signs,
                                                u * options.in_signs)
                grad_weight = grad_weight + options.unit * grad_delta
        return (None,
                grad_gates @ weight_ih if needs[1] else None,
                _summed_over_steps(grad_gates, x) if needs[2] else None,
                grad_gates.sum((0, 1)) if needs[3] else None,
                grad_h, grad_c, grad_weight,
                grad_gates if needs[7] else None)


def reference_recurrence(inputs: LayerInputs, options: CellOptions
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Run one layer on the reference recurrence: (outputs, h_T, c_T)."""
    return ReferenceRecurrence.apply(options, *inputs.tensors())
