"""Suite files: the rows of one comparison (one table of the paper), read and checked.

    # recipes/suites/ptb_word_medium.yaml
    group: ptb_word_medium          # W&B group of every run (set as a wandb.group override)
    description: One paragraph for the report.
    paper_source: Wen et al. 2018, Table 3     # where the paper numbers come from
    base: ../ptb/word_medium.yaml   # optional: the recipe rows build on and are compared to
    baseline: unregularized         # optional: the row the others are compared to (default:
                                    # the first row, in reports over several seeds)
    seeds: [1, 2, 3]                # optional: train every row once per seed
    runs:
      - recipe: ../ptb/word_medium_unregularized.yaml   # relative to this suite file
        label: unregularized        # row name; default: the recipe's file name
        paper: {valid_ppl: 132.23, test_ppl: 128.97}    # optional: valid/test ppl or bpc
        seeds: [1, 2]               # optional: this row's seeds instead of the suite's
      - label: WD + Flipout         # no recipe: the suite's base ...
        overrides:                  # ... with these dotted keys set
          model.noise: {family: dropconnect, p: 0.5, estimator: flipout}

A tuned suite searches each row's hyperparameters before it trains the row
(`lm_flipout.experiments.tuned_suite`): every row gets the same budget and shared space.

    tune:
      trials: 12                    # every row's study holds this many finished or pruned trials
      pruner: {median: {n_warmup_steps: 3}}   # optional, as in a search-space file's study:
      sampler: tpe                  # optional; seed: optional (default: each row's train.seed)
      trial_overrides: {train.epochs: 10}     # optional: dotted keys set for the trials only
      space:                        # the shared space: every row searches these keys
        optim.lr: {float: [0.001, 0.01], log: true}
    runs:
      - label: WD
        overrides: {model.noise: {family: dropconnect, p: 0.5}}
        space: {model.noise.p: {float: [0.1, 0.7]}}   # the row's own keys (optional)

A row trains its own recipe, or the suite's base where it names none, with its
``overrides`` (dotted keys, as on the command line) set on top. Without seeds a row is one
run with its recipe's ``train.seed``, in the directory ``train.py`` would use for the recipe
with the same overrides (``train.out_dir``/``train.run_name``, by default
``checkpoints/<recipe name>``); a row with overrides needs a label and, unless its overrides
name ``train.run_name``, runs in ``<recipe name>-<label as a name>``, so that it never takes
the directory of the plain recipe. With seeds, (row, seed k) is its own run: ``train.seed=k``
in ``<that directory>-seed<k>``, its W&B run tagged ``seed:<k>``. Seeds given on the command
line replace both lists. Where the suite names a base, the report shows what each row
changes relative to it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..checks import check_range
from ..config import (
    Recipe,
    apply_overrides,
    changed_settings,
    from_dict,
    parse_overrides,
    read_recipe_data,
    read_yaml,
    recipe_to_dict,
    recipe_with_run_name,
)
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
    """One row of a suite: a recipe (or the suite's base) with overrides, its row name and
    the paper's numbers for it."""

    recipe: Optional[str] = None  # default: the suite's base
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    label: Optional[str] = None
    paper: dict[str, float] = field(default_factory=dict)
    seeds: Optional[list[int]] = None
    space: dict[str, Any] = field(default_factory=dict)  # the row's own keys, in a tuned suite

    def validate(self) -> None:
        check_seeds(self.seeds, "seeds")
        unknown = sorted(set(self.paper) - set(PAPER_METRICS))
        if unknown:
            raise ConfigError(
                f"paper has the key(s) {', '.join(unknown)}; a paper number must be one of "
                f"{', '.join(PAPER_METRICS)} (keys of results.json)."
            )
        if self.overrides and not self.label:
            raise ConfigError("a row with overrides needs a label: it names the row in the "
                              "report and its run directory. Add label: NAME.")

    def override_items(self) -> list[str]:
        """The row's overrides as ``key=value`` items (as `lm-flipout train` takes them)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.overrides.items()]


@dataclass
class SuiteTuning:
    """A tuned suite's ``tune:`` section: one budget and one shared space for every row."""

    trials: int
    space: dict[str, Any] = field(default_factory=dict)  # dotted key -> distribution
    pruner: Any = "median"  # checked as a search space's study.pruner
    sampler: str = "tpe"
    seed: Optional[int] = None
    trial_overrides: dict[str, Any] = field(default_factory=dict)  # set for the trials only

    def validate(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"tune.trials={self.trials} must be at least 1: it is the number "
                              "of finished or pruned trials of every row's study.")
        if not self.space:
            raise ConfigError("tune.space is empty. Give the space every row searches, e.g. "
                              "`optim.lr: {float: [0.001, 0.01], log: true}`.")


@dataclass
class Suite:
    """A suite file's contents (see the module docstring)."""

    group: str
    runs: list[SuiteRun]
    description: str = ""
    paper_source: str = ""
    base: Optional[str] = None  # once loaded: the path of the base recipe file
    baseline: Optional[str] = None
    seeds: Optional[list[int]] = None
    tune: Optional[SuiteTuning] = None

    def validate(self) -> None:
        check_seeds(self.seeds, "seeds")
        if not self.group:
            raise ConfigError("group is empty. Name the W&B group of the suite's runs.")
        if not self.runs:
            raise ConfigError("runs is empty. List at least one recipe.")


@dataclass
class PlannedRun:
    """One run of a suite row, resolved against the command line: the recipe to train, with
    which overrides (the suite's, the row's and the command line's, then the seed's), and
    where."""

    label: str
    recipe_path: str  # as given to train.py
    recipe: Recipe
    run_dir: Path
    paper: dict[str, float]
    overrides: list[str] = field(default_factory=list)
    seed: Optional[int] = None  # None: the recipe's own train.seed, the row's only run
    changes: dict[str, Any] = field(default_factory=dict)  # the row's settings that differ
    # from the suite's base (empty without a base)

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
    """Read and check a suite file; returns it with the path of each row's recipe (the suite
    file's folder joined with the row's recipe, or with the suite's base). A missing recipe,
    or an override key the schema lacks, is a ConfigError."""
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
            "description, paper_source, base, baseline, seeds, tune) at the top level."
        )
    suite = from_dict(Suite, data, f"suite file {path}")
    if suite.base is not None:
        suite.base = os.path.normpath(path.parent / suite.base)
        if not Path(suite.base).is_file():
            raise ConfigError(
                f"Suite file {path} names the base recipe {data['base']!r}, but {suite.base} "
                "does not exist; recipe paths are relative to the suite file's folder. Fix the "
                "path or remove the base: key."
            )
    recipe_paths = [_row_recipe(path, suite, i) for i in range(len(suite.runs))]
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
    for i, (run, recipe_path) in enumerate(zip(suite.runs, recipe_paths)):
        _check_overrides(path, i, run, recipe_path)
        _check_row_space(path, i, run, suite.tune)
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


