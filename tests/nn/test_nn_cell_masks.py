"""Recurrent dropout on the cell update (Semeniuta et al. 2016) and zoneout (Krueger et al.
2017) against an independent per-step loop written here with autograd: outputs and
gradients, in training (masks held fixed) and in evaluation (zoneout's expectation)."""

import pytest
import torch
from torch import nn

from lm_flipout.nn import LSTM, WeightNoise, lstm_layer, set_mc_sampling
from lm_flipout.nn.backends import REFERENCE, select_backend
from lm_flipout.nn.cell import CellOptions
from lm_flipout.nn.cell_masks import CellMasks

T, B, I, H = 6, 4, 5, 7


def masked_loop(x, weight_ih, bias, h, c, weights, hidden_mask, update, keep_c, keep_h):
    """The LSTM written out step by step: ``weights`` is one (4H, H) matrix or one per
    sequence (B, 4H, H); the masks are (T, B, H) or broadcast to it (1 where unused).
    c̃ = f c + i (d^g g), h̃ = o tanh(c̃), then c = d^c c + (1 − d^c) c̃, same for h."""
    outputs = []
    for t in range(x.shape[0]):
        u = h * hidden_mask
        if weights.dim() == 3:
            recurrent = torch.einsum("boh,bh->bo", weights, u)
        else:
            recurrent = u @ weights.T
        a_i, a_f, a_g, a_o = (x[t] @ weight_ih.T + bias + recurrent).chunk(4, dim=1)
        c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * (update[t] * torch.tanh(a_g))
        h_new = torch.sigmoid(a_o) * torch.tanh(c_new)
        c = keep_c[t] * c + (1 - keep_c[t]) * c_new
        h = keep_h[t] * h + (1 - keep_h[t]) * h_new
        outputs.append(h)
    return torch.stack(outputs), h, c


def random_masks(dtype=torch.float64, update_steps=T):
    update = (torch.rand(update_steps, B, H) >= 0.25).to(dtype) / 0.75
    keep_c = (torch.rand(T, B, H) < 0.5).to(dtype)
    keep_h = (torch.rand(T, B, H) < 0.3).to(dtype)
    return update, keep_c, keep_h


def assert_same_outputs_and_gradients(ours, theirs, leaves, tolerance):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=0)
    probes = [torch.randn_like(t) for t in ours]
    grads = torch.autograd.grad(sum((t * p).sum() for t, p in zip(ours, probes)), leaves)
    expected = torch.autograd.grad(sum((t * p).sum() for t, p in zip(theirs, probes)), leaves)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("backend", [None, "reference"], ids=["automatic", "reference"])
@pytest.mark.parametrize("flipout, masked", [(False, False), (True, True)],
                         ids=["plain", "flipout-hidden-mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("update_steps", [T, 1], ids=["per-step", "per-sequence"])
def test_training_masks_match_autograd_loop(backend, flipout, masked, dtype, update_steps):
    """Masks held fixed, with and without flipout and a hidden-state mask: every output and
    every input's gradient, on each backend automatic choice may pick."""
    torch.manual_seed(3)
    leaves = [torch.randn(T, B, I), torch.randn(4 * H, I) / I**0.5, torch.randn(4 * H),
              torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, H) / H**0.5]
    x, weight_ih, bias, h0, c0, weight = [t.to(dtype).requires_grad_() for t in leaves]
    update, keep_c, keep_h = random_masks(dtype, update_steps)
    hidden_mask = ((torch.rand(B, H) > 0.3).to(dtype) / 0.7) if masked else None
    noise = {}
    weights = weight
    if flipout:
        unit = torch.randn(4 * H, H, dtype=dtype)
        out_signs = torch.randint(0, 2, (B, 4 * H)).to(dtype) * 2 - 1
        in_signs = torch.randint(0, 2, (B, H)).to(dtype) * 2 - 1
        noise = dict(unit=unit, out_signs=out_signs, in_signs=in_signs)
        weights = weight + weight * unit * torch.einsum("bo,bh->boh", out_signs, in_signs)
    y, (h, c) = lstm_layer(x, weight_ih, bias, (h0, c0), weight, mask=hidden_mask,
                           backend=backend, update_mask=update, zoneout_cell=keep_c,
                           zoneout_hidden=keep_h, **noise)
    expected = masked_loop(x, weight_ih, bias, h0, c0, weights,
                           1 if hidden_mask is None else hidden_mask,
                           update.expand(T, B, H), keep_c, keep_h)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    assert_same_outputs_and_gradients((y, h, c), expected, [x, weight_ih, bias, h0, c0, weight],
                                      tolerance)


def test_zoneout_new_h_comes_from_the_candidate_cell_not_the_zoned_one():
    """With c fully kept (d^c = 1) and h never kept (d^h = 0), h_t = o tanh(c̃_t) still
    moves while c_t stays c_{t-1}."""
    torch.manual_seed(4)
    x, weight_ih, bias = torch.randn(1, B, I), torch.randn(4 * H, I), torch.randn(4 * H)
    h0, c0, weight = torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, H)
    ones, zeros = torch.ones(1, B, H), torch.zeros(1, B, H)
    _, (h, c) = lstm_layer(x, weight_ih, bias, (h0, c0), weight, zoneout_cell=ones,
                           zoneout_hidden=zeros)
    a_i, a_f, a_g, a_o = (x[0] @ weight_ih.T + bias + h0 @ weight.T).chunk(4, dim=1)
    candidate = torch.sigmoid(a_f) * c0 + torch.sigmoid(a_i) * torch.tanh(a_g)
    torch.testing.assert_close(c, c0)
    torch.testing.assert_close(h, torch.sigmoid(a_o) * torch.tanh(candidate))


