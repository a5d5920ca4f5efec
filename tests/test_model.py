"""LanguageModel wiring: NLL against logits, tying, state carrying, init options."""

import math
import re

import pytest
import torch

from helpers import REPO
from lm_flipout.errors import ConfigError
from lm_flipout.model import LanguageModel, ModelConfig, NoiseConfig


def small_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=30, embedding_size=8, hidden_size=12, num_layers=2)
    base.update(overrides)
    return ModelConfig(**base)


def test_nll_equals_cross_entropy_of_logits():
    torch.manual_seed(0)
    model = LanguageModel(small_config()).eval()
    tokens = torch.randint(0, 30, (7, 3))
    targets = torch.randint(0, 30, (7, 3))
    logits, _ = model(tokens)
    nll, _ = model(tokens, targets=targets)
    log_probs = logits.log_softmax(-1)
    expected = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(nll, expected)


def test_untrained_model_is_close_to_uniform():
    model = LanguageModel(small_config(vocab_size=100)).eval()
    tokens = torch.randint(0, 100, (5, 2))
    nll, _ = model(tokens, targets=tokens)
    assert abs(nll.mean().item() - math.log(100)) < 0.1


def test_carried_state_equals_one_long_window_in_eval():
    torch.manual_seed(1)
    model = LanguageModel(small_config(noise=NoiseConfig("gaussian", "flipout"))).eval()
    tokens = torch.randint(0, 30, (10, 4))
    whole, _ = model(tokens)
    first, state = model(tokens[:6])
    second, _ = model(tokens[6:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-6, rtol=0)


def test_tied_weights_share_the_embedding_and_resize_the_last_layer():
    model = LanguageModel(small_config(tie_weights=True))
    assert model.decoder.weight is model.embedding.weight
    assert model.lstm.sizes == [12, 8]
    untied = LanguageModel(small_config())
    assert model.num_parameters() < untied.num_parameters()
    _, (h, c) = model(torch.randint(0, 30, (3, 2)))
    assert [t.shape for t in h] == [(2, 12), (2, 8)]


def test_forget_bias_and_orthogonal_init():
    model = LanguageModel(small_config(forget_bias=1.0, orthogonal_init=True))
    for index, size in enumerate(model.lstm.sizes):
        layer = model.lstm.layer_weights(index)
        torch.testing.assert_close(layer.bias[size : 2 * size], torch.ones(size))
        for block in layer.weight_hh.detach().split(size, dim=0):
            torch.testing.assert_close(block @ block.T, torch.eye(size), atol=1e-5, rtol=0)


def test_noise_target_selects_the_matrices():
    both = LanguageModel(small_config(noise=NoiseConfig("gaussian", "shared", target="both")))
    layer = both.lstm.layers[0]
    assert layer.input_noise is not None and layer.recurrent_noise is not None
    rec = LanguageModel(small_config(noise=NoiseConfig("gaussian", "shared")))
    assert rec.lstm.layers[0].input_noise is None


def test_regularized_training_mode_is_stochastic_and_eval_is_not():
    torch.manual_seed(2)
    config = small_config(dropout_input=0.3, dropout_output=0.3, dropout_hidden=0.2,
                          dropout_embedding=0.1, noise=NoiseConfig("dropconnect", "flipout"))
    model = LanguageModel(config)
    tokens = torch.randint(0, 30, (5, 3))
    a, _ = model.train()(tokens, targets=tokens)
    b, _ = model(tokens, targets=tokens)
    assert not torch.allclose(a, b)
    c, _ = model.eval()(tokens, targets=tokens)
    d, _ = model(tokens, targets=tokens)
    torch.testing.assert_close(c, d, atol=0, rtol=0)


def test_bad_token_shape_is_a_value_error():
    model = LanguageModel(small_config())
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(3, dtype=torch.long))


def test_onehot_input_is_an_explicit_one_hot_matmul_with_no_embedding_matrix():
    """The first layer's input term is onehot(token) W_ihᵀ: the columns of W_ih act as the
    embedding; the model has no embedding parameters, and only seen columns get gradient."""
    torch.manual_seed(3)
    model = LanguageModel(small_config(input_encoding="onehot", num_layers=1)).eval()
    assert model.embedding is None
    assert not any(name.startswith("embedding") for name, _ in model.named_parameters())
    tokens = torch.randint(0, 15, (6, 3))  # tokens 15..29 never appear
    logits, _ = model(tokens)
    layer = model.lstm.layer_weights(0)
    explicit = torch.eye(30)[tokens]  # (T, B, V) one-hot vectors, built independently
    input_terms = explicit @ layer.weight_ih.T + layer.bias
    h = c = torch.zeros(3, 12)
    outputs = []
    for term in input_terms:
        i, f, g, o = (term + h @ layer.weight_hh.T).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    torch.testing.assert_close(logits, model.decoder(torch.stack(outputs)), atol=1e-5, rtol=0)
    logits.sum().backward()
    assert model.lstm.weight_ih_l0.grad[:, 15:].abs().max() == 0
    assert model.lstm.weight_ih_l0.grad[:, tokens.unique()].abs().min(dim=0).values.gt(0).all()


@pytest.mark.parametrize("key, value", [("tie_weights", True), ("dropout_embedding", 0.1)])
def test_onehot_input_refuses_settings_that_need_an_embedding_matrix(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}=.*input_encoding=onehot"):
        small_config(input_encoding="onehot", **{key: value}).validate()


@pytest.mark.parametrize("key", ["dropout_cell", "zoneout_cell", "zoneout_hidden"])
def test_cell_regularizer_rates_are_checked_and_reach_every_layer(key):
    with pytest.raises(ConfigError, match=f"model.{key}=1.0 is out of range"):
        small_config(**{key: 1.0}).validate()
    model = LanguageModel(small_config(**{key: 0.3}, dropout_cell_per_step=False))
    for layer in model.lstm.layers:
        assert getattr(layer.cell_masks, key.replace("dropout_cell", "cell_dropout")) == 0.3
        assert layer.cell_masks.per_step is False


def test_a_state_dict_with_the_earlier_per_layer_names_loads_and_gives_its_logits():
    """Written by the stack that kept each layer's weights in a one-layer torch.nn.LSTM
    (``lstm.layers.{k}.fused.weight_ih_l0``): its keys load as ``lstm.weight_ih_l{k}``, in
    the same parameter order (which an optimizer's state follows), giving the same logits."""
    saved = torch.load(REPO / "tests" / "assets" / "lm_state_earlier_names.pt",
                       weights_only=True)
    model = LanguageModel(ModelConfig(vocab_size=20, embedding_size=6, hidden_size=8,
                                      num_layers=2, tie_weights=True)).eval()
    model.load_state_dict(saved["model"])
    renamed = [re.sub(r"layers\.(\d)\.fused\.(\w+)_l0", r"\2_l\1", key) for key in saved["model"]]
    assert renamed == list(model.state_dict())
    assert "lstm.weight_hh_l1" in renamed
    logits, _ = model(saved["tokens"])
    torch.testing.assert_close(logits, saved["logits"], atol=1e-6, rtol=0)