def _row_recipe(suite_path: Path, suite: Suite, i: int) -> str:
    """The recipe file row ``i`` trains: its own (relative to the suite file's folder), or
    the suite's base."""
    row = suite.runs[i]
    if row.recipe is not None:
        return os.path.normpath(suite_path.parent / row.recipe)
    if suite.base is None:
        raise ConfigError(
            f"Suite file {suite_path}: runs[{i}] names no recipe and the suite no "
            "base. Give the row a recipe: (a file relative to the suite), or give the suite a "
            "base: recipe that the row's overrides apply to."
        )
    return suite.base


def _check_overrides(suite_path: Path, i: int, row: SuiteRun, recipe_path: str) -> None:
    """Check the keys and types of a row's overrides against the schema (ranges are checked
    when the runs are planned)."""
    if not row.overrides:
        return
    source = f"Suite file {suite_path}, runs[{i}].overrides:"
    for key in row.overrides:
        try:
            parse_overrides([f"{key}=null"])
        except ConfigError:
            raise ConfigError(f"{source} {key!r} is not a dotted key such as optim.lr or "
                              "model.noise.p (no spaces, no empty parts).") from None
    apply_overrides(read_recipe_data(recipe_path)[0], row.overrides, source=source)


def _check_row_space(suite_path: Path, i: int, row: SuiteRun,
                     tuning: Optional[SuiteTuning]) -> None:
    """A row's own space needs the suite's tune: section and must not repeat a shared key
    (every row searches the shared space exactly as given)."""
    if row.space and tuning is None:
        raise ConfigError(f"Suite file {suite_path}: runs[{i}].space is searched only in a tuned "
                          "suite. Add a tune: section (trials and the shared space) or remove "
                          "the row's space.")
    shared = sorted(set(row.space) & set(tuning.space if tuning else {}))
    if shared:
        raise ConfigError(
            f"Suite file {suite_path}: runs[{i}].space repeats {', '.join(map(repr, shared))} "
            "of the shared space tune.space; every row searches the shared space as it is. "
            "Remove the key from the row, or move it out of tune.space into every row.")


