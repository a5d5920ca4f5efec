"""The LSTM layer with flipout, as one autograd Function with a hand-written backward
through time (issue 7, design.md §5).

Per step (gate order i, f, g, o as in ``torch.nn.LSTM``; ``u = h_{t-1} ∘ m`` with an
optional locked-dropout mask m):

    a_t = x_t W_ihᵀ + b + E_t + u W̄ᵀ + ((u ∘ s) ΔŴᵀ) ∘ r      (Wen et al. 2018, eq. 5)

with ΔŴ = W̄ ∘ U for the unit noise U (noise.py), whose gradient goes straight into W̄'s,
and E an optional extra input term (input-weight noise, computed outside). The input
product for all steps is one matmul before the loop, and its buffer then holds the gate
activations, so the step loop allocates nothing of that size. Only the recurrent products
run step by step. The backward pass keeps per-step work to the two products that carry
∂h_{t-1}; the input gradient and the weight gradients of W_ih, W̄ and ΔŴ are one matmul
each over all stacked steps, and ``u ∘ s`` is recomputed from the stored outputs and the
sign vectors instead of being stored. On CPU the large buffers that do not outlive a call
are reused from call to call (`scratch`): touching fresh pages costs as much as the work on
them.

Between the products, each step's elementwise work (gates, cell, the sign products for the
next step; in backward also the gate derivatives) runs in one compiled C kernel on CPU
(`cell_kernels`), and on PyTorch ops elsewhere or where no C compiler works.

On CPU the products use oneDNN's linear (`step_product`; per-step forward products with the
weight reordered once per call into its blocked layout), which runs the small (batch ×
hidden) products up to 2x and the stacked ones 10-15% faster than ``torch.mm`` at hidden
sizes of 650-1000 (docs/benchmarks.md).
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

import torch
from torch import Tensor

from . import cell_kernels

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


def input_product(inputs: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``inputs @ weight.T + bias`` for (N, in) inputs, as one product: oneDNN's linear on the
    weight as it is where `onednn_weight` gives it, else ``torch.addmm``."""
    ready = onednn_weight(weight, inputs.shape[0], prepacked=False)
    if ready is not None:
        return torch.ops.mkldnn._linear_pointwise(inputs.contiguous(), ready, bias, "none", [], "")
    return torch.addmm(bias, inputs, weight.t())


_SCRATCH = threading.local()


def scratch(name: str, like: Tensor) -> Tensor:
    """An uninitialized tensor shaped like ``like``. On CPU it is a view of a buffer that this
    thread keeps under ``name`` for the next call (grown when too small); elsewhere it is
    fresh, since CUDA's caching allocator already reuses memory, and so it is under
    ``torch.inference_mode`` (a buffer made there could not be written outside it). Only for
    tensors that do not outlive the call that asks for them."""
    if like.device.type != "cpu" or torch.is_inference_mode_enabled():
        return torch.empty_like(like)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.numel() < like.numel() or buffer.dtype != like.dtype:
        buffer = buffers[name] = like.new_empty(like.numel())
    return buffer[: like.numel()].view(like.shape)


def _activate(gates: Tensor, hidden: int) -> Tensor:
    """In place: sigmoid on i, f, o and tanh on g; returns ``gates``."""
    gates[:, : 2 * hidden].sigmoid_()
    gates[:, 2 * hidden : 3 * hidden].tanh_()
    gates[:, 3 * hidden :].sigmoid_()
    return gates


def transposed_gates(grad_gates: Tensor, inputs: Tensor) -> Optional[Tensor]:
    """∂a of all steps as a (4H, T·B) copy (a scratch buffer) for `weight_gradient`, where
    oneDNN's linear can take ``inputs`` transposed as its weight; else None."""
    steps, batch, size = inputs.shape
    if onednn_weight(inputs.reshape(steps * batch, size).t(), 1, prepacked=False) is None:
        return None
    flat_grads = grad_gates.reshape(steps * batch, -1)
    return scratch("gates_t", flat_grads.t()).copy_(flat_grads.t())


