"""The perturbed LSTM against independent computations: torch.nn.LSTM with copied or
per-sequence weights, gradcheck, and gradient-variance ordering of the estimators."""

import pytest
import torch
from torch import nn

from lm_flipout.nn import LSTM, WeightNoise

T, B, I, H = 6, 4, 5, 7


def set_fused(lstm: LSTM, allowed: bool) -> None:
    for layer in lstm.layers:
        layer.allow_fused = allowed


def reference_lstm(weights: dict, x: torch.Tensor, state=None):
    """torch.nn.LSTM (one layer) with the given weights, on x (T, b, I)."""
    ref = nn.LSTM(weights["weight_ih_l0"].shape[1], weights["weight_hh_l0"].shape[1])
    ref = ref.to(x.dtype)
    with torch.no_grad():
        for name, value in weights.items():
            getattr(ref, name).copy_(value)
    return ref(x, state)


def layer_weights(layer) -> dict:
    return {name: p.detach().clone() for name, p in layer.fused.named_parameters()}


@pytest.mark.parametrize("fused", [True, False])
def test_no_noise_matches_torch_lstm_outputs_and_gradients(fused):
    torch.manual_seed(0)
    ours = LSTM(I, H, num_layers=3)
    set_fused(ours, fused)
    ref = nn.LSTM(I, H, num_layers=3)
    with torch.no_grad():
        for index, layer in enumerate(ours.layers):
            for name, p in layer.fused.named_parameters():
                getattr(ref, name.replace("l0", f"l{index}")).copy_(p)
    x1, x2 = torch.randn(T, B, I), torch.randn(T, B, I)
    y1, state = ours(x1)
    y2, (h, c) = ours(x2, state)  # state carried into a second window
    r1, ref_state = ref(x1)
    r2, (rh, rc) = ref(x2, ref_state)
    for a, b in ((y1, r1), (y2, r2), (h, rh), (c, rc)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    weights = torch.randn_like(y2)
    ((y1.sum() + (y2 * weights).sum() + h.sum() + c.square().sum())).backward()
    ((r1.sum() + (r2 * weights).sum() + rh.sum() + rc.square().sum())).backward()
    for index, layer in enumerate(ours.layers):
        for name, p in layer.fused.named_parameters():
            ref_grad = getattr(ref, name.replace("l0", f"l{index}")).grad
            torch.testing.assert_close(p.grad, ref_grad, atol=1e-5, rtol=0)


def per_sequence_reference(layer, sample, x, estimator):
    """Run each sequence n through a plain LSTM with its own W_n (paper eq. 4)."""
    weights = layer_weights(layer)
    mean = weights["weight_hh_l0"]
    outputs = []
    for n in range(x.shape[1]):
        if estimator == "shared":
            w_n = mean + mean * sample.unit
        elif estimator == "independent":
            w_n = mean + mean * sample.unit[n]
        else:
            delta = mean * sample.unit
            w_n = mean + delta * torch.outer(sample.out_signs[n], sample.in_signs[n])
        y, _ = reference_lstm({**weights, "weight_hh_l0": w_n}, x[:, n : n + 1])
        outputs.append(y)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("family", ["gaussian", "dropconnect"])
@pytest.mark.parametrize("estimator", ["shared", "flipout", "independent"])
def test_perturbed_outputs_match_per_sequence_weights(family, estimator):
    torch.manual_seed(1)
    noise = WeightNoise(family, sigma=0.8, estimator=estimator, p=0.5)
    lstm = LSTM(I, H, num_layers=1, recurrent_noise=noise).train()
    x = torch.randn(T, B, I)
    y, _ = lstm(x)
    sample = lstm.last_samples[0].recurrent
    expected = per_sequence_reference(lstm.layers[0], sample, x, estimator)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_input_noise_flipout_matches_per_sequence_input_weights():
    torch.manual_seed(2)
    lstm = LSTM(I, H, input_noise=WeightNoise("gaussian", 0.5, "flipout")).train()
    x = torch.randn(T, B, I)
    y, _ = lstm(x)
    sample = lstm.last_samples[0].input
    assert lstm.last_samples[0].recurrent is None
    weights = layer_weights(lstm.layers[0])
    mean = weights["weight_ih_l0"]
    for n in range(B):
        w_n = mean + mean * sample.unit * torch.outer(sample.out_signs[n], sample.in_signs[n])
        ref, _ = reference_lstm({**weights, "weight_ih_l0": w_n}, x[:, n : n + 1])
        torch.testing.assert_close(y[:, n : n + 1], ref, atol=1e-5, rtol=0)


def test_shared_noise_fused_and_stepwise_paths_agree_with_gradients():
    torch.manual_seed(3)
    noise = WeightNoise("dropconnect", p=0.3, estimator="shared")
    lstm = LSTM(I, H, num_layers=2, recurrent_noise=noise, input_noise=noise).train()
    x = torch.randn(T, B, I, requires_grad=True)
    y_fused, _ = lstm(x)
    samples = lstm.last_samples
    grads_fused = torch.autograd.grad(y_fused.square().sum(), [x, *lstm.parameters()])
    set_fused(lstm, False)
    y_step, _ = lstm(x, samples=samples)
    grads_step = torch.autograd.grad(y_step.square().sum(), [x, *lstm.parameters()])
    torch.testing.assert_close(y_fused, y_step, atol=1e-5, rtol=0)
    for a, b in zip(grads_fused, grads_step):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_flipout_signs_held_over_time_fresh_across_calls_and_sequences():
    torch.manual_seed(4)
    lstm = LSTM(I, H, recurrent_noise=WeightNoise("gaussian", 1.0, "flipout")).train()
    batch = 64
    x = torch.randn(T, batch, I)
    lstm(x)
    first = lstm.last_samples[0].recurrent
    lstm(x)
    second = lstm.last_samples[0].recurrent
    # one (r, s) per sequence: shape carries no time axis, so every step reuses it
    assert first.out_signs.shape == (batch, 4 * H) and first.in_signs.shape == (batch, H)
    assert set(first.out_signs.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(first.out_signs, second.out_signs)
    assert not torch.equal(first.unit, second.unit)
    assert len({tuple(row.tolist()) for row in first.in_signs}) > batch // 2
    # held over time: a per-step resampled estimator would not match the fixed-W_n reference
    y, _ = lstm(x[:3], samples=[lstm.last_samples[0]])
    expected = per_sequence_reference(lstm.layers[0], second, x[:3], "flipout")
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_identical_sequences_shared_vs_flipout_and_eval_mean_weights():
    torch.manual_seed(5)
    x = torch.randn(T, 1, I).expand(T, 8, I).contiguous()
    shared = LSTM(I, H, recurrent_noise=WeightNoise("gaussian", 1.0, "shared")).train()
    y, _ = shared(x)
    assert torch.allclose(y, y[:, :1].expand_as(y), atol=1e-6)
    flip = LSTM(I, H, recurrent_noise=WeightNoise("gaussian", 1.0, "flipout")).train()
    y, _ = flip(x)
    assert not torch.allclose(y[:, 0], y[:, 1], atol=1e-3)
    flip.eval()
    y1, _ = flip(x)
    y2, _ = flip(x)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    mean_y, _ = reference_lstm(layer_weights(flip.layers[0]), x)
    torch.testing.assert_close(y1, mean_y, atol=1e-5, rtol=0)


def test_mc_sampling_switch_draws_noise_in_eval():
    from lm_flipout.nn import set_mc_sampling

    torch.manual_seed(6)
    lstm = LSTM(I, H, recurrent_noise=WeightNoise("gaussian", 1.0, "flipout")).eval()
    x = torch.randn(T, B, I)
    set_mc_sampling(lstm, True)
    a, _ = lstm(x)
    b, _ = lstm(x)
    assert not torch.allclose(a, b)
    set_mc_sampling(lstm, False)
    c, _ = lstm(x)
    d, _ = lstm(x)
    torch.testing.assert_close(c, d, atol=0, rtol=0)


def test_gradcheck_through_flipout_layer_with_fixed_noise():
    torch.manual_seed(7)
    lstm = LSTM(3, 4, num_layers=2, recurrent_noise=WeightNoise("gaussian", 1.0, "flipout"),
                input_noise=WeightNoise("dropconnect", p=0.5, estimator="flipout"))
    lstm = lstm.double().train()
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    lstm(x)
    samples = lstm.last_samples
    params = list(lstm.parameters())

    names = [name for name, _ in lstm.named_parameters()]

    def run(x, *weights):
        return torch.func.functional_call(
            lstm, dict(zip(names, weights)), (x,), {"samples": samples}
        )[0]

    inputs = [x] + [p.detach().clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5)


def recurrent_grad_variance(estimator: str, draws: int = 300) -> float:
    """Mean over W_h entries of the variance, over noise draws, of dL/dW_h for a batch of
    64 copies of one sequence."""
    torch.manual_seed(8)
    lstm = LSTM(3, 16, recurrent_noise=WeightNoise("gaussian", 1.0, estimator)).train()
    x = torch.randn(5, 1, 3).expand(5, 64, 3)
    readout = torch.randn(16)
    grads = []
    for _ in range(draws):
        y, _ = lstm(x)
        (grad,) = torch.autograd.grad((y[-1] @ readout).mean(), lstm.layers[0].weight_hh)
        grads.append(grad)
    return torch.stack(grads).var(dim=0).mean().item()


def test_flipout_gradient_variance_far_below_shared_and_near_independent():
    shared = recurrent_grad_variance("shared")
    flipout = recurrent_grad_variance("flipout")
    independent = recurrent_grad_variance("independent")
    assert flipout * 10 <= shared, (flipout, shared)
    assert independent / 2 <= flipout <= independent * 2, (flipout, independent)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(family="laplace"), "family"),
        (dict(estimator="local"), "estimator"),
        (dict(sigma=-0.1), "sigma"),
        (dict(family="dropconnect", p=1.0, estimator="shared"), "p"),
        (dict(family="dropconnect", p=-0.2, estimator="shared"), "p"),
        (dict(family="dropconnect", p=0.3, estimator="flipout"), "p=0.5"),
    ],
)
def test_bad_noise_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        WeightNoise(**kwargs)


