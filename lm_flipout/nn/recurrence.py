"""The LSTM recurrence with flipout, as one autograd Function with a hand-written
backward through time (issue 7, design.md §5).

Per step (gate order i, f, g, o as in ``torch.nn.LSTM``; ``u = h_{t-1} ∘ m`` with an
optional locked-dropout mask m):

    a_t = X_t + u W̄ᵀ + ((u ∘ s) ΔŴᵀ) ∘ r            (Wen et al. 2018, eq. 5)

Only the recurrent products run step by step. The backward pass keeps per-step work to
the two products that carry ∂h_{t-1}; the weight gradients of W̄ and ΔŴ are one matmul
each over all stacked steps, and ``u ∘ s`` is recomputed from the stored outputs and the
sign vectors instead of being stored. On CPU the per-step products use oneDNN's linear
(`step_product`; in forward with the weight reordered once per call into its blocked
layout), which runs these small (batch × hidden) products up to 2x faster than ``torch.mm``
at hidden sizes of 650-1000 (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

# Set to False to run every per-step product with torch.mm (the tests compare both).
USE_ONEDNN = True
# Whether oneDNN's linear gives the right product, per (prepacked, contiguous weight): probed
# once on first use of each kind.
_ONEDNN_WORKS: dict[tuple[bool, bool], bool] = {}


def onednn_weight(weight: Tensor, rows: int, prepacked: bool = True) -> Optional[Tensor]:
    """``weight`` (out, in) as oneDNN's linear takes it for products with (rows, in) inputs:
    reordered into its blocked layout (as PyTorch's compiler does for frozen linear layers)
    or, with ``prepacked=False``, as it is, any strides; None off the CPU, for other dtypes,
    with oneDNN disabled, or where this build of PyTorch cannot run the product."""
    kind = (prepacked, weight.is_contiguous())
    if not (USE_ONEDNN and _ONEDNN_WORKS.get(kind) is not False and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled):
        return None
    try:
        ready = (torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
                 if prepacked else weight)
        if kind not in _ONEDNN_WORKS:  # first use: check the product itself once
            probe = torch.ones(1, weight.shape[1])
            _ONEDNN_WORKS[kind] = bool(torch.allclose(_onednn_linear(probe, ready),
                                                      probe @ weight.t(), rtol=1e-4, atol=1e-4))
    except (AttributeError, RuntimeError, NotImplementedError):
        _ONEDNN_WORKS[kind] = False
    return ready if _ONEDNN_WORKS[kind] else None


def _onednn_linear(x: Tensor, weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


StepProduct = Callable[..., Tensor]

# Backward prepacks its transposed weights only for windows at least this long: at 35 steps
# (hidden 650) the reorder costs more than it saves, at 100 (hidden 1000) it pays
# (docs/benchmarks.md).
PREPACK_BACKWARD_MIN_STEPS = 64


def step_product(weight: Tensor, rows: int, prepacked: bool = True) -> StepProduct:
    """``product(x, base=None, out=None)`` = ``base + x @ weight.T`` (without ``base`` when it
    is None) for the (rows, in) inputs of every step of one call: oneDNN's linear with the
    weight from `onednn_weight` where it gives one, else ``torch.mm`` / ``torch.addmm``.

    Prepacking pays in forward. In backward the weight is a transposed view whose reorder
    (a transposing copy) costs 2-8 ms at hidden sizes 650-1000, which faster steps repay
    only over long windows (see `PREPACK_BACKWARD_MIN_STEPS`)."""
    ready = onednn_weight(weight, rows, prepacked)
    if ready is not None:
        def onednn(x: Tensor, base: Optional[Tensor] = None,
                   out: Optional[Tensor] = None) -> Tensor:
            y = _onednn_linear(x, ready)
            return y if base is None else torch.add(base, y, out=out)
        return onednn
    weight_t = weight.t()

    def mm(x: Tensor, base: Optional[Tensor] = None, out: Optional[Tensor] = None) -> Tensor:
        return torch.mm(x, weight_t) if base is None else torch.addmm(base, x, weight_t, out=out)
    return mm


def _activate(gates: Tensor, hidden: int) -> Tensor:
    """In place: sigmoid on i, f, o and tanh on g; returns ``gates``."""
    gates[:, : 2 * hidden].sigmoid_()
    gates[:, 2 * hidden : 3 * hidden].tanh_()
    gates[:, 3 * hidden :].sigmoid_()
    return gates


def weight_gradient(grad_gates: Tensor, inputs: Tensor) -> Tensor:
    """Σ_t ∂a_tᵀ u_t over all steps, (4H, H), as one product. On the CPUs measured
    (docs/benchmarks.md) MKL runs it as (uᵀ ∂a)ᵀ 1.15-1.45x faster than as ∂aᵀ u when H is
    not a multiple of 8 (650, 1500) and 5-15% slower when it is (400, 800, 1000)."""
    steps, batch, hidden = inputs.shape
    flat_inputs = inputs.reshape(steps * batch, hidden)
    flat_grads = grad_gates.reshape(steps * batch, -1)
    if hidden % 8:
        return (flat_inputs.t() @ flat_grads).t()
    return flat_grads.t() @ flat_inputs


class FlipoutRecurrence(torch.autograd.Function):
    """(gates_x, h0, c0, W̄, ΔŴ, r, s, m) → (outputs (T, B, H), h_T, c_T).

    ``gates_x`` (T, B, 4H) holds the input product and biases; ΔŴ with r (B, 4H) and
    s (B, H) may be None (no per-sequence noise), and so may the mask m (B, H).
    """

    @staticmethod
    def forward(ctx, gates_x, h0, c0, weight, delta, out_signs, in_signs, mask):
        steps, batch, _ = gates_x.shape
        hidden = h0.shape[1]
        acts = torch.empty_like(gates_x)
        hs = gates_x.new_empty(steps + 1, batch, hidden)
        cs = gates_x.new_empty(steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        mean_product = step_product(weight, batch)
        noise_product = step_product(delta, batch) if delta is not None else None
        for t in range(steps):
            u = hs[t] if mask is None else hs[t] * mask
            gates = mean_product(u, base=gates_x[t], out=acts[t])
            if noise_product is not None:
                gates.addcmul_(noise_product(u * in_signs), out_signs)
            _activate(gates, hidden)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.addcmul(f * cs[t], i, g, out=cs[t + 1])
            torch.mul(o, c.tanh(), out=hs[t + 1])
        ctx.save_for_backward(acts, hs, cs, weight, delta, out_signs, in_signs, mask)
        outputs = hs[1:]
        return outputs, hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(ctx, grad_outputs, grad_h, grad_c):
        acts, hs, cs, weight, delta, out_signs, in_signs, mask = ctx.saved_tensors
        steps, batch, hidden = grad_outputs.shape
        # Everything that does not depend on the incoming gradient is computed for all steps
        # at once, so the loop below runs a handful of ops per step.
        # Two passes per coefficient: σ' = σ − σ² and tanh' = 1 − tanh², each by one addcmul.
        i, f, g, o = acts.chunk(4, dim=2)
        one = acts.new_ones(())
        tanh_c = cs[1:].tanh()
        coef = torch.empty_like(acts).view(steps, batch, 4, hidden)  # ∂a/∂(dc or dh) per gate
        torch.addcmul(i, i, i, value=-1, out=coef[:, :, 0]).mul_(g)
        torch.addcmul(f, f, f, value=-1, out=coef[:, :, 1]).mul_(cs[:-1])
        torch.addcmul(one, g, g, value=-1, out=coef[:, :, 2]).mul_(i)
        torch.addcmul(o, o, o, value=-1, out=coef[:, :, 3]).mul_(tanh_c)
        dc_from_dh = torch.addcmul(one, tanh_c, tanh_c, value=-1, out=tanh_c).mul_(o)

        prepacked = steps >= PREPACK_BACKWARD_MIN_STEPS
        mean_product = step_product(weight.t(), batch, prepacked)  # g ↦ g W̄
        noise_product = (step_product(delta.t(), batch, prepacked)
                         if delta is not None else None)
        grad_gates = torch.empty_like(acts)
        # ∂a ∘ r of every step, kept for the gradient of ΔŴ after the loop; it overwrites
        # coef, whose step t is spent before step t writes it
        signed_grads = coef.view_as(acts) if delta is not None else None
        dh, dc = grad_h.clone(), grad_c.clone()  # autograd materializes unused grads as zeros
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

        # u_t (and u_t ∘ s) of every step, in dc_from_dh's memory, which the loop is done with
        inputs = hs[:-1] if mask is None else torch.mul(hs[:-1], mask, out=dc_from_dh)
        grad_weight = weight_gradient(grad_gates, inputs)
        grad_delta = None
        if delta is not None and ctx.needs_input_grad[4]:
            grad_delta = weight_gradient(signed_grads,
                                          torch.mul(inputs, in_signs, out=dc_from_dh))
        return grad_gates, dh, dc, grad_weight, grad_delta, None, None, None


def lstm_recurrence(
    gates_x: Tensor,
    state: tuple[Tensor, Tensor],
    weight: Tensor,
    delta: Optional[Tensor] = None,
    out_signs: Optional[Tensor] = None,
    in_signs: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run the recurrence; returns outputs (T, B, H) and the final (h, c)."""
    outputs, h, c = FlipoutRecurrence.apply(
        gates_x, state[0], state[1], weight, delta, out_signs, in_signs, mask
    )
    return outputs, (h, c)