def weight_gradient(grad_gates: Tensor, inputs: Tensor, out: Optional[Tensor] = None,
                    grads_t: Optional[Tensor] = None) -> Tensor:
    """Σ_t ∂a_tᵀ u_t over all steps, (4H, in), as one product. With ``grads_t`` (from
    `transposed_gates`) oneDNN's linear computes it in the parameter's own layout, about 13%
    faster than MKL and with nothing for autograd to copy into place; that pays once the copy
    serves two gradients. Otherwise MKL, into the memory of ``out`` when given: on the CPUs
    measured (docs/benchmarks.md) it runs the product as (uᵀ ∂a)ᵀ 1.15-1.45x faster than as
    ∂aᵀ u when the input size is not a multiple of 8 (650, 1500) and 5-15% slower when it is
    (400, 800, 1000)."""
    steps, batch, size = inputs.shape
    flat_inputs = inputs.reshape(steps * batch, size)
    if grads_t is not None:
        return _onednn_linear(grads_t, flat_inputs.t())
    flat_grads = grad_gates.reshape(steps * batch, -1)
    if size % 8:
        result = None if out is None else out.view(size, -1)
        return torch.mm(flat_inputs.t(), flat_grads, out=result).t()
    return torch.mm(flat_grads.t(), flat_inputs, out=None if out is None else out.view(-1, size))


def _noise_weight(weight: Tensor, unit: Tensor) -> Tensor:
    """ΔŴ = W̄ ∘ U in a scratch buffer: each of forward and backward forms it for its own use,
    so autograd never holds it."""
    return torch.mul(weight, unit, out=scratch("delta", weight))


def _rows(tensor: Optional[Tensor], batch: int) -> Optional[Tensor]:
    """A per-sequence (B, n) operand as the kernels take it: contiguous float32, one row per
    sequence (a bool mask, say, becomes 0/1)."""
    if tensor is None:
        return None
    return tensor.expand(batch, -1).to(torch.float32).contiguous()


def _forward_torch(acts, hs, cs, mean_product, noise_product, out_signs, in_signs, mask):
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


def _forward_compiled(acts, hs, cs, mean_product, noise_product, out_signs, in_signs, mask):
    """The same loop with all of a step's elementwise work in one compiled kernel, which
    also writes the next step's product inputs u and u ∘ s."""
    steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    out_signs, in_signs, mask = (_rows(v, batch) for v in (out_signs, in_signs, mask))
    cell_kernels.check((acts, (steps, batch, 4 * hidden)), (hs, (steps + 1, batch, hidden)),
                       (cs, (steps + 1, batch, hidden)), (out_signs, (batch, 4 * hidden)),
                       (in_signs, (batch, hidden)), (mask, (batch, hidden)))
    u = hs[0] if mask is None else hs[0] * mask
    u_signed = None if noise_product is None else u * in_signs
    for t in range(steps):
        mean = mean_product(u)
        noise = None if noise_product is None else noise_product(u_signed)
        cell_kernels.forward_step(acts[t], mean, noise, out_signs, cs[t], cs[t + 1],
                                  hs[t + 1], mask, None if mask is None else u, in_signs,
                                  u_signed)
        if mask is None:
            u = hs[t + 1]


def _backward_torch(grad_outputs, grad_h, grad_c, acts, cs, grad_gates, signed_grads,
                    mean_product, noise_product, out_signs, in_signs, mask):
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