class MaskSpy:
    """Records the hidden-state masks and the cell masks each layer of an `LSTM` draws."""

    def __init__(self, lstm: LSTM) -> None:
        self.hidden, self.cell = [], []
        for layer in lstm.layers:
            layer.hidden_dropout.mask = self._recording(layer.hidden_dropout.mask, self.hidden)
            layer.cell_masks.draw = self._recording(layer.cell_masks.draw, self.cell)

    @staticmethod
    def _recording(draw, into: list):
        def recording(*args):
            into.append(draw(*args))
            return into[-1]
        return recording


@pytest.mark.parametrize("family, estimator", [
    (None, None), ("gaussian", "shared"), ("gaussian", "flipout"), ("gaussian", "independent"),
    ("dropconnect", "shared"), ("dropconnect", "flipout"), ("dropconnect", "independent")])
def test_layer_in_training_matches_loop_with_its_masks_and_weights(family, estimator):
    """Every weight-noise family and estimator with both regularizers and a hidden-state
    mask, under automatic backend choice: the loop with each sequence's own W_n and the
    masks the layer drew gives the same outputs and gradients."""
    torch.manual_seed(5)
    noise = WeightNoise(family, sigma=0.6, estimator=estimator) if family else None
    lstm = LSTM(I, H, recurrent_noise=noise, hidden_dropout=0.3, cell_dropout=0.25,
                zoneout_cell=0.5, zoneout_hidden=0.05).train()
    spy = MaskSpy(lstm)
    x = torch.randn(T, B, I, requires_grad=True)
    y, (h, c) = lstm(x)
    layer, masks = lstm.layer_weights(0), spy.cell[0]
    assert [m.shape for m in masks] == [(T, B, H)] * 3
    sample = lstm.last_samples[0].recurrent
    weights = layer.weight_hh
    if sample is not None:
        delta = sample.delta(layer.weight_hh)
        if estimator == "flipout":
            delta = delta * torch.einsum("bo,bh->boh", sample.out_signs, sample.in_signs)
        weights = layer.weight_hh + delta
    zeros = torch.zeros(B, H)
    expected = masked_loop(x, layer.weight_ih, layer.bias, zeros, zeros, weights,
                           spy.hidden[0], *masks)
    leaves = [x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0]
    assert_same_outputs_and_gradients((y, h[0], c[0]), expected, leaves, 1e-5)


def copied_torch_lstm(lstm) -> nn.LSTM:
    plain = nn.LSTM(lstm.input_size, lstm.hidden_size)
    plain.load_state_dict(lstm.state_dict())
    return plain


