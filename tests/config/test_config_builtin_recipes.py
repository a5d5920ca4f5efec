"""The built-in recipes: found by name (from a clone, the repository's recipes/ folder),
described in one line, copied out as standalone files, and trained by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lm_flipout.cli import recipes as recipes_cli
from lm_flipout.cli import train
from lm_flipout.config import Recipe, from_dict, load_recipe
from lm_flipout.config import builtin_recipes as builtin
from lm_flipout.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_every_training_recipe_of_the_folder_is_listed_by_name() -> None:
    found = builtin.builtin_recipes()
    on_disk = {p.relative_to(REPO / "recipes").with_suffix("").as_posix()
               for p in (REPO / "recipes").rglob("*.yaml")
               if p.relative_to(REPO / "recipes").parts[0] not in ("suites", "sweeps")}
    assert set(found) == on_disk and "quickstart" in found
    assert found["ptb/word_cpu_wd_flipout"] == REPO / "recipes/ptb/word_cpu_wd_flipout.yaml"


def test_a_description_is_the_first_sentence_of_the_opening_comment(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("# Wen et al. 2018, Table 2, e.g. this: one\n# sentence. Then more.\n"
                    "model:\n  hidden_size: 8\n# not this\n")
    assert builtin.description(path) == "Wen et al. 2018, Table 2, e.g. this: one sentence."
    path.write_text("model:\n  hidden_size: 8\n")
    assert builtin.description(path) == ""


def test_a_recipe_argument_is_a_file_first_then_a_builtin_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    quickstart = REPO / "recipes/quickstart.yaml"
    for name in ("quickstart", "quickstart.yaml", "recipes/quickstart.yaml"):
        assert builtin.recipe_file(name) == quickstart
    assert builtin.recipe_file("word_cpu_wd_flipout") == builtin.recipe_file(
        "ptb/word_cpu_wd_flipout")  # a file name only one recipe has
    for elsewhere in ("my/quickstart.yaml", str(tmp_path / "quickstart.yaml"),
                      "other/ptb/word_cpu_wd_flipout"):
        with pytest.raises(ConfigError, match="neither a file nor a built-in recipe"):
            builtin.recipe_file(elsewhere)  # a missing file elsewhere is not a built-in
    (tmp_path / "quickstart").write_text("model: {}\n")
    assert builtin.recipe_file("quickstart") == Path("quickstart")  # a file wins
    with pytest.raises(ConfigError) as caught:
        builtin.recipe_file("ptb/word_cpu_wd_flipot")
    message = str(caught.value)
    assert "neither a file nor a built-in recipe" in message
    assert "'ptb/word_cpu_wd_flipout'" in message and "lm-flipout recipes" in message


def test_list_prints_one_line_per_recipe(capsys: pytest.CaptureFixture) -> None:
    assert recipes_cli.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(builtin.builtin_recipes())
    (line,) = [line for line in lines if line.startswith("ptb/word_cpu_wd_flipout ")]
    assert line.endswith("WD + Flipout: word_cpu_wd.yaml with its DropConnect (p=0.5) sampled "
                         "by flipout.")
    recipes_cli.list_recipes(width=60)  # a terminal's width cuts them
    narrow = capsys.readouterr().out.splitlines()
    assert len(narrow) == len(lines) and all(len(line) <= 60 for line in narrow)
    assert any(line.endswith("...") for line in narrow)


def test_copy_writes_the_recipe_and_never_overwrites(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    original = (REPO / "recipes/ptb/word_cpu.yaml").read_text()  # a recipe without a base
    assert recipes_cli.main(["copy", "ptb/word_cpu"]) == 0
    assert (tmp_path / "word_cpu.yaml").read_text() == original
    assert recipes_cli.main(["copy", "quickstart", "mine.yaml"]) == 0
    (tmp_path / "folder").mkdir()
    assert recipes_cli.main(["copy", "quickstart", "folder"]) == 0
    assert (tmp_path / "folder/quickstart.yaml").is_file()
    capsys.readouterr()
    (tmp_path / "mine.yaml").write_text("edited\n")
    assert recipes_cli.main(["copy", "quickstart", "mine.yaml"]) == 2
    assert (tmp_path / "mine.yaml").read_text() == "edited\n"
    assert "already exists" in capsys.readouterr().err
    assert recipes_cli.main(["copy", "nope"]) == 2
    assert "no built-in recipe named 'nope'" in capsys.readouterr().err
    assert recipes_cli.main(["copy"]) == 2
    assert "needs the name of a recipe" in capsys.readouterr().err


def test_a_recipe_built_on_a_base_is_copied_resolved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "recipes"
    (root / "ptb").mkdir(parents=True)
    (root / "ptb/parent.yaml").write_text("model:\n  hidden_size: 16\n  embedding_size: 16\n"
                                          "optim:\n  lr: 0.5\n")
    (root / "ptb/child.yaml").write_text("# Child: the parent with a smaller lr.\n"
                                         "base: parent.yaml\noptim:\n  lr: 0.1\n")
    monkeypatch.setattr(builtin, "recipes_root", lambda: root)
    expected = load_recipe(root / "ptb/child.yaml")
    text = builtin.copy_text(builtin.find_builtin("child"))
    assert text.startswith("# Child: the parent with a smaller lr.\n") and "base:" not in text
    copy = tmp_path / "elsewhere" / "child.yaml"
    copy.parent.mkdir()
    copy.write_text(text)
    assert load_recipe(copy) == expected  # the same recipe, wherever the copy is


def test_train_takes_a_builtin_name_and_print_config_leaves_the_vocabulary_to_the_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert train.main(["quickstart", "--print-config"]) == 0
    out = capsys.readouterr().out
    said = "  vocab_size: null  # the corpus's vocabulary, set when training starts\n"
    assert f"model:\n{said}" in out
    data = yaml.safe_load(out)
    assert data["train"]["run_name"] == "quickstart" and data["data"]["source"] == "synthetic"
    assert from_dict(Recipe, data, "printed").model.vocab_size is None  # reloads as it is
