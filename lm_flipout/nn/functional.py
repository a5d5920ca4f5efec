"""One LSTM layer as a function of its tensors: the arguments checked, then run on the
backend chosen for the call (see `lm_flipout.nn.backends`)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .backends import BackendChoice, select_backend
from .cell import CellOptions, LayerInputs


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


def _per_step(name: str, mask: Optional[Tensor], x: Tensor, hidden: int) -> Optional[Tensor]:
    """A per-step mask as (T, B, H), expanded (not copied) from (T or 1, B or 1, H)."""
    if mask is None:
        return None
    steps, batch, _ = x.shape
    if (mask.dim() != 3 or mask.shape[0] not in (1, steps) or mask.shape[1] not in (1, batch)
            or mask.shape[2] != hidden):
        raise ValueError(f"lstm_layer: {name} must have shape ({steps}, {batch}, {hidden}), "
                         f"with 1 allowed for the steps or the batch, for x of shape "
                         f"{tuple(x.shape)} and hidden size {hidden}; got {tuple(mask.shape)}")
    return mask.expand(steps, batch, hidden)


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
    backend: BackendChoice = None,
    update_mask: Optional[Tensor] = None,
    zoneout_cell: Optional[Tensor] = None,
    zoneout_hidden: Optional[Tensor] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run one layer on x (T, B, in); returns outputs (T, B, H) and the final (h, c). With
    flipout, ``unit`` is the unit noise U of ΔŴ = W̄ ∘ U (`NoiseSample.unit`), which takes no
    gradient. ``update_mask`` (recurrent dropout's d^g, scaled), ``zoneout_cell`` and
    ``zoneout_hidden`` (zoneout's d^c, d^h: 1 keeps the previous value, or the rates
    themselves for the expectation) are per-step masks, (T, B, H) or broadcastable from
    (T or 1, B or 1, H); see `lm_flipout.nn.cell`. ``backend``: a name or `Backend`, else
    the one of `use_backend` or automatic choice."""
    if unit is not None and unit.requires_grad:
        raise ValueError("lstm_layer: the unit noise U takes no gradient here (ΔŴ = W̄ ∘ U "
                         "passes its gradient to W̄ only); pass unit.detach().")
    _check_shapes(x, weight_ih, bias, state, weight, unit, out_signs, in_signs, mask, extra)
    inputs = LayerInputs(x, weight_ih, bias, state[0], state[1], weight, extra)
    hidden = state[0].shape[-1]
    options = CellOptions(unit, out_signs, in_signs, mask,
                          *(_per_step(name, m, x, hidden) for name, m in (
                              ("update_mask", update_mask), ("zoneout_cell", zoneout_cell),
                              ("zoneout_hidden", zoneout_hidden))))
    outputs, h, c = select_backend(x, options, backend).run(inputs, options)
    return outputs, (h, c)
