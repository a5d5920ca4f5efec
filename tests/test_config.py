"""Recipe schema: typed building from dicts, errors that name the key, overrides, files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from lm_flipout.training.checkpoint import load_checkpoint, save_checkpoint
from lm_flipout.config import (
    OptimConfig,
    Recipe,
    from_dict,
    load_recipe,
    parse_overrides,
    recipe_from_dict,
    recipe_to_dict,
    recipe_to_yaml,
    save_recipe,
    to_dict,
)
from lm_flipout.errors import ConfigError, UserError


# Toy schema for the generic machinery, independent of the real recipe sections.
@dataclass
class Inner:
    rate: float = 0.1
    kind: Literal["alpha", "beta"] = "alpha"

    def validate(self) -> None:
        if not 0 <= self.rate < 1:
            raise ValueError(f"rate={self.rate} must lie in [0, 1)")


@dataclass
class Outer:
    count: int = 1
    flag: bool = False
    label: Optional[str] = None
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    table: dict[str, float] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


@dataclass
class NeedsKey:
    required: int


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ generic machinery


def test_from_dict_builds_nested_values_and_keeps_defaults() -> None:
    built = from_dict(
        Outer,
        {"count": 3, "label": "x", "sizes": [4], "table": {"a": 2}, "inner": {"rate": 0}},
        "toy.yaml",
    )
    assert built == Outer(count=3, label="x", sizes=[4], table={"a": 2.0}, inner=Inner(rate=0.0))
    assert isinstance(built.inner.rate, float) and isinstance(built.table["a"], float)
    assert from_dict(Outer, {}, "toy.yaml") == Outer()
    assert from_dict(Outer, {"inner": None}, "toy.yaml").inner == Inner()  # empty YAML section


def test_float_fields_accept_exponent_strings_that_pyyaml_leaves_as_text() -> None:
    assert from_dict(Inner, {"rate": "1e-3"}, "toy.yaml").rate == 0.001


@pytest.mark.parametrize(
    "data, key, expected, shown",
    [
        ({"count": True}, "'count'", "an integer", "True (bool)"),
        ({"count": 1.5}, "'count'", "an integer", "1.5 (float)"),
        ({"flag": 1}, "'flag'", "true or false", "1 (int)"),
        ({"flag": "yes"}, "'flag'", "true or false", "'yes' (str)"),
        ({"label": 5}, "'label'", "a string or null", "5 (int)"),
        ({"sizes": [1, "two"]}, "'sizes[1]'", "an integer", "'two' (str)"),
        ({"sizes": 3}, "'sizes'", "a list of integers", "3 (int)"),
        ({"table": {"a": "x"}}, "'table.a'", "a number", "'x' (str)"),
        ({"inner": {"rate": "fast"}}, "'inner.rate'", "a number", "'fast' (str)"),
        ({"inner": 3}, "section 'inner'", "a mapping", "3 (int)"),
    ],
)
def test_wrong_types_name_the_dotted_key_the_expected_type_and_the_value(
    data: dict, key: str, expected: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data, "toy.yaml")
    message = str(info.value)
    assert message.startswith("toy.yaml:")
    assert key in message and expected in message and shown in message


def test_unknown_key_names_dotted_key_file_allowed_keys_and_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"rte": 0.5}}, "toy.yaml")
    message = str(info.value)
    assert "toy.yaml" in message and "'inner.rte'" in message
    assert "Did you mean 'inner.rate'?" in message
    assert "rate, kind" in message


def test_literal_lists_choices_and_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'inner.kind' must be one of 'alpha', 'beta'.*'alpah'.*"
                       r"Did you mean 'alpha'\?"):
        from_dict(Outer, {"inner": {"kind": "alpah"}}, "toy.yaml")


def test_validate_runs_after_building_and_names_file_and_section() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"rate": 1.5}}, "toy.yaml")
    assert "toy.yaml" in str(info.value) and "'inner'" in str(info.value)
    assert "rate=1.5 must lie in [0, 1)" in str(info.value)


def test_missing_required_key_is_reported() -> None:
    with pytest.raises(ConfigError, match="required key 'required' is missing"):
        from_dict(NeedsKey, {}, "toy.yaml")


def test_to_dict_round_trips_through_from_dict() -> None:
    original = Outer(count=2, flag=True, sizes=[3], table={"k": 0.5}, inner=Inner(0.2, "beta"))
    plain = to_dict(original)
    assert plain["inner"] == {"rate": 0.2, "kind": "beta"}
    assert from_dict(Outer, plain, "toy.yaml") == original


# ------------------------------------------------------------------ overrides


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


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  hidden_size: 200\noptim:\n  lr: 1\n")
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


def test_overrides_are_applied_before_range_checks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model:\n  noise:\n    family: dropconnect\n    estimator: flipout\n    p: 0.3\n",
    )
    with pytest.raises(ConfigError):
        load_recipe(path)
    assert load_recipe(path, ["model.noise.p=0.5"]).model.noise.p == 0.5


def test_override_unknown_key_is_blamed_on_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["model.hiden_size=650"])
    message = str(info.value)
    assert "command-line override 'model.hiden_size'" in message
    assert "Did you mean 'model.hidden_size'?" in message and "embedding_size" in message


def test_override_wrong_type_and_non_section(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match=r"override 'optim.lr'.*must be a number.*'fast'"):
        load_recipe(path, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"'optim.lr' is a number, not a section"):
        load_recipe(path, ["optim.lr.x=1"])


# ------------------------------------------------------------------ range checks


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
    tmp_path: Path, override: str, key: str
) -> None:
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, [override])
    assert f"{key}=" in str(info.value) and str(path) in str(info.value)


def test_flipout_with_dropconnect_needs_p_half_and_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match=r"model.noise.p=0.3.*symmetric around zero"):
        load_recipe(path, ["model.noise.family=dropconnect", "model.noise.estimator=flipout",
                           "model.noise.p=0.3"])
    ok = load_recipe(path, ["model.noise.family=dropconnect", "model.noise.estimator=shared",
                            "model.noise.p=0.3"])
    assert ok.model.noise.p == 0.3


# ------------------------------------------------------------------ files


def test_load_recipe_reads_yaml_and_defaults_run_name_to_file_stem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
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


def test_yaml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  hidden_size: 650\noptim: [1, 2\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml has a YAML error at line 4"):
        load_recipe(path)


def test_duplicate_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'lr'"):
        load_recipe(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- model\n- optim\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections.*\['model', 'optim'\]"):
        load_recipe(path)


def test_saved_recipe_reloads_equal_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n", name="base.yaml")
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


def test_recipe_dict_survives_a_checkpoint_and_is_checked_on_the_way_back(tmp_path: Path) -> None:
    overrides = ["model.noise.family=dropconnect", "wandb.tags=[x]"]
    recipe = load_recipe(write(tmp_path, "{}\n"), overrides)
    save_checkpoint({"config": recipe_to_dict(recipe)}, tmp_path / "best.pt")
    stored = load_checkpoint(tmp_path / "best.pt")["config"]
    assert recipe_from_dict(stored, where="best.pt (its stored config)") == recipe
    stored["optim"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"best\.pt \(its stored config\).*optim\.lr=-1\.0"):
        recipe_from_dict(stored, where="best.pt (its stored config)")


def test_all_config_errors_are_user_errors() -> None:
    assert issubclass(ConfigError, UserError)


def test_tied_single_layer_with_unused_hidden_size_is_an_error(tmp_path):
    from lm_flipout.config import load_recipe
    from lm_flipout.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {tie_weights: true, num_layers: 1, embedding_size: 64, hidden_size: 256}\n")
    with pytest.raises(ConfigError, match="model.hidden_size=256 would be ignored"):
        load_recipe(recipe)
    assert load_recipe(recipe, ["model.hidden_size=64"]).model.hidden_size == 64