def _slug(label: str) -> str:
    """A row label as part of a folder name: ``WD + Flipout`` -> ``wd-flipout``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "row"


def row_overrides(row: SuiteRun, recipe_path: str) -> list[str]:
    """The overrides that make a row's recipe the row: its own, then its run name (a row with
    overrides runs in ``<recipe name>-<label>`` unless they name ``train.run_name``)."""
    items = row.override_items()
    if row.overrides and "train.run_name" not in row.overrides:
        name = f"{Path(recipe_path).stem}-{_slug(str(row.label))}"
        items.append(f"train.run_name={json.dumps(name)}")
    return items


def plan_runs(suite: Suite, recipe_paths: list[str], overrides: list[str],
              seeds: Optional[list[int]] = None,
              best: Optional[dict[str, dict[str, Any]]] = None) -> list[PlannedRun]:
    """Load every row's recipe with the suite's W&B group, the row's and the command-line
    overrides (so a bad override fails before anything trains) and find each run's
    directory: one run per row, or one per (row, seed) where ``seeds`` (the command line's),
    the row or the suite list seeds. In a tuned suite a row runs in ``<its run name>-best``
    with its study's best parameters (``best``: row label -> dotted key -> value) set last."""
    shared = run_overrides(suite, overrides)
    if any(item.partition("=")[0].strip() == "train.seed" for item in overrides) and (
            seeds or suite.seeds or any(run.seeds for run in suite.runs)):
        raise ConfigError("The override train.seed=... conflicts with the suite's seeds: each "
                          "(row, seed) run sets train.seed itself. Choose the seeds with "
                          "--seeds 1,2,3 (or the suite's seeds: list) instead.")
    base = None if suite.base is None else recipe_to_dict(
        recipe_with_run_name(suite.base, shared)[0])
    runs, seen = [], {}
    for row, recipe_path in zip(suite.runs, recipe_paths):
        label = str(row.label)
        # the row's own overrides first, so that the command line's win over them
        row_items = [shared[0], *row_overrides(row, recipe_path), *shared[1:]]
        try:
            if suite.tune is not None:
                row_items = _best_items(recipe_path, row_items, (best or {}).get(label, {}))
            recipe, run_dir = recipe_with_run_name(recipe_path, row_items)
        except ConfigError as err:
            raise ConfigError(f"Suite row {label!r}: {err}") from None
        changes = {} if base is None else {
            key: new for key, (_, new) in changed_settings(base, recipe_to_dict(recipe)).items()
            if key != "train.run_name"}
        row_seeds = seeds or row.seeds or suite.seeds
        planned = [PlannedRun(label, recipe_path, recipe, run_dir, dict(row.paper), row_items,
                              changes=changes)]
        if row_seeds:
            planned = [_seed_run(planned[0], seed) for seed in row_seeds]
        for run in planned:
            if run.run_dir in seen:
                raise ConfigError(
                    f"The runs {seen[run.run_dir]!r} and {run.name!r} of the suite would both "
                    f"train in {run.run_dir}. Do not set train.run_name for a whole suite; use "
                    "train.out_dir=DIR to put all its runs somewhere else.")
            seen[run.run_dir] = run.name
        runs += planned
    return runs


def _best_items(recipe_path: str, items: list[str], params: dict[str, Any]) -> list[str]:
    """A tuned row's overrides: its own, its study's best ``params``, its run name + -best."""
    name = recipe_with_run_name(recipe_path, items)[0].train.run_name
    return [*items, *(f"{key}={json.dumps(value)}" for key, value in params.items()),
            f"train.run_name={json.dumps(f'{name}-best')}"]


def _seed_run(row: PlannedRun, seed: int) -> PlannedRun:
    """The run of one seed of a row: its recipe with train.seed, a run name ending in
    -seed<k> and the W&B tag seed:<k> added to the recipe's tags."""
    recipe = row.recipe
    overrides = [*row.overrides, f"train.seed={seed}",
                 f"train.run_name={json.dumps(f'{recipe.train.run_name}-seed{seed}')}",
                 f"wandb.tags={json.dumps([*recipe.wandb.tags, f'seed:{seed}'])}"]
    seeded, run_dir = recipe_with_run_name(row.recipe_path, overrides)
    return PlannedRun(row.label, row.recipe_path, seeded, run_dir, row.paper, overrides, seed,
                      row.changes)


def run_overrides(suite: Suite, overrides: list[str]) -> list[str]:
    """The overrides every run of the suite gets: its W&B group, then the command line's."""
    return [f"wandb.group={json.dumps(suite.group)}", *overrides]
