"""A run whose validation loss stays finite but is far worse than a uniform guess stops like a
NaN does; results.json is strict JSON; a model too large for the device is refused before
it is built, naming the size keys."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import tiny_recipe
from lm_flipout.config import Recipe, from_dict
from lm_flipout.errors import ConfigError, TrainingError
from lm_flipout.model import LanguageModel
from lm_flipout.training import Trainer, resources
from lm_flipout.training.run_dir import write_results
from lm_flipout.training.stopping import DIVERGENCE_MARGIN_NATS, validation_divergence


def recipe_of(root, **sections) -> Recipe:
    return from_dict(Recipe, tiny_recipe(root, **sections), "test recipe")


def refuse_constant(name: str) -> None:
    raise ValueError(f"not strict JSON: {name}")


def test_a_huge_but_finite_validation_loss_stops_the_run_naming_the_epoch(tmp_path, one_thread):
    recipe = recipe_of(tmp_path, optim={"name": "sgd", "lr": 1e9, "clip": 0.25},
                       train={"epochs": 2})
    run = tmp_path / "runs" / "run"
    with pytest.raises(TrainingError) as caught:
        Trainer(recipe, run, echo=lambda _: None).run()
    text = str(caught.value)
    assert text.startswith("Training diverged: the validation loss became ") and "(epoch 1)" in text
    assert "uniform guess" in text
    assert not (run / "best.pt").exists() and not (run / "results.json").exists()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse_constant)


def test_validation_divergence_is_judged_against_ln_v_plus_the_margin() -> None:
    vocab = 10000
    uniform = math.log(vocab)  # the loss of predicting every token with probability 1/V
    assert validation_divergence(uniform, vocab) is None
    assert validation_divergence(uniform + DIVERGENCE_MARGIN_NATS - 1e-6, vocab) is None
    assert "perplexity" in validation_divergence(uniform + DIVERGENCE_MARGIN_NATS + 1e-3, vocab)
    assert "perplexity inf" in validation_divergence(800.0, vocab)  # exp overflows: inf ppl
    assert validation_divergence(math.inf, vocab) == "the validation loss became inf"
    assert validation_divergence(math.nan, vocab) == "the validation loss became nan"


def test_results_json_is_strict_json_with_non_finite_values_as_null(tmp_path) -> None:
    write_results(tmp_path, {"valid_ppl": math.inf, "test_ppl": 12.5, "x": math.nan})
    parsed = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse_constant)
    assert parsed == {"valid_ppl": None, "test_ppl": 12.5, "x": None}


def test_parameter_bytes_and_optimizer_copies_match_a_real_model(tmp_path) -> None:
    recipe = recipe_of(tmp_path, optim={"name": "adam", "lr": 0.01})
    recipe.model.vocab_size = 37
    model = LanguageModel(recipe.model)
    params = list(model.parameters())
    assert resources.parameter_bytes(recipe) == sum(p.numel() * 4 for p in params)
    optimizer = torch.optim.Adam(params)
    model(torch.zeros(3, 2, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                      for t in s.values() if t.dim() > 0)
    assert state_bytes == resources.optimizer_copies(recipe) * resources.parameter_bytes(recipe)
    recipe.optim.name, recipe.optim.momentum = "nt_asgd", 0.9
    assert resources.optimizer_copies(recipe) == 2  # a momentum buffer and the average


def test_a_model_larger_than_free_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    recipe = recipe_of(tmp_path, model={"hidden_size": 400000, "embedding_size": 16,
                                        "tie_weights": False})
    with pytest.raises(ConfigError) as caught:
        Trainer(recipe, tmp_path / "runs" / "big", echo=lambda _: None)
    text = str(caught.value)
    for key in ("model.hidden_size=400000", "model.embedding_size=16", "model.num_layers=1",
                "data.vocab_size"):
        assert key in text
    assert "GiB" in text and not (tmp_path / "runs").exists()
    small = recipe_of(tmp_path)
    monkeypatch.setattr(resources, "available_bytes", lambda device: 1000)
    with pytest.raises(ConfigError, match="does not fit in the memory of cpu"):
        Trainer(small, tmp_path / "runs" / "small", echo=lambda _: None)
