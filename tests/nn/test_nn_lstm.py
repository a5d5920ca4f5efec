"""The perturbed LSTM stack against independent computations: torch.nn.LSTM with copied or
per-sequence weights, gradcheck, and gradient-variance ordering of the estimators."""

import pytest
import torch
from torch import nn

from lm_flipout.nn import LSTM, WeightNoise, use_backend

T, B, I, H = 6, 4, 5, 7


def reference_lstm(weights: dict, x: torch.Tensor, state=None):
    """torch.nn.LSTM (one layer) with the given weights, on x (T, b, I)."""
    ref = nn.LSTM(weights["weight_ih_l0"].shape[1], weights["weight_hh_l0"].shape[1])
    ref = ref.to(x.dtype)
    with torch.no_grad():
        for name, value in weights.items():
            getattr(ref, name).copy_(value)
    return ref(x, state)


def layer_weights(lstm, layer: int = 0) -> dict:
    """Layer ``layer``'s parameters under the names a one-layer torch.nn.LSTM gives them."""
    return {name.replace(f"_l{layer}", "_l0"): p.detach().clone()
            for name, p in lstm.named_parameters() if name.endswith(f"_l{layer}")}


@pytest.mark.parametrize("backend", [None, "reference", "cpu"],
                         ids=["automatic-fused", "reference", "cpu"])
def test_no_noise_matches_torch_lstm_outputs_and_gradients(backend):
    torch.manual_seed(0)
    ours = LSTM(I, H, num_layers=3, backend=backend)
    ref = nn.LSTM(I, H, num_layers=3)
    ref.load_state_dict(ours.state_dict())
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
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, getattr(ref, name).grad, atol=1e-5, rtol=0)


def per_sequence_reference(lstm, sample, x, estimator, layer: int = 0, state=None):
    """Run each sequence n through a plain LSTM with its own W_n (paper eq. 4)."""
    weights = layer_weights(lstm, layer)
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


@pytest.mark.parametrize("backend", [None, "reference"], ids=["automatic", "reference"])
@pytest.mark.parametrize("family", ["gaussian", "dropconnect"])
@pytest.mark.parametrize("estimator", ["shared", "flipout", "independent"])
def test_perturbed_outputs_match_per_sequence_weights(family, estimator, backend):
    torch.manual_seed(1)
    noise = WeightNoise(family, sigma=0.8, estimator=estimator, p=0.5)
    lstm = LSTM(I, H, num_layers=1, recurrent_noise=noise, backend=backend).train()
    x = torch.randn(T, B, I)
    y, _ = lstm(x)
    sample = lstm.last_samples[0].recurrent
    expected = per_sequence_reference(lstm, sample, x, estimator)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_input_noise_flipout_matches_per_sequence_input_weights():
    torch.manual_seed(2)
    lstm = LSTM(I, H, input_noise=WeightNoise("gaussian", 0.5, "flipout")).train()
    x = torch.randn(T, B, I)
    y, _ = lstm(x)
    sample = lstm.last_samples[0].input
    assert lstm.last_samples[0].recurrent is None
    weights = layer_weights(lstm)
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
    for backend in ("reference", "cpu"):  # forcing a backend forces the step path
        with use_backend(backend):
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
    expected = per_sequence_reference(lstm, second, x[:3], "flipout")
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
    mean_y, _ = reference_lstm(layer_weights(flip), x)
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
    """float64 runs on the reference backend, chosen automatically."""
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
        (grad,) = torch.autograd.grad((y[-1] @ readout).mean(), lstm.weight_hh_l0)
        grads.append(grad)
    return torch.stack(grads).var(dim=0).mean().item()


def test_flipout_gradient_variance_far_below_shared_and_near_independent():
    shared = recurrent_grad_variance("shared")
    flipout = recurrent_grad_variance("flipout")
    independent = recurrent_grad_variance("independent")
    assert flipout * 10 <= shared, (flipout, shared)
    assert independent / 2 <= flipout <= independent * 2, (flipout, independent)


def test_bad_lstm_arguments_inputs_and_states_get_clear_errors():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTM(I, 0)
    with pytest.raises(ValueError, match="recurrent_noise"):
        LSTM(I, H, recurrent_noise="flipout")
    with pytest.raises(ValueError, match="proj_size=3 is not supported"):
        LSTM(I, H, proj_size=3)
    with pytest.raises(ValueError, match="give one of them"):
        LSTM(I, H, num_layers=2, dropout=0.2, between_dropout=0.2)
    lstm = LSTM(I, H)
    with pytest.raises(ValueError, match="input x must have shape"):
        lstm(torch.randn(1, T, B, I))
    with pytest.raises(ValueError, match=f"{I} features"):
        lstm(torch.randn(T, B, I + 1))
    with pytest.raises(ValueError, match=rf"state .* shape \(1, {B + 1}, {H}\)"):
        lstm(torch.randn(T, B + 1, I), (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match=rf"shape \(1, {H}\)"):  # unbatched input
        lstm(torch.randn(T, I), (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match="one LayerSamples per layer"):
        LSTM(I, H, bidirectional=True)(torch.randn(T, B, I), samples=[None])