def _backward_compiled(grad_outputs, grad_h, grad_c, acts, cs, grad_gates, signed_grads,
                       mean_product, noise_product, out_signs, in_signs, mask):
    """The same loop with all of a step's elementwise work, gate coefficients included, in
    one compiled kernel."""
    steps, batch, hidden = grad_outputs.shape
    out_signs, in_signs, mask = (_rows(v, batch) for v in (out_signs, in_signs, mask))
    grad_outputs = grad_outputs.contiguous()
    dc = grad_c.clone(memory_format=torch.contiguous_format)  # the kernels update it in place
    # ∂h_t = ∂y_t + (carried + carried_noise ∘ s) ∘ mask, from the products of step t + 1
    carried, carried_noise, carry_mask = grad_h.contiguous(), None, None
    gate_sized, hidden_sized = (steps, batch, 4 * hidden), (batch, hidden)
    cell_kernels.check((acts, gate_sized), (cs, (steps + 1, batch, hidden)),
                       (grad_outputs, (steps, batch, hidden)), (grad_gates, gate_sized),
                       (signed_grads, gate_sized), (out_signs, (batch, 4 * hidden)),
                       (in_signs, hidden_sized), (mask, hidden_sized), (dc, hidden_sized),
                       (carried, hidden_sized))
    for t in reversed(range(steps)):
        signed = None if signed_grads is None else signed_grads[t]
        cell_kernels.backward_step(acts[t], cs[t], cs[t + 1], grad_outputs[t], carried,
                                   carried_noise, in_signs, carry_mask, dc, grad_gates[t],
                                   out_signs, signed)
        carried = mean_product(grad_gates[t])
        carried_noise = None if noise_product is None else noise_product(signed)
        carry_mask = mask
    dh = carried if carried_noise is None else carried.addcmul_(carried_noise, in_signs)
    return (dh if mask is None else dh * mask), dc


