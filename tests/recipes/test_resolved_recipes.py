"""Every recipe and every suite run resolves to the configuration stored in
tests/recipes/resolved/ (written once, before the recipes were rewritten to build on bases),
so that rewriting a recipe never changes what a study trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lm_flipout.config import load_recipe, recipe_to_dict, with_defaults
from lm_flipout.experiments.suite import load_suite, plan_runs

REPO = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO / "recipes"
RESOLVED = Path(__file__).resolve().parent / "resolved"
STORED = sorted(p for p in RESOLVED.glob("*.yaml") if p.name != "suites.yaml")
SUITES = yaml.safe_load((RESOLVED / "suites.yaml").read_text(encoding="utf-8"))


def recipe_path(stored: Path) -> Path:
    """recipes/ptb/word_cpu_wd.yaml for resolved/ptb__word_cpu_wd.yaml."""
    return RECIPES_DIR / stored.name.replace("__", "/")


# Defaults that changed after the configurations were stored, without changing what trains:
# (section, key, the old default, the new one). The vocabulary size was a placeholder that the
# corpus always replaced; the token cache's folder says where tokens are kept, not which.
CHANGED_DEFAULTS = [
    ("model", "vocab_size", 10000, None),
    ("data", "cache_dir", ".cache/lm_flipout", None),
]


def stored_config(name: str) -> dict[str, Any]:
    """The stored configuration of the recipe ``name`` (e.g. ptb/word_cpu_wd.yaml), with
    every key a newer schema added at its default, and each old default in CHANGED_DEFAULTS
    read as the new one."""
    stored = RESOLVED / name.replace("/", "__")
    config = with_defaults(yaml.safe_load(stored.read_text(encoding="utf-8")))
    for section, key, old, new in CHANGED_DEFAULTS:
        if config[section][key] == old:
            config[section][key] = new
    return config


def with_changes(config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``config`` with each dotted key of ``changes`` set."""
    for dotted, value in changes.items():
        *sections, last = dotted.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[last] = value
    return config


def test_every_recipe_has_a_stored_configuration() -> None:
    """A recipe file that was there before the rewrite is still there (docs and suites name
    them); the stored list is not empty."""
    assert len(STORED) >= 30
    for stored in STORED:
        assert recipe_path(stored).is_file(), f"{recipe_path(stored)} is gone"


@pytest.mark.parametrize("stored", STORED, ids=[recipe_path(p).name for p in STORED])
def test_a_recipe_resolves_to_its_stored_configuration(stored: Path) -> None:
    name = str(recipe_path(stored).relative_to(RECIPES_DIR))
    assert recipe_to_dict(load_recipe(recipe_path(stored))) == stored_config(name)


@pytest.mark.parametrize("suite_name", sorted(SUITES))
def test_a_suite_plans_the_runs_it_planned_before(suite_name: str) -> None:
    """Same rows, labels, seeds, run directories, paper numbers and configurations."""
    expected = SUITES[suite_name]
    suite, recipe_paths = load_suite(RECIPES_DIR / "suites" / suite_name)
    runs = plan_runs(suite, recipe_paths, [])
    assert (suite.group, suite.baseline) == (expected["group"], expected["baseline"])
    assert [(run.label, run.seed, str(run.run_dir), run.paper) for run in runs] == \
        [(row["label"], row["seed"], row["run_dir"], row["paper"]) for row in expected["runs"]]
    for run, row in zip(runs, expected["runs"]):
        want = with_changes(stored_config(row["recipe"]), row["changes"])
        assert recipe_to_dict(run.recipe) == want, run.name
