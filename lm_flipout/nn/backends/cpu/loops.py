"""The CPU backend's step loops, forward and backward through time, in two variants: each
step's elementwise work on PyTorch ops, or in one compiled C kernel (kernels.c, about 7%
faster at PTB-medium size). Both compute the equations of `lm_flipout.nn.cell` between the
per-step products, which they take as ``mean_product`` (u ↦ u W̄ᵀ forward, g ↦ g W̄
backward) and ``noise_product`` (the same with ΔŴ, or None without flipout).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import kernels
from .products import StepProduct
from .scratch import scratch


def _activate(gates: Tensor, hidden: int) -> Tensor:
    """In place: sigmoid on i, f, o and tanh on g; returns ``gates``."""
    gates[:, : 2 * hidden].sigmoid_()
    gates[:, 2 * hidden : 3 * hidden].tanh_()
    gates[:, 3 * hidden :].sigmoid_()
    return gates


def _rows(tensor: Optional[Tensor], batch: int) -> Optional[Tensor]:
    """A per-sequence (B, n) operand as the kernels take it: contiguous float32, one row per
    sequence (a bool mask, say, becomes 0/1)."""
    if tensor is None:
        return None
    return tensor.expand(batch, -1).to(torch.float32).contiguous()


def forward_torch(acts: Tensor, hs: Tensor, cs: Tensor, mean_product: StepProduct,
                  noise_product: Optional[StepProduct], out_signs: Optional[Tensor],
                  in_signs: Optional[Tensor], mask: Optional[Tensor]) -> None:
    """The forward step loop on PyTorch ops: step t turns ``acts[t]`` (the input term) into
    the activated gates and writes h_t and c_t into ``hs`` and ``cs``."""
    hidden = hs.shape[2]
    for t in range(acts.shape[0]):
        u = hs[t] if mask is None else hs[t] * mask
        gates = mean_product(u, base=acts[t], out=acts[t])
        if noise_product is not None:
            gates.addcmul_(noise_product(u * in_signs), out_signs)
        _activate(gates, hidden)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.addcmul(f * cs[t], i, g, out=cs[t + 1])
        torch.mul(o, c.tanh(), out=hs[t + 1])


def forward_compiled(acts: Tensor, hs: Tensor, cs: Tensor, mean_product: StepProduct,
                     noise_product: Optional[StepProduct], out_signs: Optional[Tensor],
                     in_signs: Optional[Tensor], mask: Optional[Tensor]) -> None:
    """The same loop with all of a step's elementwise work in one compiled kernel, which
    also writes the next step's product inputs u and u ∘ s."""
    steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    out_signs, in_signs, mask = (_rows(v, batch) for v in (out_signs, in_signs, mask))
    kernels.check((acts, (steps, batch, 4 * hidden)), (hs, (steps + 1, batch, hidden)),
                  (cs, (steps + 1, batch, hidden)), (out_signs, (batch, 4 * hidden)),
                  (in_signs, (batch, hidden)), (mask, (batch, hidden)))
    u = hs[0] if mask is None else hs[0] * mask
    u_signed = None if noise_product is None else u * in_signs
    for t in range(steps):
        mean = mean_product(u)
        noise = None if noise_product is None else noise_product(u_signed)
        kernels.forward_step(acts[t], mean, noise, out_signs, cs[t], cs[t + 1],
                             hs[t + 1], mask, None if mask is None else u, in_signs,
                             u_signed)
        if mask is None:
            u = hs[t + 1]