class FlipoutRecurrence(torch.autograd.Function):
    """(x, W_ih, b, E, h0, c0, W̄, U, r, s, m) → (outputs (T, B, H), h_T, c_T).

    x (T, B, in); the extra input term E (T, B, 4H) may be None, and so may the unit noise U
    (4H, H) with r (B, 4H) and s (B, H) (no per-sequence noise) and the mask m (B, H). U takes
    no gradient.
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias, extra, h0, c0, weight, unit, out_signs, in_signs,
                mask):
        steps, batch, inputs = x.shape
        hidden = h0.shape[1]
        # the input product of every step; each step then overwrites its slice with the
        # gate activations, which backward needs
        acts = input_product(x.reshape(steps * batch, inputs), weight_ih, bias)
        acts = acts.view(steps, batch, 4 * hidden)
        if extra is not None:
            acts += extra
        hs = x.new_empty(steps + 1, batch, hidden)
        cs = x.new_empty(steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        mean_product = step_product(weight, batch)
        noise_product = None
        if unit is not None:
            noise_product = step_product(_noise_weight(weight, unit), batch)
        step_loop = _forward_compiled if cell_kernels.available(x) else _forward_torch
        step_loop(acts, hs, cs, mean_product, noise_product, out_signs, in_signs, mask)
        ctx.save_for_backward(x, weight_ih, acts, hs, cs, weight, unit, out_signs, in_signs, mask)
        outputs = hs[1:]
        return outputs, hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(ctx, grad_outputs, grad_h, grad_c):
        x, weight_ih, acts, hs, cs, weight, unit, out_signs, in_signs, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        steps, batch, _ = grad_outputs.shape
        prepacked = steps >= PREPACK_BACKWARD_MIN_STEPS
        mean_product = step_product(weight.t(), batch, prepacked)  # g ↦ g W̄
        noise_product = None
        if unit is not None:  # g ↦ g ΔŴ
            delta = _noise_weight(weight, unit)
            noise_product = step_product(delta.t(), batch, prepacked)
        # returned as the gradient of E when that is asked for, else a scratch buffer
        grad_gates = torch.empty_like(acts) if needs[3] else scratch("gates", acts)
        # ∂a ∘ r of every step, kept for the gradient of ΔŴ after the loop
        signed_grads = scratch("signed", acts) if unit is not None else None
        step_loop = _backward_compiled if cell_kernels.available(acts) else _backward_torch
        dh, dc = step_loop(grad_outputs, grad_h, grad_c, acts, cs, grad_gates, signed_grads,
                           mean_product, noise_product, out_signs, in_signs, mask)
        # ∂a transposed once for the gradients of W_ih and W̄ through oneDNN
        grads_t = transposed_gates(grad_gates, x) if needs[1] and needs[6] else None

        grads = [None] * 11
        flat_grads = grad_gates.view(steps * batch, -1)
        if needs[0]:
            input_grad = step_product(weight_ih.t(), steps * batch, prepacked=False)
            grads[0] = input_grad(flat_grads).view_as(x)
        if needs[1]:
            grads[1] = weight_gradient(grad_gates, x, grads_t=grads_t)
        if needs[2]:
            grads[2] = flat_grads.sum(0)
        grads[3] = grad_gates if needs[3] else None
        grads[4], grads[5] = dh, dc
        # u_t (and then u_t ∘ s) of every step, in one scratch buffer
        inputs = hs[:-1]
        if mask is not None:
            inputs = torch.mul(inputs, mask, out=scratch("cell", inputs))
        if needs[6]:  # ∂W̄ + U ∘ ∂ΔŴ
            grads[6] = weight_gradient(grad_gates, inputs, grads_t=grads_t)
            if unit is not None:
                signed_inputs = torch.mul(inputs, in_signs, out=scratch("cell", hs[:-1]))
                grad_delta = weight_gradient(signed_grads, signed_inputs, out=delta)
                grads[6].addcmul_(grad_delta, unit)
        return tuple(grads)


def _check_shapes(x, weight_ih, bias, state, weight, unit, out_signs, in_signs, mask,
                  extra) -> None:
    """Raise a ValueError naming the argument whose shape does not fit the others."""
    if x.dim() != 3:
        raise ValueError(f"lstm_layer: x must be (steps, batch, inputs), got {tuple(x.shape)}")
    steps, batch, inputs = x.shape
    hidden = state[0].shape[-1]
    per_sequence = (unit, out_signs, in_signs)
    if any(v is None for v in per_sequence) and any(v is not None for v in per_sequence):
        raise ValueError("lstm_layer: flipout needs unit, out_signs and in_signs together; "
                         "pass all three (NoiseSample.unit, .out_signs, .in_signs) or none")
    expected = {"state[0] (h)": (state[0], (batch, hidden)),
                "state[1] (c)": (state[1], (batch, hidden)),
                "weight": (weight, (4 * hidden, hidden)),
                "weight_ih": (weight_ih, (4 * hidden, inputs)), "bias": (bias, (4 * hidden,)),
                "unit": (unit, (4 * hidden, hidden)), "extra": (extra, (steps, batch, 4 * hidden))}
    rows = {"out_signs": (out_signs, 4 * hidden), "in_signs": (in_signs, hidden),
            "mask": (mask, hidden)}  # one row per sequence, or one row for all
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"lstm_layer: {name} must have shape {shape} for x of shape "
                             f"{tuple(x.shape)} and hidden size {hidden}, got "
                             f"{tuple(tensor.shape)}")
    for name, (tensor, width) in rows.items():
        if tensor is not None and (tensor.dim() != 2 or tensor.shape[0] not in (1, batch)
                                   or tensor.shape[1] != width):
            raise ValueError(f"lstm_layer: {name} must have shape ({batch}, {width}) or "
                             f"(1, {width}) for a batch of {batch} and hidden size {hidden}, "
                             f"got {tuple(tensor.shape)}")


def lstm_layer(
    x: Tensor,
    weight_ih: Tensor,
    bias: Tensor,
    state: tuple[Tensor, Tensor],
    weight: Tensor,
    unit: Optional[Tensor] = None,
    out_signs: Optional[Tensor] = None,
    in_signs: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    extra: Optional[Tensor] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run one layer on x (T, B, in); returns outputs (T, B, H) and the final (h, c). With
    flipout, ``unit`` is the unit noise U of ΔŴ = W̄ ∘ U (`NoiseSample.unit`), which takes no
    gradient."""
    if unit is not None and unit.requires_grad:
        raise ValueError("lstm_layer: the unit noise U takes no gradient here (ΔŴ = W̄ ∘ U "
                         "passes its gradient to W̄ only); pass unit.detach().")
    _check_shapes(x, weight_ih, bias, state, weight, unit, out_signs, in_signs, mask, extra)
    outputs, h, c = FlipoutRecurrence.apply(
        x, weight_ih, bias, extra, state[0], state[1], weight, unit, out_signs, in_signs, mask
    )
    return outputs, (h, c)