@pytest.mark.parametrize("backend", [None, "reference"], ids=["automatic", "reference"])
def test_eval_zoneout_is_its_expectation_and_cell_dropout_the_plain_cell(backend):
    """In eval, c_t = z_c c_{t-1} + (1 − z_c) c̃_t and the same for h (gradients too);
    recurrent dropout alone gives torch.nn.LSTM's outputs."""
    torch.manual_seed(6)
    lstm = LSTM(I, H, cell_dropout=0.25, zoneout_cell=0.5, zoneout_hidden=0.05,
                backend=backend).eval()
    x = torch.randn(T, B, I, requires_grad=True)
    h0, c0 = torch.randn(1, B, H), torch.randn(1, B, H)
    y, (h, c) = lstm(x, (h0, c0))
    layer = lstm.layer_weights(0)
    expected = masked_loop(x, layer.weight_ih, layer.bias, h0[0], c0[0], layer.weight_hh, 1,
                           torch.ones(T, 1, 1), torch.full((T, 1, 1), 0.5),
                           torch.full((T, 1, 1), 0.05))
    leaves = [x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_hh_l0]
    assert_same_outputs_and_gradients((y, h[0], c[0]), expected, leaves, 1e-5)

    dropout_only = LSTM(I, H, cell_dropout=0.25, backend=backend).eval()
    y, _ = dropout_only(x)
    torch.testing.assert_close(y, copied_torch_lstm(dropout_only)(x)[0],
                               atol=1e-5, rtol=0)


def test_masks_per_step_by_default_per_sequence_as_option_with_their_rates():
    torch.manual_seed(7)
    like, steps, batch, hidden = torch.zeros((), dtype=torch.float64), 50, 40, 30
    per_step = CellMasks(cell_dropout=0.25, zoneout_cell=0.5, zoneout_hidden=0.05).train()
    update, keep_c, keep_h = per_step.draw(steps, batch, hidden, like)
    assert set(update.unique().tolist()) == {0.0, 1 / 0.75}  # inverted scaling
    assert not torch.equal(update[0], update[1])  # a fresh mask per step
    assert abs(update.mean().item() - 1.0) < 0.03
    assert set(keep_c.unique().tolist()) == {0.0, 1.0}
    assert abs(keep_c.mean().item() - 0.5) < 0.02 and abs(keep_h.mean().item() - 0.05) < 0.01
    assert not torch.equal(keep_c[0], keep_c[1])  # zoneout: per unit and per step
    per_sequence = CellMasks(cell_dropout=0.25, per_step=False).train()
    update, keep_c, keep_h = per_sequence.draw(steps, batch, hidden, like)
    assert keep_c is None and keep_h is None
    assert torch.equal(update[0], update[-1]) and not torch.equal(update[0, 0], update[0, 1])


def test_automatic_choice_runs_the_reference_and_a_named_cpu_backend_refuses():
    x = torch.randn(T, B, I)
    options = CellOptions(zoneout_cell=torch.ones(T, B, H))
    assert select_backend(x, options) is REFERENCE
    lstm = LSTM(I, H, zoneout_cell=0.5, backend="cpu").train()
    with pytest.raises(ValueError, match="zoneout_cell.*use 'reference'"):
        lstm(x)


def test_mc_sampling_draws_the_masks_in_eval():
    torch.manual_seed(8)
    lstm = LSTM(I, H, cell_dropout=0.25, zoneout_cell=0.5, zoneout_hidden=0.05).eval()
    x = torch.randn(T, B, I)
    with torch.no_grad():
        expectation = lstm(x)[0]
        assert torch.equal(lstm(x)[0], expectation)
        set_mc_sampling(lstm, True)
        first, second = lstm(x)[0], lstm(x)[0]
        set_mc_sampling(lstm, False)
        assert torch.equal(lstm(x)[0], expectation)
    assert not torch.allclose(first, second) and not torch.allclose(first, expectation)


@pytest.mark.parametrize("key", ["cell_dropout", "zoneout_cell", "zoneout_hidden"])
def test_rates_outside_zero_one_are_refused(key):
    with pytest.raises(ValueError, match=f"{key}: p=1.0 must lie in"):
        LSTM(I, H, **{key: 1.0})


def test_a_mask_of_the_wrong_shape_is_named():
    x, state = torch.randn(T, B, I), (torch.zeros(B, H), torch.zeros(B, H))
    with pytest.raises(ValueError, match=r"zoneout_hidden must have shape \(6, 4, 7\)"):
        lstm_layer(x, torch.randn(4 * H, I), torch.zeros(4 * H), state, torch.randn(4 * H, H),
                   zoneout_hidden=torch.ones(T, B, H + 1))
