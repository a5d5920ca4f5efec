"""Each recipe section checks its own settings; a bad value names the key and the file."""

from __future__ import annotations

import pytest

from lm_flipout.config import OptimConfig, Recipe, TrainConfig, WandbConfig, load_recipe
from lm_flipout.data import DataConfig
from lm_flipout.errors import ConfigError, DataError, UserError
from lm_flipout.model import ModelConfig, NoiseConfig


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=0", "optim.lr"),
        ("optim.momentum=1.0", "optim.momentum"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1]"),
        ("optim.clip=-1", "optim.clip"),
        ("optim.plateau_factor=0", "optim.plateau_factor"),
        ("train.epochs=0", "train.epochs"),
        ("train.seed=-1", "train.seed"),
        ("train.device=gpu", "train.device"),
        ("train.run_name=a/b", "train.run_name"),
        ("train.log_every=0", "train.log_every"),
        ("wandb.tags=[" + "x" * 65 + "]", "wandb.tags[0]"),
        ("model.hidden_size=0", "model.hidden_size"),
        ("model.dropout_output=1.0", "model.dropout_output"),
        ("model.dropout_hidden=-0.1", "model.dropout_hidden"),
        ("model.noise.sigma=-1", "model.noise.sigma"),
        ("model.noise.p=1.0", "model.noise.p"),
        ("data.bptt=0", "data.bptt"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_file(
    write_recipe, override: str, key: str
) -> None:
    path = write_recipe("{}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, [override])
    assert f"{key}=" in str(info.value) and str(path) in str(info.value)


def test_flipout_with_dropconnect_needs_p_half_and_says_why(write_recipe) -> None:
    path = write_recipe("{}\n")
    with pytest.raises(ConfigError, match=r"model.noise.p=0.3.*symmetric around zero"):
        load_recipe(path, ["model.noise.family=dropconnect", "model.noise.estimator=flipout",
                           "model.noise.p=0.3"])
    ok = load_recipe(path, ["model.noise.family=dropconnect", "model.noise.estimator=shared",
                            "model.noise.p=0.3"])
    assert ok.model.noise.p == 0.3


def test_all_config_errors_are_user_errors() -> None:
    assert issubclass(ConfigError, UserError)


def test_tied_single_layer_with_unused_hidden_size_is_an_error(write_recipe) -> None:
    recipe = write_recipe(
        "model: {tie_weights: true, num_layers: 1, embedding_size: 64, hidden_size: 256}\n",
        name="r.yaml",
    )
    with pytest.raises(ConfigError, match="model.hidden_size=256 would be ignored"):
        load_recipe(recipe)
    assert load_recipe(recipe, ["model.hidden_size=64"]).model.hidden_size == 64


@pytest.mark.parametrize(
    "section, message",
    [
        (ModelConfig(hidden_size=0), "model.hidden_size=0 is out of range"),
        (NoiseConfig("gaussian", sigma=-1.0), "model.noise.sigma=-1.0 is out of range"),
        (NoiseConfig("dropconnect", "flipout", p=0.3), "model.noise.p=0.3 cannot be used"),
        (DataConfig(bptt=0), "data.bptt=0 must be an integer >= 1"),
        (OptimConfig(lr=0.0), "optim.lr=0.0 is out of range"),
        (TrainConfig(epochs=0), "train.epochs=0 is out of range"),
        (WandbConfig(project=""), "wandb.project is empty"),
    ],
)
def test_every_section_checks_itself_in_validate(section: object, message: str) -> None:
    with pytest.raises((ConfigError, DataError), match=message):
        section.validate()


def test_the_default_sections_pass_their_checks() -> None:
    recipe = Recipe()
    for section in (recipe.model, recipe.model.noise, recipe.data, recipe.optim, recipe.train,
                    recipe.wandb):
        section.validate()


@pytest.mark.parametrize("name, problem", [
    ("r" * 300, "it is 300 bytes long"),
    ("é" * 128, "it is 256 bytes long"),  # 128 characters, but two bytes each
    ("line\nbreak", r"the control character '\n'"),
    ("tab\there", r"the control character '\t'"),
    ("bell\x07", r"the control character '\x07'"),
])
def test_run_names_that_cannot_be_folders_are_refused_with_the_rule(name, problem) -> None:
    cfg = TrainConfig(run_name=name)
    with pytest.raises(ConfigError) as caught:
        cfg.validate()
    text = str(caught.value)
    assert problem in text and "at most 255 bytes" in text
    assert "e.g. train.run_name=ptb-medium-flipout-seed2" in text and len(text) < 600
    TrainConfig(run_name="é" * 127 + "x").validate()  # 255 bytes: the longest allowed


def test_a_long_run_name_is_refused_before_anything_is_created(tmp_path, capsys) -> None:
    import yaml

    from lm_flipout.cli import train

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"out_dir": str(tmp_path / "runs")},
                                      "wandb": {"mode": "disabled"}}))
    assert train.main([str(recipe), "train.run_name=" + "n" * 300]) == 2
    assert "255 bytes" in capsys.readouterr().err and not (tmp_path / "runs").exists()
