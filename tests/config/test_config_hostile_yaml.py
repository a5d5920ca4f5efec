"""Hostile or odd recipe files: alias bombs and recursive aliases are refused fast, tags are
not allowed, values in messages are bounded, and a file name that is not a folder name."""

from __future__ import annotations

import time

import pytest

import train
from lm_flipout.config import load_recipe
from lm_flipout.config.messages import show_value
from lm_flipout.config.yaml_io import MAX_EXPANDED_NODES
from lm_flipout.errors import ConfigError


def alias_bomb(levels: int) -> str:
    """A recipe whose model.hidden_size holds 9**levels strings once its aliases expand."""
    lines = ["model:", "  hidden_size:",
             '    - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_under_a_known_key_is_refused_within_a_second(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(9))  # 9**9 strings once expanded
    started = time.monotonic()
    assert train.main([str(path), "--print-config"]) == 2
    assert time.monotonic() - started < 1.0
    err = " ".join(capsys.readouterr().err.split())
    assert "bomb.yaml" in err and "aliases expand it to more than" in err
    assert len(err) < 400


def test_recursive_aliases_are_refused_and_modest_aliases_still_load(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model:\n  hidden_size: &x [*x]\n")
    with pytest.raises(ConfigError, match="aliases expand it"):
        load_recipe(path)
    fine = tmp_path / "fine.yaml"
    fine.write_text("model: {hidden_size: &size 32, embedding_size: *size}\n")
    assert load_recipe(fine).model.embedding_size == 32
    assert MAX_EXPANDED_NODES >= 10_000  # far above any recipe


def test_python_tags_are_not_allowed(tmp_path):
    path = tmp_path / "tag.yaml"
    path.write_text('model:\n  hidden_size: !!python/object/apply:os.system ["echo hi"]\n')
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert "line 2" in text and "!!python/object/apply:os.system is not allowed" in text
    assert "Tags (such as !!python/...) are not allowed" in text and "indentation" not in text


def test_show_value_is_bounded_and_fast_on_huge_values():
    huge = ["x" * 1000] * 9
    for _ in range(8):
        huge = [huge] * 9  # 9**9 leaves if printed in full
    started = time.monotonic()
    shown = show_value(huge)
    assert time.monotonic() - started < 0.1
    assert len(shown) <= 80 + len(" (list)") and shown.endswith("(list)")
    assert show_value("abc") == "'abc' (str)"


def test_a_recipe_file_name_that_is_not_a_folder_name_is_refused(tmp_path):
    path = tmp_path / "...yaml"  # its stem is ".."
    path.write_text("train: {epochs: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert "gives the run name '..'" in str(caught.value)
    assert load_recipe(path, ["train.run_name=fine"]).train.run_name == "fine"


def test_a_large_recipe_file_is_refused_by_its_size_without_being_parsed(tmp_path, monkeypatch):
    from lm_flipout.config import yaml_io

    def no_parsing(text):
        raise AssertionError("a file over the size limit was parsed")

    path = tmp_path / "big.yaml"
    # valid YAML that loads as a recipe (a long comment), a little over the limit
    path.write_text("train:\n  epochs: 2\n# " + "x" * yaml_io.MAX_RECIPE_BYTES + "\n")
    monkeypatch.setattr(yaml_io, "_parse", no_parsing)
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert f"Recipe file {path} is 1.0 MiB" in text and "without being parsed" in text
    assert "alias" not in text