def backward_torch(grad_outputs: Tensor, grad_h: Tensor, grad_c: Tensor, acts: Tensor,
                   cs: Tensor, grad_gates: Tensor, signed_grads: Optional[Tensor],
                   mean_product: StepProduct, noise_product: Optional[StepProduct],
                   out_signs: Optional[Tensor], in_signs: Optional[Tensor],
                   mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The backward step loop on PyTorch ops; writes ∂a_t (and ∂a_t ∘ r) of every step and
    returns ∂h_0, ∂c_0. Everything that does not depend on the incoming gradient is computed
    for all steps at once, so the loop runs a handful of ops per step."""
    steps, batch, hidden = grad_outputs.shape
    i, f, g, o = acts.chunk(4, dim=2)
    tanh_c = torch.tanh(cs[1:], out=scratch("cell", cs[1:]))
    # ∂a/∂(dc or dh) per gate, one pass each: sigmoid_backward(y, σ) = y σ (1 − σ) and
    # tanh_backward(y, τ) = y (1 − τ²). Step t of signed_grads overwrites it once spent.
    coef = (scratch("signed", acts) if signed_grads is None else signed_grads)
    coef = coef.view(steps, batch, 4, hidden)
    sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
    tanh_backward = torch.ops.aten.tanh_backward.grad_input
    sigmoid_backward(g, i, grad_input=coef[:, :, 0])
    sigmoid_backward(cs[:-1], f, grad_input=coef[:, :, 1])
    tanh_backward(i, g, grad_input=coef[:, :, 2])
    sigmoid_backward(tanh_c, o, grad_input=coef[:, :, 3])
    dc_from_dh = tanh_backward(o, tanh_c, grad_input=tanh_c)
    dh, dc = grad_h.clone(), grad_c.clone()
    for t in reversed(range(steps)):
        dh += grad_outputs[t]
        dc.addcmul_(dh, dc_from_dh[t])
        gates_t = grad_gates[t].view(batch, 4, hidden)
        torch.mul(coef[t, :, :3], dc.unsqueeze(1), out=gates_t[:, :3])
        torch.mul(coef[t, :, 3], dh, out=gates_t[:, 3])
        dc = dc * f[t]
        du = mean_product(grad_gates[t])
        if noise_product is not None:
            signed = torch.mul(grad_gates[t], out_signs, out=signed_grads[t])
            du.addcmul_(noise_product(signed), in_signs)
        dh = du if mask is None else du * mask
    return dh, dc


def backward_compiled(grad_outputs: Tensor, grad_h: Tensor, grad_c: Tensor, acts: Tensor,
                      cs: Tensor, grad_gates: Tensor, signed_grads: Optional[Tensor],
                      mean_product: StepProduct, noise_product: Optional[StepProduct],
                      out_signs: Optional[Tensor], in_signs: Optional[Tensor],
                      mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The same loop with all of a step's elementwise work, gate coefficients included, in
    one compiled kernel."""
    steps, batch, hidden = grad_outputs.shape
    out_signs, in_signs, mask = (_rows(v, batch) for v in (out_signs, in_signs, mask))
    grad_outputs = grad_outputs.contiguous()
    dc = grad_c.clone(memory_format=torch.contiguous_format)  # the kernels update it in place
    # ∂h_t = ∂y_t + (carried + carried_noise ∘ s) ∘ mask, from the products of step t + 1
    carried, carried_noise, carry_mask = grad_h.contiguous(), None, None
    gate_sized, hidden_sized = (steps, batch, 4 * hidden), (batch, hidden)
    kernels.check((acts, gate_sized), (cs, (steps + 1, batch, hidden)),
                  (grad_outputs, (steps, batch, hidden)), (grad_gates, gate_sized),
                  (signed_grads, gate_sized), (out_signs, (batch, 4 * hidden)),
                  (in_signs, hidden_sized), (mask, hidden_sized), (dc, hidden_sized),
                  (carried, hidden_sized))
    for t in reversed(range(steps)):
        signed = None if signed_grads is None else signed_grads[t]
        kernels.backward_step(acts[t], cs[t], cs[t + 1], grad_outputs[t], carried,
                              carried_noise, in_signs, carry_mask, dc, grad_gates[t],
                              out_signs, signed)
        carried = mean_product(grad_gates[t])
        carried_noise = None if noise_product is None else noise_product(signed)
        carry_mask = mask
    dh = carried if carried_noise is None else carried.addcmul_(carried_noise, in_signs)
    return (dh if mask is None else dh * mask), dc
