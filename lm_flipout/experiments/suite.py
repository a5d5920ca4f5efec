"""Suite files: the recipes of one comparison (one table of the paper), read and checked.

    # recipes/suites/ptb_word_medium.yaml
    group: ptb_word_medium          # W&B group of every run (set as a wandb.group override)
    description: One paragraph for the report.
    paper_source: Wen et al. 2018, Table 3     # where the paper numbers come from
    baseline: unregularized         # optional: label of the row the others are compared to
    runs:
      - recipe: ../ptb/word_medium_unregularized.yaml   # relative to this suite file
        label: unregularized        # row name; default: the recipe's file name
        paper: {valid_ppl: 132.23, test_ppl: 128.97}    # optional: valid/test ppl or bpc

Each run's directory is the one ``train.py`` would use for the recipe with the same
overrides (``train.out_dir``/``train.run_name``, by default ``checkpoints/<recipe name>``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..cli import recipe_with_run_name
from ..config import Recipe, from_dict, read_yaml
from ..errors import ConfigError
from ..training import RESULTS_FILE, read_results

# Metrics a suite may quote from a paper; they are keys of a run's results.json.
PAPER_METRICS = ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc")


@dataclass
class SuiteRun:
    """One row of a suite: a recipe, its row name and the paper's numbers for it."""

    recipe: str
    label: Optional[str] = None
    paper: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        unknown = sorted(set(self.paper) - set(PAPER_METRICS))
        if unknown:
            raise ConfigError(
                f"paper has the key(s) {', '.join(unknown)}; a paper number must be one of "
                f"{', '.join(PAPER_METRICS)} (keys of results.json)."
            )


@dataclass
class Suite:
    """A suite file's contents (see the module docstring)."""

    group: str
    runs: list[SuiteRun]
    description: str = ""
    paper_source: str = ""
    baseline: Optional[str] = None

    def validate(self) -> None:
        if not self.group:
            raise ConfigError("group is empty. Name the W&B group of the suite's runs.")
        if not self.runs:
            raise ConfigError("runs is empty. List at least one recipe.")


@dataclass
class PlannedRun:
    """A suite row resolved against the command line: the recipe to train and where."""

    label: str
    recipe_path: str  # as given to train.py
    recipe: Recipe
    run_dir: Path
    paper: dict[str, float]

    @property
    def finished(self) -> bool:
        return (self.run_dir / RESULTS_FILE).is_file()

    @property
    def started(self) -> bool:
        return (self.run_dir / "last.pt").is_file()

    def results(self) -> Optional[dict]:
        """The run's results.json, or None before the run has finished."""
        return read_results(self.run_dir)


def load_suite(path: Union[str, Path]) -> tuple[Suite, list[str]]:
    """Read and check a suite file; returns it with the path of each run's recipe (the suite
    file's folder joined with the listed path). A missing recipe is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"Suite file {path} {what}. Give the path of a suite YAML file, e.g. "
            "recipes/suites/ptb_word_cpu.yaml (the suites in recipes/suites/ are listed by "
            "`ls recipes/suites`)."
        )
    try:
        data = read_yaml(path)
    except ConfigError as err:  # read_yaml words its messages for recipes
        raise ConfigError(str(err).replace("Recipe file", "Suite file", 1)) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"Suite file {path} must hold a mapping with the keys group and runs (and optionally "
            "description, paper_source, baseline) at the top level."
        )
    suite = from_dict(Suite, data, f"suite file {path}")
    recipe_paths, labels = [], set()
    for i, run in enumerate(suite.runs):
        recipe_path = os.path.normpath(path.parent / run.recipe)
        if not Path(recipe_path).is_file():
            raise ConfigError(
                f"Suite file {path} lists the recipe {run.recipe!r} (runs[{i}].recipe), but "
                f"{recipe_path} does not exist; recipe paths are relative to the suite file's "
                "folder. Fix the path or remove the entry."
            )
        run.label = run.label or Path(recipe_path).stem
        if run.label in labels:
            raise ConfigError(f"Suite file {path} has two runs labelled {run.label!r}. Give each "
                              "run its own label.")
        labels.add(run.label)
        recipe_paths.append(recipe_path)
    if suite.baseline is not None and suite.baseline not in labels:
        raise ConfigError(
            f"Suite file {path}: baseline {suite.baseline!r} is not the label of one of its "
            f"runs ({', '.join(sorted(labels))})."
        )
    return suite, recipe_paths


def plan_runs(suite: Suite, recipe_paths: list[str], overrides: list[str]) -> list[PlannedRun]:
    """Load every recipe with the suite's W&B group and the command-line overrides (so a bad
    override fails before anything trains) and find each run's directory."""
    runs, seen = [], {}
    for run, recipe_path in zip(suite.runs, recipe_paths):
        recipe, run_dir = recipe_with_run_name(recipe_path, run_overrides(suite, overrides))
        if run_dir in seen:
            raise ConfigError(
                f"The runs {seen[run_dir]!r} and {run.label!r} of the suite would both train in "
                f"{run_dir}. Do not set train.run_name for a whole suite; use train.out_dir=DIR "
                "to put all its runs somewhere else."
            )
        seen[run_dir] = run.label
        runs.append(PlannedRun(run.label, recipe_path, recipe, run_dir, dict(run.paper)))
    return runs


def run_overrides(suite: Suite, overrides: list[str]) -> list[str]:
    """The overrides every run of the suite gets: its W&B group, then the command line's."""
    return [f"wandb.group={json.dumps(suite.group)}", *overrides]

