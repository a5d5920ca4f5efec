"""The CPU backend's matrix products: oneDNN's linear where it runs, else MKL via torch.mm.

oneDNN's linear, with the weight reordered once per call into its blocked layout, runs the
small (batch × hidden) per-step products up to 2x and the stacked ones 10-15% faster than
``torch.mm`` at hidden sizes of 650-1000 (docs/benchmarks.md). Every function takes
``onednn``: False runs the same product on ``torch.mm``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .scratch import scratch

# Whether oneDNN's linear gives the right product, per (prepacked, contiguous weight): probed
# once on first use of each kind.
_ONEDNN_WORKS: dict[tuple[bool, bool], bool] = {}

# Backward prepacks its transposed weights only for windows at least this long: at 35 steps
# (hidden 650) the reorder costs more than it saves, at 100 (hidden 1000) it pays
# (docs/benchmarks.md).
PREPACK_BACKWARD_MIN_STEPS = 64

StepProduct = Callable[..., Tensor]


def onednn_weight(weight: Tensor, rows: int, prepacked: bool = True,
                  onednn: bool = True) -> Optional[Tensor]:
    """``weight`` (out, in) as oneDNN's linear takes it for products with (rows, in) inputs:
    reordered into its blocked layout (as PyTorch's compiler does for frozen linear layers)
    or, with ``prepacked=False``, as it is, any strides; None with ``onednn=False``, off the
    CPU, for other dtypes, or where this build of PyTorch cannot run the product."""
    kind = (prepacked, weight.is_contiguous())
    if not (onednn and _ONEDNN_WORKS.get(kind) is not False and weight.device.type == "cpu"
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


def step_product(weight: Tensor, rows: int, prepacked: bool = True,
                 onednn: bool = True) -> StepProduct:
    """``product(x, base=None, out=None)`` = ``base + x @ weight.T`` (without ``base`` when it
    is None) for the (rows, in) inputs of every step of one call: oneDNN's linear with the
    weight from `onednn_weight` where it gives one, else ``torch.mm`` / ``torch.addmm``.

    Prepacking pays in forward. In backward the weight is a transposed view whose reorder
    (a transposing copy) costs 2-8 ms at hidden sizes 650-1000, which faster steps repay
    only over long windows (see `PREPACK_BACKWARD_MIN_STEPS`)."""
    ready = onednn_weight(weight, rows, prepacked, onednn)
    if ready is not None:
        def onednn_product(x: Tensor, base: Optional[Tensor] = None,
                           out: Optional[Tensor] = None) -> Tensor:
            y = _onednn_linear(x, ready)
            return y if base is None else torch.add(base, y, out=out)
        return onednn_product
    weight_t = weight.t()

    def mm(x: Tensor, base: Optional[Tensor] = None, out: Optional[Tensor] = None) -> Tensor:
        return torch.mm(x, weight_t) if base is None else torch.addmm(base, x, weight_t, out=out)
    return mm


def input_product(inputs: Tensor, weight: Tensor, bias: Tensor, onednn: bool = True) -> Tensor:
    """``inputs @ weight.T + bias`` for (N, in) inputs, as one product: oneDNN's linear on the
    weight as it is where `onednn_weight` gives it, else ``torch.addmm``."""
    ready = onednn_weight(weight, inputs.shape[0], prepacked=False, onednn=onednn)
    if ready is not None:
        return torch.ops.mkldnn._linear_pointwise(inputs.contiguous(), ready, bias, "none", [], "")
    return torch.addmm(bias, inputs, weight.t())


def transposed_gates(grad_gates: Tensor, inputs: Tensor, onednn: bool = True) -> Optional[Tensor]:
    """∂a of all steps as a (4H, T·B) copy (a scratch buffer) for `weight_gradient`, where
    oneDNN's linear can take ``inputs`` transposed as its weight; else None."""
    steps, batch, size = inputs.shape
    if onednn_weight(inputs.reshape(steps * batch, size).t(), 1, prepacked=False,
                     onednn=onednn) is None:
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
