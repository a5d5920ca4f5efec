"""Suite files: the recipes of one comparison (one table of the paper), read and checked.

    # recipes/suites/ptb_word_medium.yaml
    group: ptb_word_medium          # W&B group of every run (set as a wandb.group override)
    description: One paragraph for the report.
    paper_source: Wen et al. 2018, Table 3     # where the paper numbers come from
    baseline: unregularized         # optional: the row the others are compared to (default:
                                    # the first row, in reports over several seeds)
    seeds: [1, 2, 3]                # optional: train every row once per seed
    runs:
      - recipe: ../ptb/word_medium_unregularized.yaml   # relative to this suite file
        label: unregularized        # row name; default: the recipe's file name
        paper: {valid_ppl: 132.23, test_ppl: 128.97}    # optional: valid/test ppl or bpc
        seeds: [1, 2]               # optional: this row's seeds instead of the suite's

Without seeds a row is one run with its recipe's ``train.seed``, in the directory
``train.py`` would use for the recipe with the same overrides (``train.out_dir``/
``train.run_name``, by default ``checkpoints/<recipe name>``). With seeds, (row, seed k) is
its own run: ``train.seed=k`` in ``<that directory>-seed<k>``, its W&B run tagged
``seed:<k>``. Seeds given on the command line replace both lists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..checks import check_range
from ..cli import recipe_with_run_name
from ..config import Recipe, from_dict, read_yaml
from ..errors import ConfigError
from ..training import RESULTS_FILE, read_results

# Metrics a suite may quote from a paper; they are keys of a run's results.json.
PAPER_METRICS = ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc")


def check_seeds(seeds: Optional[list[int]], key: str) -> None:
    """A list of seeds must be non-empty, without repeats, each a valid ``train.seed``."""
    if seeds is None:
        return
    if not seeds:
        raise ConfigError(f"{key} is empty. List at least one seed, e.g. [1, 2, 3], or remove "
                          "the key to train once with the recipe's train.seed.")
    for seed in seeds:
        check_range(key, seed, low=0, high=2**32, hint="NumPy seeds are 32-bit.")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{key}={seeds} repeats the seed(s) {', '.join(map(str, repeated))}; "
                          "each seed is one run. List each seed once.")


@dataclass
class SuiteRun:
    """One row of a suite: a recipe, its row name and the paper's numbers for it."""

    recipe: str
    label: Optional[str] = None
    paper: dict[str, float] = field(default_factory=dict)
    seeds: Optional[list[int]] = None

    def validate(self) -> None:
        check_seeds(self.seeds, "seeds")
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
    seeds: Optional[list[int]] = None

    def validate(self) -> None:
        check_seeds(self.seeds, "seeds")
        if not self.group:
            raise ConfigError("group is empty. Name the W&B group of the suite's runs.")
        if not self.runs:
            raise ConfigError("runs is empty. List at least one recipe.")


@dataclass
class PlannedRun:
    """One run of a suite row, resolved against the command line: the recipe to train, with
    which overrides (the suite's and the command line's, then the seed's), and where."""

    label: str
    recipe_path: str  # as given to train.py
    recipe: Recipe
    run_dir: Path
    paper: dict[str, float]
    overrides: list[str] = field(default_factory=list)
    seed: Optional[int] = None  # None: the recipe's own train.seed, the row's only run

    @property
    def name(self) -> str:
        """The row label, with the seed where the row has seeds."""
        return self.label if self.seed is None else f"{self.label} (seed {self.seed})"

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
            "description, paper_source, baseline, seeds) at the top level."
        )
    suite = from_dict(Suite, data, f"suite file {path}")
    recipe_paths = [os.path.normpath(path.parent / run.recipe) for run in suite.runs]
    missing = [i for i, recipe_path in enumerate(recipe_paths) if not Path(recipe_path).is_file()]
    if missing:
        many = len(missing) > 1
        raise ConfigError(
            f"Suite file {path} lists the recipe{'s' if many else ''} "
            + ", ".join(f"{suite.runs[i].recipe!r} (runs[{i}].recipe)" for i in missing)
            + f", but {', '.join(recipe_paths[i] for i in missing)} "
            + f"{'do' if many else 'does'} not exist; recipe paths are relative to the suite "
            "file's folder. Fix the path, add the recipe, or remove the entry."
        )
    labels: set[str] = set()
    for run, recipe_path in zip(suite.runs, recipe_paths):
        run.label = run.label or Path(recipe_path).stem
        if run.label in labels:
            raise ConfigError(f"Suite file {path} has two runs labelled {run.label!r}. Give each "
                              "run its own label.")
        labels.add(run.label)
    if suite.baseline is not None and suite.baseline not in labels:
        raise ConfigError(
            f"Suite file {path}: baseline {suite.baseline!r} is not the label of one of its "
            f"runs ({', '.join(sorted(labels))})."
        )
    return suite, recipe_paths


def plan_runs(suite: Suite, recipe_paths: list[str], overrides: list[str],
              seeds: Optional[list[int]] = None) -> list[PlannedRun]:
    """Load every recipe with the suite's W&B group and the command-line overrides (so a bad
    override fails before anything trains) and find each run's directory: one run per row,
    or one per (row, seed) where ``seeds`` (the command line's), the row or the suite list
    seeds."""
    base = run_overrides(suite, overrides)
    if any(item.partition("=")[0].strip() == "train.seed" for item in overrides) and (
            seeds or suite.seeds or any(run.seeds for run in suite.runs)):
        raise ConfigError("The override train.seed=... conflicts with the suite's seeds: each "
                          "(row, seed) run sets train.seed itself. Choose the seeds with "
                          "--seeds 1,2,3 (or the suite's seeds: list) instead.")
    runs, seen = [], {}
    for row, recipe_path in zip(suite.runs, recipe_paths):
        recipe, run_dir = recipe_with_run_name(recipe_path, base)
        row_seeds = seeds or row.seeds or suite.seeds
        planned = [PlannedRun(row.label, recipe_path, recipe, run_dir, dict(row.paper), base)]
        if row_seeds:
            planned = [_seed_run(row.label, recipe_path, recipe, base, dict(row.paper), seed)
                       for seed in row_seeds]
        for run in planned:
            if run.run_dir in seen:
                raise ConfigError(
                    f"The runs {seen[run.run_dir]!r} and {run.name!r} of the suite would both "
                    f"train in {run.run_dir}. Do not set train.run_name for a whole suite; use "
                    "train.out_dir=DIR to put all its runs somewhere else.")
            seen[run.run_dir] = run.name
        runs += planned
    return runs


def _seed_run(label: str, recipe_path: str, recipe: Recipe, base: list[str],
              paper: dict[str, float], seed: int) -> PlannedRun:
    """The run of one seed: the row's recipe with train.seed, a run name ending in -seed<k>
    and the W&B tag seed:<k> added to the recipe's tags."""
    overrides = [*base, f"train.seed={seed}",
                 f"train.run_name={json.dumps(f'{recipe.train.run_name}-seed{seed}')}",
                 f"wandb.tags={json.dumps([*recipe.wandb.tags, f'seed:{seed}'])}"]
    seeded, run_dir = recipe_with_run_name(recipe_path, overrides)
    return PlannedRun(label, recipe_path, seeded, run_dir, paper, overrides, seed)


def run_overrides(suite: Suite, overrides: list[str]) -> list[str]:
    """The overrides every run of the suite gets: its W&B group, then the command line's."""
    return [f"wandb.group={json.dumps(suite.group)}", *overrides]
