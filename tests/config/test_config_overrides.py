"""Command-line key=value overrides: parsed as YAML, checked against the schema, applied
before the recipe is built."""

from __future__ import annotations

import pytest

from lm_flipout.config import load_recipe, parse_overrides
from lm_flipout.errors import ConfigError


def test_parse_overrides_reads_values_as_yaml() -> None:
    parsed = parse_overrides(
        ["model.hidden_size=650", "optim.lr=20.5", "wandb.tags=[a,b]", "wandb.group=null",
         "train.deterministic=true", "train.device=cuda:1"]
    )
    assert parsed == {
        "model.hidden_size": 650,
        "optim.lr": 20.5,
        "wandb.tags": ["a", "b"],
        "wandb.group": None,
        "train.deterministic": True,
        "train.device": "cuda:1",
    }


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim..lr=3", "optim lr=3"])
def test_malformed_override_shows_the_item_and_the_expected_form(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert repr(item) in str(info.value) and "key=value" in str(info.value)


def test_overrides_apply_on_top_of_the_file(write_recipe) -> None:
    path = write_recipe("model:\n  hidden_size: 200\noptim:\n  lr: 1\n")
    recipe = load_recipe(
        path,
        ["model.hidden_size=650", "optim.lr=20", "wandb.tags=[a,b]",
         "model.noise={family: gaussian, sigma: 0.3}", "data.hf_splits.valid=dev"],
    )
    assert recipe.model.hidden_size == 650 and recipe.optim.lr == 20.0
    assert recipe.wandb.tags == ["a", "b"]
    assert (recipe.model.noise.family, recipe.model.noise.sigma) == ("gaussian", 0.3)
    # one entry of a dict setting changes; the other default entries stay
    assert recipe.data.hf_splits == {"train": "train", "valid": "dev", "test": "test"}


def test_overrides_are_applied_before_range_checks(write_recipe) -> None:
    path = write_recipe(
        "model:\n  noise:\n    family: dropconnect\n    estimator: flipout\n    p: 0.3\n",
    )
    with pytest.raises(ConfigError):
        load_recipe(path)
    assert load_recipe(path, ["model.noise.p=0.5"]).model.noise.p == 0.5


def test_override_unknown_key_is_blamed_on_the_command_line(write_recipe) -> None:
    path = write_recipe("{}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["model.hiden_size=650"])
    message = str(info.value)
    assert "command-line override 'model.hiden_size'" in message
    assert "Did you mean 'model.hidden_size'?" in message and "embedding_size" in message


def test_override_wrong_type_and_non_section(write_recipe) -> None:
    path = write_recipe("{}\n")
    with pytest.raises(ConfigError, match=r"override 'optim.lr'.*must be a number.*'fast'"):
        load_recipe(path, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"'optim.lr' is a number, not a section"):
        load_recipe(path, ["optim.lr.x=1"])
