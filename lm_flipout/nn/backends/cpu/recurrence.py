"""The CPU backend's recurrence: the equations of `lm_flipout.nn.cell` and the gradients of
`lm_flipout.nn.recurrence`, as one autograd Function arranged for speed.

The input product for all steps is one matmul before the loop, and its buffer then holds
the gate activations, so the step loop allocates nothing of that size. Only the recurrent
products run step by step (products.py), with each step's elementwise work between them in
one compiled kernel or on PyTorch ops (loops.py). The backward pass keeps per-step work to
the two products that carry ∂h_{t-1}; the input gradient and the weight gradients of W_ih,
W̄ and ΔŴ are one matmul each over all stacked steps, and ``u ∘ s`` is recomputed from the
stored outputs and the sign vectors instead of being stored. The large buffers that do not
outlive a call are reused from call to call (scratch.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...cell import CellOptions
from . import kernels, loops
from .products import input_product, step_product, transposed_gates, weight_gradient
from .scratch import scratch


def _noise_weight(weight: Tensor, unit: Tensor) -> Tensor:
    """ΔŴ = W̄ ∘ U in a scratch buffer: each of forward and backward forms it for its own use,
    so autograd never holds it."""
    return torch.mul(weight, unit, out=scratch("delta", weight))


class CpuRecurrence(torch.autograd.Function):
    """(onednn, compiled, prepack_min_steps, options, x, W_ih, b, h0, c0, W̄, E) → (outputs
    (T, B, H), h_T, c_T), with the operands of `LayerInputs` and `CellOptions`; the first
    three are the settings of `CpuBackend`."""

    @staticmethod
    def forward(ctx, onednn: bool, compiled_kernels: bool, prepack_min_steps: int,
                options: CellOptions, x: Tensor, weight_ih: Tensor, bias: Tensor, h0: Tensor,
                c0: Tensor, weight: Tensor, extra: Optional[Tensor]):
        steps, batch, inputs = x.shape
        hidden = h0.shape[1]
        # the input product of every step; each step then overwrites its slice with the
        # gate activations, which backward needs
        acts = input_product(x.reshape(steps * batch, inputs), weight_ih, bias, onednn)
        acts = acts.view(steps, batch, 4 * hidden)
        if extra is not None:
            acts += extra
        hs = x.new_empty(steps + 1, batch, hidden)
        cs = x.new_empty(steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        mean_product = step_product(weight, batch, onednn=onednn)
        noise_product = None
        if options.flipout:
            noise_product = step_product(_noise_weight(weight, options.unit), batch,
                                         onednn=onednn)
        compiled = compiled_kernels and kernels.available(x)
        step_loop = loops.forward_compiled if compiled else loops.forward_torch
        step_loop(acts, hs, cs, mean_product, noise_product, options.out_signs,
                  options.in_signs, options.hidden_mask)
        ctx.settings = onednn, compiled_kernels, prepack_min_steps
        ctx.save_for_backward(x, weight_ih, acts, hs, cs, weight, *options.tensors())
        outputs = hs[1:]
        return outputs, hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_h: Tensor, grad_c: Tensor):
        x, weight_ih, acts, hs, cs, weight, *option_tensors = ctx.saved_tensors
        options = CellOptions(*option_tensors)
        unit, out_signs, in_signs, mask = (options.unit, options.out_signs, options.in_signs,
                                           options.hidden_mask)
        onednn, compiled_kernels, prepack_min_steps = ctx.settings
        # (onednn, compiled, prepack_min_steps, options, x, W_ih, b, h0, c0, W̄, E)
        need_x, need_weight_ih, need_bias, _, _, need_weight, need_extra = (
            ctx.needs_input_grad[4:])
        steps, batch, _ = grad_outputs.shape
        prepacked = steps >= prepack_min_steps
        mean_product = step_product(weight.t(), batch, prepacked, onednn)  # g ↦ g W̄
        noise_product = None
        if options.flipout:  # g ↦ g ΔŴ
            delta = _noise_weight(weight, unit)
            noise_product = step_product(delta.t(), batch, prepacked, onednn)
        # returned as the gradient of E when that is asked for, else a scratch buffer
        grad_gates = torch.empty_like(acts) if need_extra else scratch("gates", acts)
        # ∂a ∘ r of every step, kept for the gradient of ΔŴ after the loop
        signed_grads = scratch("signed", acts) if options.flipout else None
        compiled = compiled_kernels and kernels.available(acts)
        step_loop = loops.backward_compiled if compiled else loops.backward_torch
        dh, dc = step_loop(grad_outputs, grad_h, grad_c, acts, cs, grad_gates, signed_grads,
                           mean_product, noise_product, out_signs, in_signs, mask)
        # ∂a transposed once for the gradients of W_ih and W̄ through oneDNN
        grads_t = (transposed_gates(grad_gates, x, onednn)
                   if need_weight_ih and need_weight else None)

        flat_grads = grad_gates.view(steps * batch, -1)
        grad_x = grad_weight_ih = grad_bias = grad_weight = None
        if need_x:
            input_grad = step_product(weight_ih.t(), steps * batch, False, onednn)
            grad_x = input_grad(flat_grads).view_as(x)
        if need_weight_ih:
            grad_weight_ih = weight_gradient(grad_gates, x, grads_t=grads_t)
        if need_bias:
            grad_bias = flat_grads.sum(0)
        # u_t (and then u_t ∘ s) of every step, in one scratch buffer
        inputs = hs[:-1]
        if mask is not None:
            inputs = torch.mul(inputs, mask, out=scratch("cell", inputs))
        if need_weight:  # ∂W̄ + U ∘ ∂ΔŴ
            grad_weight = weight_gradient(grad_gates, inputs, grads_t=grads_t)
            if options.flipout:
                signed_inputs = torch.mul(inputs, in_signs, out=scratch("cell", hs[:-1]))
                grad_delta = weight_gradient(signed_grads, signed_inputs, out=delta)
                grad_weight.addcmul_(grad_delta, unit)
        return (None, None, None, None, grad_x, grad_weight_ih, grad_bias, dh, dc, grad_weight,
                grad_gates if need_extra else None)
