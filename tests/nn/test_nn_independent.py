"""The independent estimator: per-sequence weights formed once per call, not per step."""

import torch
from torch import nn

from lm_flipout.nn import LSTM, WeightNoise

I, H, B = 5, 16, 4


def saved_bytes(run) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``run`` runs."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def test_independent_saves_its_per_sequence_weights_once_not_per_step():
    torch.manual_seed(0)
    lstm = LSTM(I, H, recurrent_noise=WeightNoise("gaussian", 1.0, "independent")).train()
    per_sequence_weights = B * 4 * H * H * 4  # one (B, 4H, H) float32 tensor

    def saved(steps: int) -> int:
        x = torch.randn(steps, B, I)
        return saved_bytes(lambda: lstm(x))

    short, long = saved(2), saved(12)
    # what each step adds: a few (B, 4H) and (B, H) activations, well under a (B, 4H, H)
    # tensor (forming ΔW_n per step saved one, or more, every step)
    assert (long - short) / 10 < per_sequence_weights / 4
    assert short >= 2 * per_sequence_weights  # U_n and W_n themselves are saved, once


def test_independent_matches_per_sequence_explicit_weights_with_gradients():
    torch.manual_seed(1)
    lstm = LSTM(I, H, recurrent_noise=WeightNoise("dropconnect", p=0.3,
                                                  estimator="independent")).train()
    x = torch.randn(6, B, I)
    y, (h, c) = lstm(x)
    sample = lstm.last_samples[0].recurrent
    (grad,) = torch.autograd.grad(y.square().sum(), lstm.weight_hh_l0)
    expected_grad = torch.zeros_like(grad)
    for n in range(B):
        ref = nn.LSTM(I, H)
        ref.load_state_dict(lstm.state_dict())
        mean = ref.weight_hh_l0
        weight_n = mean + mean * sample.unit[n]  # W_n = W̄ + W̄ ∘ U_n
        y_n, _ = torch.func.functional_call(ref, {"weight_hh_l0": weight_n}, (x[:, n : n + 1],))
        torch.testing.assert_close(y[:, n : n + 1], y_n, atol=1e-5, rtol=0)
        expected_grad += torch.autograd.grad(y_n.square().sum(), mean)[0]
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
