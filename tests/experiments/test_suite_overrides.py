"""Suite rows given as overrides of the suite's base recipe: what they plan (settings, run
directories, the train command), their errors, the report's per-row changes, and one row
trained end to end by `lm-flipout compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import tiny_recipe, write_recipe
from lm_flipout.cli import compare
from lm_flipout.config import load_recipe, parse_overrides
from lm_flipout.errors import ConfigError
from lm_flipout.experiments.compare import train_command
from lm_flipout.experiments.report import markdown
from lm_flipout.experiments.rows import collect_rows
from lm_flipout.experiments.suite import load_suite, plan_runs

FLIPOUT = {"model.noise": {"family": "dropconnect", "p": 0.5, "estimator": "flipout"}}


def make_suite(root: Path, runs: list[dict[str, Any]], **keys: Any) -> Path:
    """A base recipe (no weight noise, no dropout), a WD recipe built on it, and a suite
    with ``runs`` over them."""
    base = tiny_recipe(root, train={"epochs": 1, "max_steps": 2, "run_name": None},
                       wandb={"mode": "offline"})
    base["model"].update(noise={"family": "none"}, dropout_input=0.0, dropout_output=0.0)
    write_recipe(root / "recipes" / "base.yaml", base)
    write_recipe(root / "recipes" / "wd.yaml", {
        "base": "base.yaml", "model": {"noise": {"family": "dropconnect", "p": 0.5}}})
    suite = {"group": "tiny_overrides", "base": "../recipes/base.yaml", "runs": runs, **keys}
    return write_recipe(root / "suites" / "tiny.yaml", suite)


def test_rows_as_overrides_plan_their_own_settings_and_directories(tmp_path: Path) -> None:
    suite = make_suite(tmp_path, [
        {"label": "plain"},
        {"label": "WD + Flipout", "overrides": FLIPOUT},
        {"label": "WD", "recipe": "../recipes/wd.yaml"},
        {"label": "WD, lower lr", "recipe": "../recipes/wd.yaml",
         "overrides": {"optim.lr": 0.003}},
    ])
    runs = plan_runs(*load_suite(suite), ["train.epochs=2"])
    runs_dir = tmp_path / "runs"
    assert [(run.label, run.run_dir) for run in runs] == [
        ("plain", runs_dir / "base"), ("WD + Flipout", runs_dir / "base-wd-flipout"),
        ("WD", runs_dir / "wd"), ("WD, lower lr", runs_dir / "wd-wd-lower-lr")]
    noise = [(r.recipe.model.noise.family, r.recipe.model.noise.estimator) for r in runs]
    assert noise == [("none", "shared"), ("dropconnect", "flipout"), ("dropconnect", "shared"),
                     ("dropconnect", "shared")]
    assert [run.recipe.optim.lr for run in runs] == [0.01, 0.01, 0.01, 0.003]
    assert all(run.recipe.train.epochs == 2 and run.recipe.wandb.group == "tiny_overrides"
               for run in runs)
    # what each row changes relative to the suite's base (the run name aside)
    assert [run.changes for run in runs] == [
        {}, {"model.noise.estimator": "flipout", "model.noise.family": "dropconnect"},
        {"model.noise.family": "dropconnect"},
        {"model.noise.family": "dropconnect", "optim.lr": 0.003}]
    # the train command a user would type reproduces each row's recipe exactly
    for run in runs:
        recipe_path, *items, resume = train_command(run)
        assert resume == "--resume"
        assert load_recipe(recipe_path, items) == run.recipe


def test_the_command_line_overrides_win_over_a_rows(tmp_path: Path) -> None:
    suite = make_suite(tmp_path, [{"label": "low", "overrides": {"optim.lr": 0.001}}])
    (run,) = plan_runs(*load_suite(suite), ["optim.lr=0.5"])
    assert run.recipe.optim.lr == 0.5
    assert parse_overrides(run.overrides)["optim.lr"] == 0.5


def test_rows_as_overrides_over_seeds(tmp_path: Path) -> None:
    suite = make_suite(tmp_path, [{"label": "flipout", "overrides": FLIPOUT}], seeds=[1, 2])
    runs = plan_runs(*load_suite(suite), [])
    assert [(run.run_dir.name, run.recipe.train.seed, run.recipe.model.noise.estimator)
            for run in runs] == [("base-flipout-seed1", 1, "flipout"),
                                 ("base-flipout-seed2", 2, "flipout")]
    assert runs[0].changes == runs[1].changes and "train.seed" not in runs[0].changes


def test_a_row_may_name_its_own_run_directory(tmp_path: Path) -> None:
    suite = make_suite(tmp_path, [{"label": "flipout",
                                   "overrides": {**FLIPOUT, "train.run_name": "mine"}}])
    (run,) = plan_runs(*load_suite(suite), [])
    assert run.run_dir == tmp_path / "runs" / "mine"


@pytest.mark.parametrize("runs, base, words", [
    ([{"overrides": FLIPOUT}], "../recipes/base.yaml", "a row with overrides needs a label"),
    ([{"label": "x"}], None, r"runs\[0\] names no recipe and the suite no base"),
    ([{"label": "x", "overrides": {"model.nosie.p": 0.1}}], "../recipes/base.yaml",
     r"runs\[0\]\.overrides: 'model\.nosie\.p'.*nosie"),
    ([{"label": "x", "overrides": {"model.hidden_size": "big"}}], "../recipes/base.yaml",
     r"runs\[0\]\.overrides: 'model\.hidden_size'"),
    ([{"label": "x", "overrides": {"model..p": 1}}], "../recipes/base.yaml",
     r"runs\[0\]\.overrides: 'model\.\.p' is not a dotted key"),
    ([{"label": "x"}], "../recipes/gone.yaml",
     r"names the base recipe '\.\./recipes/gone\.yaml', but .*gone\.yaml does not exist"),
])
def test_bad_rows_and_bases_are_clear_errors(tmp_path: Path, runs: list, base: Any,
                                             words: str) -> None:
    suite = make_suite(tmp_path, runs)
    data = yaml.safe_load(suite.read_text())
    data["base"] = base
    write_recipe(suite, data)
    with pytest.raises(ConfigError, match=words) as err:
        load_suite(suite)
    assert "\n" not in str(err.value)


def test_a_value_out_of_range_names_the_row(tmp_path: Path) -> None:
    suite = make_suite(tmp_path, [{"label": "too much", "overrides": {"model.noise.p": 1.5}}])
    with pytest.raises(ConfigError, match=r"^Suite row 'too much': .*p"):
        plan_runs(*load_suite(suite), [])


def test_the_report_shows_what_each_row_changes_relative_to_the_base(tmp_path: Path) -> None:
    suite_path = make_suite(tmp_path, [
        {"label": "plain"}, {"label": "flipout", "overrides": FLIPOUT},
        {"label": "WD", "recipe": "../recipes/wd.yaml",
         "overrides": {"train.deterministic": True}}], seeds=[1, 2])
    suite, recipe_paths = load_suite(suite_path)
    rows = collect_rows(plan_runs(suite, recipe_paths, []))
    reports = tmp_path / "reports"
    text = markdown(suite, "tiny", rows, "cmd", reports / "tiny.png", reports)
    assert "relative to the suite's base recipe [base.yaml](../recipes/base.yaml):" in text
    assert "- plain: nothing (the base itself)\n" in text
    assert ("- flipout: `model.noise.estimator=flipout`, `model.noise.family=dropconnect`\n"
            in text)
    assert "- WD: `model.noise.family=dropconnect`, `train.deterministic=true`\n" in text
    assert text.count("- flipout:") == 1  # one line per row, not per seed
    suite.base = None
    assert "relative to the suite's base" not in markdown(suite, "tiny", rows, "cmd",
                                                          reports / "tiny.png", reports)


def test_compare_trains_a_row_given_as_overrides(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    suite = make_suite(tmp_path, [{"label": "flipout", "overrides": FLIPOUT}])
    assert compare.main([str(suite), "--reports-dir", str(tmp_path / "reports"),
                         "wandb.mode=disabled"]) == 0
    run_dir = tmp_path / "runs" / "base-flipout"
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["model"]["noise"]["estimator"] == "flipout"
    assert config["model"]["noise"]["family"] == "dropconnect"
    assert "base" not in config
    assert json.loads((run_dir / "results.json").read_text())["valid_ppl"] > 0
    report = (tmp_path / "reports" / "tiny.md").read_text(encoding="utf-8")
    assert "- flipout: `model.noise.estimator=flipout`" in report
