"""The reference backend (lm_flipout/nn/cell.py, recurrence.py) against an independent
computation: the LSTM with flipout (Wen et al. 2018, eq. 5) written with autograd."""

import pytest
import torch

from helpers_nn import autograd_flipout_reference, layer_operands
from lm_flipout.nn import lstm_layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("flipout, masked", [(True, True), (False, True), (True, False),
                                             (False, False)],
                         ids=["flipout-masked", "masked", "flipout", "plain"])
@pytest.mark.parametrize("batch, inputs, hidden", [(5, 3, 6), (8, 64, 64), (300, 5, 64)])
def test_reference_backward_matches_autograd_reference(flipout, masked, batch, inputs, hidden,
                                                      dtype):
    """The reference backend's hand-written backward against autograd through eq. 5: with
    and without flipout noise and a hidden-state mask; every input's gradient, the extra
    input term's included; in float32 and float64."""
    torch.manual_seed(9)
    steps = 7
    operands = layer_operands(steps, batch, inputs, hidden, dtype)
    leaves, (unit, out_signs, in_signs, mask) = operands.leaves, operands.options
    x, weight_ih, bias, extra, h0, c0, weight = leaves
    noise = (unit, out_signs, in_signs) if flipout else (None, None, None)
    y, (h, c) = lstm_layer(x, weight_ih, bias, (h0, c0), weight, *noise,
                           mask if masked else None, extra, backend="reference")
    if not flipout:  # the reference with ΔŴ = 0 and no mask is the plain LSTM
        unit = torch.zeros_like(unit)
    if not masked:
        mask = torch.ones_like(mask)
    ry, rh, rc = autograd_flipout_reference(x, weight_ih, bias, extra, h0, c0, weight,
                                            weight * unit, out_signs, in_signs, mask)
    for a, b in ((y, ry), (h, rh), (c, rc)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    probes = [torch.randn_like(t) for t in (y, h, c)]
    loss = sum((t * p).sum() for t, p in zip((y, h, c), probes))
    ref_loss = sum((t * p).sum() for t, p in zip((ry, rh, rc), probes))
    # weight gradients sum over steps × batch terms: float32 rounding grows with its root
    tolerance = 1e-5 * max(1.0, (steps * batch / 56) ** 0.5)
    for _repeat in range(2):  # a second backward through the same graph gives the same
        grads = torch.autograd.grad(loss, leaves, retain_graph=True)
        ref_grads = torch.autograd.grad(ref_loss, leaves, retain_graph=True)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)
