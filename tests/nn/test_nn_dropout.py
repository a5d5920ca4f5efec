"""Activation regularizers against hand computations of their masks."""

import pytest
import torch

from lm_flipout.nn import (
    LSTM,
    EmbeddingDropout,
    LockedDropout,
    NaiveDropout,
    WeightNoise,
    set_mc_sampling,
)


def test_locked_dropout_one_mask_per_sequence_held_over_time():
    torch.manual_seed(0)
    drop = LockedDropout(0.4).train()
    x = torch.ones(9, 50, 30)
    y = drop(x)
    mask = y[0]
    assert torch.equal(y, mask.expand_as(y))  # same mask at every step
    torch.testing.assert_close(mask.unique(), torch.tensor([0.0, 1 / 0.6]))
    assert not torch.equal(mask[0], mask[1])  # per sequence
    assert abs((mask == 0).float().mean().item() - 0.4) < 0.05
    assert torch.equal(drop.eval()(x), x)


def test_naive_dropout_draws_a_fresh_mask_per_step():
    torch.manual_seed(1)
    y = NaiveDropout(0.5).train()(torch.ones(4, 10, 20))
    assert not torch.equal(y[0], y[1])
    assert set(y.unique().tolist()) <= {0.0, 2.0}


def test_embedding_dropout_drops_whole_word_rows():
    torch.manual_seed(2)
    weight = torch.randn(40, 6)
    drop = EmbeddingDropout(0.5).train()
    tokens = torch.arange(40).repeat(3, 1)  # every word, three times
    out = drop(tokens, weight)
    dropped = (out[0] == 0).all(dim=1)
    assert 0 < dropped.sum() < 40
    for row in out:  # a dropped word is dropped at every position
        assert torch.equal((row == 0).all(dim=1), dropped)
    torch.testing.assert_close(out[0][~dropped], weight[~dropped] * 2)
    torch.testing.assert_close(drop.eval()(tokens, weight), weight[tokens])


def test_hidden_state_dropout_matches_masked_recurrence_reference():
    torch.manual_seed(3)
    lstm = LSTM(3, 5, hidden_dropout=0.5).train()
    x = torch.randn(4, 2, 3)
    layer = lstm.layers[0]
    torch.manual_seed(10)
    y, _ = lstm(x)
    torch.manual_seed(10)
    mask = layer.hidden_dropout.mask(2, 5, x)
    w_ih, w_hh, bias = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.layer_weights(0).bias
    h = c = torch.zeros(2, 5)
    for t in range(4):
        gates = x[t] @ w_ih.T + (h * mask) @ w_hh.T + bias
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        torch.testing.assert_close(y[t], h, atol=1e-6, rtol=0)


def test_dropconnect_shared_drops_entries_at_rate_p_with_rescaling():
    torch.manual_seed(4)
    lstm = LSTM(8, 32, recurrent_noise=WeightNoise("dropconnect", p=0.3, estimator="shared"))
    lstm.train()(torch.randn(2, 3, 8))
    sample = lstm.last_samples[0].recurrent
    mean = lstm.weight_hh_l0.detach()
    perturbed = mean + sample.delta(mean)
    kept = perturbed != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.03
    torch.testing.assert_close(perturbed[kept], mean[kept] / 0.7)


def test_set_mc_sampling_reaches_every_stochastic_module():
    lstm = LSTM(3, 4, num_layers=2, hidden_dropout=0.2, between_dropout=0.2)
    set_mc_sampling(lstm, True)
    flags = [m.sample_in_eval for m in lstm.modules() if hasattr(m, "sample_in_eval")]
    assert len(flags) >= 5 and all(flags)


@pytest.mark.parametrize("cls", [LockedDropout, NaiveDropout, EmbeddingDropout])
def test_bad_dropout_rate_names_p(cls):
    with pytest.raises(ValueError, match="p="):
        cls(1.0)
