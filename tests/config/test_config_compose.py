"""Recipes that build on a base (lm_flipout/config/compose.py): sections merge key by key,
other values replace, bases chain relative to the file that names them, a cycle or a
missing base is one error naming the chain, and runs record the resolved whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import tiny_recipe, write_recipe
from lm_flipout.cli import train
from lm_flipout.config import load_recipe, read_recipe_data, recipe_to_dict
from lm_flipout.config.compose import merge_recipe_data
from lm_flipout.errors import ConfigError
from lm_flipout.sweeps import sweep_run_name

BASE = """
model:
  hidden_size: 32
  dropout_input: 0.25
  noise: {family: dropconnect, p: 0.5, estimator: shared}
data: {source: synthetic, batch_size: 8}
optim: {name: adam, lr: 0.01, betas: [0.8, 0.9]}
wandb: {tags: [cpu, base]}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_recipe_sets_only_what_differs_from_its_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", """
base: base.yaml
model:
  noise: {estimator: flipout}   # a section: merges, keeps p
optim: {betas: [0.7, 0.95]}     # a list: replaces
wandb: {tags: [child]}
train:                          # an empty section changes nothing
""")
    recipe = load_recipe(child)
    assert (recipe.model.noise.family, recipe.model.noise.p, recipe.model.noise.estimator) == \
        ("dropconnect", 0.5, "flipout")
    assert (recipe.model.hidden_size, recipe.model.dropout_input) == (32, 0.25)
    assert (recipe.data.source, recipe.data.batch_size, recipe.optim.lr) == ("synthetic", 8, 0.01)
    assert recipe.optim.betas == [0.7, 0.95] and recipe.wandb.tags == ["child"]
    assert recipe.train.run_name == "child"  # the recipe's own name, not its base's
    # what the child adds, on top of exactly its base
    base = recipe_to_dict(load_recipe(tmp_path / "base.yaml"))
    base["model"]["noise"]["estimator"] = "flipout"
    base["optim"]["betas"], base["wandb"]["tags"] = [0.7, 0.95], ["child"]
    base["train"]["run_name"] = "child"
    assert recipe_to_dict(recipe) == base


def test_a_dict_valued_setting_replaces_and_a_section_merges() -> None:
    base = {"data": {"hf_splits": {"train": "tr", "valid": "va", "test": "te"}, "bptt": 5}}
    update = {"data": {"hf_splits": {"train": "x"}}}
    assert merge_recipe_data(base, update) == {"data": {"hf_splits": {"train": "x"}, "bptt": 5}}
    assert base["data"]["hf_splits"]["valid"] == "va"  # the base's data is left as it was


def test_bases_chain_relative_to_the_file_that_names_them(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "shared" / "root.yaml", BASE)
    write(tmp_path / "shared" / "scale.yaml", "base: root.yaml\nmodel: {hidden_size: 64}\n")
    leaf = write(tmp_path / "rows" / "leaf.yaml",
                 "base: ../shared/scale.yaml\nmodel: {noise: {p: 0.3}}\n")
    monkeypatch.chdir(tmp_path)  # not the folder of any of the three files
    data, chain = read_recipe_data(leaf)
    assert "base" not in data
    assert [p.name for p in chain] == ["leaf.yaml", "scale.yaml", "root.yaml"]
    recipe = load_recipe(leaf)
    assert (recipe.model.hidden_size, recipe.model.noise.p, recipe.model.dropout_input) == \
        (64, 0.3, 0.25)


def test_command_line_overrides_apply_after_the_bases(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel: {hidden_size: 48}\n")
    recipe = load_recipe(child, ["model.hidden_size=16", "model.noise.p=0.1"])
    assert (recipe.model.hidden_size, recipe.model.noise.p, recipe.model.noise.estimator) == \
        (16, 0.1, "shared")


def test_a_cycle_is_an_error_naming_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: c.yaml\n")
    write(tmp_path / "c.yaml", "base: ./a.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(tmp_path / "a.yaml")
    message = str(err.value)
    assert f"{tmp_path / 'a.yaml'} -> b.yaml -> c.yaml -> a.yaml" in message
    assert "builds on itself" in message and "\n" not in message
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match=r"self\.yaml -> self\.yaml"):
        load_recipe(tmp_path / "self.yaml")


def test_a_missing_base_is_an_error_naming_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: gone.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(tmp_path / "a.yaml")
    message = str(err.value)
    assert f"names base: gone.yaml, but {tmp_path / 'gone.yaml'} does not exist" in message
    assert f"{tmp_path / 'a.yaml'} -> b.yaml -> gone.yaml" in message
    assert "relative to the folder of the file that names it" in message


@pytest.mark.parametrize("text, words", [
    ("base: 3\n", "base must be the path of another recipe file"),
    ("base: ''\n", "base must be the path of another recipe file"),
    ("base: folder\n", "is a directory, not a file"),
])
def test_a_base_that_is_no_file_name_is_an_error(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=words):
        load_recipe(write(tmp_path / "a.yaml", text))


def test_every_file_of_the_chain_gets_the_yaml_checks(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    write(tmp_path / "base.yaml", "model: {hidden_size: 8}\nmodel: {hidden_size: 9}\n")
    with pytest.raises(ConfigError, match=r"base\.yaml has a YAML error.*duplicate key"):
        load_recipe(child)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcde", "bcdef"))
    write(tmp_path / "base.yaml", bomb)
    with pytest.raises(ConfigError, match="aliases expand"):
        load_recipe(child)
    write(tmp_path / "base.yaml", "- a list\n")
    with pytest.raises(ConfigError, match=r"base\.yaml \(the base of .*child\.yaml\) must hold "
                                          "a mapping"):
        load_recipe(child)


def test_a_bad_key_in_a_base_names_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "model: {hiden_size: 8}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml \(built on .*base\.yaml\).*hiden_size"):
        load_recipe(child)


def test_a_sweep_trial_keeps_a_run_name_its_base_sets(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "train: {run_name: fixed}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    environ = {"WANDB_SWEEP_ID": "s", "WANDB_RUN_ID": "r"}
    assert sweep_run_name(str(child), [], environ) is None
    write(tmp_path / "base.yaml", "train: {seed: 3}\n")
    assert sweep_run_name(str(child), [], environ) == "child-r"


def test_print_config_and_the_run_show_the_resolved_recipe(
        tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: None) -> None:
    """The run's config.yaml holds the whole recipe and no base: key, so the run resumes from
    it after its base files are gone."""
    data = tiny_recipe(tmp_path, train={"epochs": 1, "max_steps": 3})
    row = {"base": "base.yaml", "model": {"noise": {"estimator": "shared"}},
           "train": {"run_name": "row"}}
    write_recipe(tmp_path / "recipes" / "base.yaml", data)
    child = write_recipe(tmp_path / "recipes" / "row.yaml", row)
    assert train.main([str(child), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in printed
    assert printed == recipe_to_dict(load_recipe(child))
    assert printed["model"]["noise"] == {**printed["model"]["noise"], "family": "gaussian",
                                         "estimator": "shared", "sigma": 0.2}
    assert train.main([str(child)]) == 0
    run_dir = tmp_path / "runs" / "row"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    # model.vocab_size is set from the corpus when the run starts
    assert saved == {**printed, "model": {**printed["model"], "vocab_size": 18}}
    (tmp_path / "recipes" / "base.yaml").unlink()
    capsys.readouterr()
    assert train.main([str(run_dir / "config.yaml"), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
