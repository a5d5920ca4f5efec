"""Recipe files: reading YAML, loading with overrides, saving, and the round trip through
a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_flipout.config import (
    OptimConfig,
    Recipe,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    recipe_to_yaml,
    save_recipe,
)
from lm_flipout.errors import ConfigError
from lm_flipout.training.checkpoint import load_checkpoint, save_checkpoint


def test_load_recipe_reads_yaml_and_defaults_run_name_to_file_stem(write_recipe) -> None:
    path = write_recipe(
        "model:\n  hidden_size: 650\n  tie_weights: yes\noptim:\n  name: adam\n  lr: 1e-3\n"
        "train:\n",
        name="word_medium.yaml",
    )
    recipe = load_recipe(path)
    assert recipe.model.hidden_size == 650 and recipe.model.tie_weights is True
    assert recipe.optim == OptimConfig(name="adam", lr=0.001)
    assert recipe.train.run_name == "word_medium"
    assert recipe.data == Recipe().data


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_syntax_error_gives_file_and_line(write_recipe) -> None:
    path = write_recipe("model:\n  hidden_size: 650\noptim: [1, 2\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml has a YAML error at line 4"):
        load_recipe(path)


def test_duplicate_key_is_an_error_not_a_silent_override(write_recipe) -> None:
    path = write_recipe("optim:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'lr'"):
        load_recipe(path)


def test_top_level_must_be_a_mapping(write_recipe) -> None:
    path = write_recipe("- model\n- optim\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections.*\['model', 'optim'\]"):
        load_recipe(path)


def test_saved_recipe_reloads_equal_and_leaves_no_temp_file(
    tmp_path: Path, write_recipe
) -> None:
    path = write_recipe("{}\n", name="base.yaml")
    recipe = load_recipe(
        path,
        ["model.hidden_size=650", "model.noise.family=gaussian", "model.noise.sigma=0.25",
         "optim.name=nt_asgd", "optim.lr=30", "optim.betas=[0.8, 0.99]", "train.seed=7",
         "wandb.tags=[ptb, flipout]", "wandb.group=g", "data.vocab_size=5000",
         "data.hf_data_files={train: a.txt}"],
    )
    out = tmp_path / "run" / "config.yaml"
    save_recipe(recipe, out)
    assert load_recipe(out) == recipe
    assert recipe_to_yaml(recipe).startswith("model:\n")
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.yaml"]


def test_recipe_dict_survives_a_checkpoint_and_is_checked_on_the_way_back(
    tmp_path: Path, write_recipe
) -> None:
    overrides = ["model.noise.family=dropconnect", "wandb.tags=[x]"]
    recipe = load_recipe(write_recipe("{}\n"), overrides)
    save_checkpoint({"config": recipe_to_dict(recipe)}, tmp_path / "best.pt")
    stored = load_checkpoint(tmp_path / "best.pt")["config"]
    assert recipe_from_dict(stored, where="best.pt (its stored config)") == recipe
    stored["optim"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"best\.pt \(its stored config\).*optim\.lr=-1\.0"):
        recipe_from_dict(stored, where="best.pt (its stored config)")