def test_bad_lstm_arguments_and_input_rank():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTM(I, 0)
    with pytest.raises(ValueError, match="recurrent_noise"):
        LSTM(I, H, recurrent_noise="flipout")
    lstm = LSTM(I, H)
    with pytest.raises(ValueError, match="input x"):
        lstm(torch.randn(B, I))
    with pytest.raises(ValueError, match="state"):
        lstm(torch.randn(T, B, I), (torch.zeros(1, B + 1, H), torch.zeros(1, B + 1, H)))


def autograd_flipout_reference(x, weight_ih, bias, extra, h, c, weight, delta, out_signs,
                               in_signs, mask):
    """Plain autograd loop of paper eq. 5 inside an LSTM, for comparing gradients."""
    outputs = []
    for x_t, extra_t in zip(x, extra):
        u = h * mask
        gates = (x_t @ weight_ih.T + bias + extra_t + u @ weight.T
                 + ((u * in_signs) @ delta.T) * out_signs)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


@pytest.mark.parametrize("onednn, backward_prepacked",
                         [(True, False), (True, True), (False, False)],
                         ids=["onednn", "onednn-prepacked-backward", "mm"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-cell", "torch-cell"])
@pytest.mark.parametrize("flipout, masked", [(True, True), (False, True), (True, False),
                                             (False, False)],
                         ids=["flipout-masked", "masked", "flipout", "plain"])
# sizes off and on multiples of 8: both weight-gradient orientations; a batch large enough
# for the compiled kernels to split a step across threads
@pytest.mark.parametrize("batch, inputs, hidden", [(5, 3, 6), (8, 64, 64), (300, 5, 64)])
def test_hand_written_backward_matches_autograd_reference(monkeypatch, onednn, backward_prepacked,
                                                          compiled, flipout, masked, batch,
                                                          inputs, hidden):
    """Every way of running the products: oneDNN (backward on the transposed view or on a
    prepacked copy) and torch.mm; the elementwise work on compiled kernels and on PyTorch
    ops; with and without flipout noise and a hidden-state mask; every input's gradient,
    the extra input term's included."""
    from lm_flipout.nn import cell_kernels, recurrence
    from lm_flipout.nn.recurrence import lstm_layer

    if compiled and cell_kernels.library() is None:
        pytest.skip("no C compiler: the compiled kernels are not built here")
    monkeypatch.setattr(cell_kernels, "ENABLED", compiled)
    monkeypatch.setattr(recurrence, "USE_ONEDNN", onednn)
    monkeypatch.setattr(recurrence, "PREPACK_BACKWARD_MIN_STEPS",
                        1 if backward_prepacked else 10**9)
    torch.manual_seed(9)
    steps = 7
    leaves = [torch.randn(steps, batch, inputs), torch.randn(4 * hidden, inputs) / inputs**0.5,
              torch.randn(4 * hidden), torch.randn(steps, batch, 4 * hidden),
              torch.randn(batch, hidden), torch.randn(batch, hidden),
              torch.randn(4 * hidden, hidden) / hidden**0.5]
    leaves = [t.requires_grad_(True) for t in leaves]
    unit = torch.randn(4 * hidden, hidden)
    out_signs = torch.randint(0, 2, (batch, 4 * hidden)).float() * 2 - 1
    in_signs = torch.randint(0, 2, (batch, hidden)).float() * 2 - 1
    mask = (torch.rand(batch, hidden) > 0.3).float() / 0.7
    x, weight_ih, bias, extra, h0, c0, weight = leaves
    noise = (unit, out_signs, in_signs) if flipout else (None, None, None)
    y, (h, c) = lstm_layer(x, weight_ih, bias, (h0, c0), weight, *noise,
                           mask if masked else None, extra)
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
    for repeat in range(2):  # the second backward runs on the scratch buffers of the first
        grads = torch.autograd.grad(loss, leaves, retain_graph=True)
        ref_grads = torch.autograd.grad(ref_loss, leaves, retain_graph=True)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


def test_layer_gradients_survive_the_next_call():
    """Gradients handed out by one backward are not overwritten by the next call (the
    backward reuses scratch buffers on CPU)."""
    from lm_flipout.nn.recurrence import lstm_layer

    torch.manual_seed(4)
    x = torch.randn(5, 3, 4, requires_grad=True)
    params = [torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True),
              torch.randn(8, 2, requires_grad=True)]
    state = (torch.zeros(3, 2), torch.zeros(3, 2))

    def gradients(scale: float) -> list[torch.Tensor]:
        y, _ = lstm_layer(x * scale, params[0], params[1], state, params[2])
        return list(torch.autograd.grad(y.sum(), [x, *params]))

    first = gradients(1.0)
    kept = [g.clone() for g in first]
    gradients(-3.0)
    for a, b in zip(first, kept):
        assert torch.equal(a, b)


def test_flipout_layer_trains_after_a_call_under_inference_mode():
    """Scratch buffers are not made under inference mode, where they would be inference
    tensors that a later training call could not write. Runs in a fresh thread, whose
    scratch buffers (kept per thread) do not exist yet."""
    import threading

    from lm_flipout.nn.recurrence import lstm_layer

    torch.manual_seed(5)
    x, weight_ih, bias = torch.randn(4, 3, 5), torch.randn(8, 5), torch.randn(8)
    weight, unit = torch.randn(8, 2, requires_grad=True), torch.randn(8, 2)
    out_signs, in_signs = torch.ones(3, 8), -torch.ones(3, 2)
    state = (torch.zeros(3, 2), torch.zeros(3, 2))
    results = {}

    def run() -> torch.Tensor:
        return lstm_layer(x, weight_ih, bias, state, weight, unit, out_signs, in_signs)[0]

    def inference_then_training() -> None:
        try:
            with torch.inference_mode():
                results["inference"] = run().clone()
            y = run()
            y.sum().backward()
            results["training"] = y.detach()
        except RuntimeError as error:
            results["error"] = error

    thread = threading.Thread(target=inference_then_training)
    thread.start()
    thread.join()
    assert "error" not in results, results.get("error")
    torch.testing.assert_close(results["training"], results["inference"])
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unit noise U takes no gradient"):
        lstm_layer(x, weight_ih, bias, state, weight, unit.requires_grad_(True))


@pytest.mark.parametrize("prepacked", [True, False], ids=["prepacked", "view"])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_step_product_uses_onednn_on_cpu_and_equals_mm(prepacked, transposed):
    from lm_flipout.nn.recurrence import onednn_weight, step_product

    weight = torch.randn(12, 48).t() if transposed else torch.randn(48, 12)
    x, base = torch.randn(5, 12), torch.randn(5, 48)
    product = step_product(weight, rows=5, prepacked=prepacked)
    torch.testing.assert_close(product(x), x @ weight.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(product(x, base=base), base + x @ weight.T, atol=1e-5, rtol=1e-5)
    if torch.backends.mkldnn.is_available():  # the fast path is really there on CPU
        assert onednn_weight(weight, 5, prepacked) is not None
    assert onednn_weight(weight.double(), 5, prepacked) is None


def test_lstm_layer_names_the_argument_that_does_not_fit():
    """Checked before anything runs: the compiled kernels would otherwise read past a
    tensor of the wrong size, or a missing sign vector."""
    from lm_flipout.nn.recurrence import lstm_layer

    x, weight_ih, bias = torch.randn(4, 3, 5), torch.randn(8, 5), torch.randn(8)
    weight, unit = torch.randn(8, 2), torch.randn(8, 2)
    state = (torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unit, out_signs and in_signs together"):
        lstm_layer(x, weight_ih, bias, state, weight, unit, in_signs=torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"weight must have shape \(8, 2\)"):
        lstm_layer(x, weight_ih, bias, state, torch.randn(7, 2))
    with pytest.raises(ValueError, match=r"out_signs must have shape \(3, 8\) or \(1, 8\)"):
        lstm_layer(x, weight_ih, bias, state, weight, unit, torch.ones(3, 7), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \(3, 2\)"):
        lstm_layer(x, weight_ih, bias, (state[0], torch.zeros(2, 2)), weight)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-cell", "torch-cell"])
def test_a_bool_or_shared_mask_acts_like_its_float_rows(monkeypatch, compiled):
    from lm_flipout.nn import cell_kernels
    from lm_flipout.nn.recurrence import lstm_layer

    monkeypatch.setattr(cell_kernels, "ENABLED", compiled)
    torch.manual_seed(6)
    x, weight_ih, bias, weight = (torch.randn(4, 3, 5), torch.randn(8, 5), torch.randn(8),
                                  torch.randn(8, 2))
    state = (torch.randn(3, 2), torch.randn(3, 2))
    keep = torch.tensor([[True, False]])
    expected, _ = lstm_layer(x, weight_ih, bias, state, weight, mask=keep.float().expand(3, 2))
    for mask in (keep, keep.expand(3, 2), keep.float()):
        y, _ = lstm_layer(x, weight_ih, bias, state, weight, mask=mask)
        torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)
