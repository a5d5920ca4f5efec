"""Tuned suites: before a suite's rows are trained with its seeds, each row's hyperparameters
are searched by an ordinary ``lm-flipout tune`` study, every row with the same trial budget,
pruner and sampler over the same shared space plus its own keys (the protocol of Melis, Dyer
& Blunsom, ICLR 2018: every model tuned by black-box search under one budget).

A row's study is the one ``lm-flipout tune`` would run for the row's recipe (its overrides,
the suite's group, the command line's, then ``tune.trial_overrides``): it lives in
``<train.out_dir>/<that run name>-tune/`` with its default storage, and a rerun resumes it.
Once a row's study holds its trials, the row's seeds train its best parameters in
``<run name>-best-seed<k>``; the report adds each row's study (`tuning_lines`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..config import Recipe, recipe_with_run_name, setting_type
from ..errors import ConfigError
from .suite import Suite, SuiteTuning, row_overrides, run_overrides
from .tuning import SearchSpace, space_from_data, study_dir_of, tune
from .tuning.space import TUNER_KEYS


@dataclass
class RowStudy:
    """One row's study: the recipe its trials start from, its space, and what it holds."""

    label: str
    base: Recipe
    space: SearchSpace
    finished: int = 0
    pruned: int = 0
    best_params: Optional[dict[str, Any]] = None  # once the study holds all its trials
    best_value: Optional[float] = None
    best_number: Optional[int] = None

    @property
    def study_dir(self) -> Path:
        return study_dir_of(self.base)


def plan_studies(suite: Suite, suite_path: Union[str, Path], recipe_paths: list[str],
                 overrides: list[str]) -> list[RowStudy]:
    """Each row's study, its space checked against the row's recipe (so an invalid key or
    bound fails before anything trains). A command-line override of a searched key is a
    ConfigError: the search sets it."""
    tuning = suite.tune
    assert tuning is not None
    shared = run_overrides(suite, overrides)
    trial_items = [f"{key}={json.dumps(value)}" for key, value in tuning.trial_overrides.items()]
    for key in tuning.trial_overrides:
        setting_type(key, f"Suite file {suite_path}, tune.trial_overrides")
        if key in TUNER_KEYS:
            raise ConfigError(f"Suite file {suite_path}: tune.trial_overrides sets {key!r}, which "
                              "the tuner sets for each row's trials. Remove it.")
    studies = []
    for i, (row, recipe_path) in enumerate(zip(suite.runs, recipe_paths)):
        where = (f"Suite file {suite_path}, the search space of row {row.label!r} (tune.space "
                 f"and runs[{i}].space)")
        items = [shared[0], *row_overrides(row, recipe_path), *trial_items, *shared[1:]]
        try:
            base, _ = recipe_with_run_name(recipe_path, items)
        except ConfigError as err:
            raise ConfigError(f"Suite row {row.label!r}, its trials' recipe: {err}") from None
        space = space_from_data(_space_data(tuning, row.space), base, where, Path(suite_path))
        named = sorted({item.partition("=")[0].strip() for item in overrides} & set(space.params))
        if named:
            raise ConfigError(
                f"The override(s) {', '.join(named)} name keys that the suite {suite_path} "
                f"searches for row {row.label!r}; the search sets them. Remove the override(s), "
                "or take the key(s) out of the suite's spaces.")
        studies.append(RowStudy(str(row.label), base, space))
    return studies


def _space_data(tuning: SuiteTuning, own: dict[str, Any]) -> dict[str, Any]:
    """A row's space as a search-space file would hold it: the suite's study settings, the
    shared keys, then the row's own."""
    study = {"trials": tuning.trials, "pruner": tuning.pruner, "sampler": tuning.sampler,
             "seed": tuning.seed}
    return {"study": study, **tuning.space, **own}


def run_studies(studies: list[RowStudy], trials: int, command: str,
                echo: Callable[[str], None] = print) -> None:
    """Bring every row's study to ``trials`` finished or pruned trials (this process's share
    of them where other processes work on the same suite)."""
    for i, row in enumerate(studies, 1):
        echo(f"[study {i}/{len(studies)}] {row.label}: {trials} trials in {row.study_dir}")
        tune(row.base, row.space, trials, None, command, echo)


def read_studies(studies: list[RowStudy], trials: int) -> dict[str, dict[str, Any]]:
    """Fill in each study's counts and, where it holds all its trials, its best trial;
    returns the best parameters by row label. A row without a study yet stays empty."""
    from .tuning.outputs import ended_trials
    from .tuning.study import JOURNAL_FILE, default_storage, open_study

    best = {}
    for row in studies:
        if not (row.study_dir / JOURNAL_FILE).is_file():
            continue
        seed = row.space.study.seed if row.space.study.seed is not None else row.base.train.seed
        study = open_study(row.study_dir.name, default_storage(row.study_dir), row.space, seed)
        ended = ended_trials(study)
        row.pruned = sum(t.state.name == "PRUNED" for t in ended)
        row.finished = len(ended) - row.pruned
        if len(ended) >= trials and row.finished:
            trial = study.best_trial
            row.best_params, row.best_value, row.best_number = (dict(trial.params), trial.value,
                                                                trial.number)
            best[row.label] = row.best_params
    return best


def tuning_lines(tuning: SuiteTuning, studies: list[RowStudy]) -> list[str]:
    """The report's section on the search: the protocol every row shared, then per row its
    trials, its best trial's validation perplexity and its best parameters."""
    shared = ", ".join(f"`{key}` {_show(dist)}" for key, dist in tuning.space.items())
    trial_overrides = ", ".join(f"`{key}={value}`" for key, value in
                                tuning.trial_overrides.items())
    pruner = tuning.pruner if isinstance(tuning.pruner, str) else json.dumps(tuning.pruner)
    lines = [
        "## Tuning", "",
        f"Every row was tuned with the same budget, {tuning.trials} "
        f"trial{'s' if tuning.trials != 1 else ''} (finished or "
        f"pruned), by Optuna's {tuning.sampler} sampler (pruner: {pruner}), over the same "
        f"shared space: {shared}; each row adds its own keys, listed below."
        + (f" Trials ran with {trial_overrides}." if trial_overrides else "")
        + " The rows' seeds then trained each row's best parameters (the objective: a "
        "trial's best validation perplexity; the protocol of Melis et al. 2018).", ""]
    for row in studies:
        own = [key for key in row.space.params if key not in tuning.space]
        if own:
            lines.append(f"- {row.label} also searches "
                         + ", ".join(f"`{key}` {_show(row.space.params[key].as_plain())}"
                                     for key in own) + ".")
    if lines[-1] != "":
        lines.append("")
    lines += ["| row | trials (finished, pruned) | best trial | best trial's valid ppl | "
              "best hyperparameters |", "|---|---:|---:|---:|---|"]
    for row in studies:
        ended = row.finished + row.pruned
        counts = f"{ended} of {tuning.trials} ({row.finished}, {row.pruned})"
        if row.best_params is None:
            lines.append(f"| {row.label} | {counts} | — | — | study not complete |")
            continue
        params = ", ".join(f"`{key}={_value(value)}`" for key, value in row.best_params.items())
        lines.append(f"| {row.label} | {counts} | {row.best_number} | {row.best_value:.2f} | "
                     f"{params} |")
    return lines


def _show(dist: dict[str, Any]) -> str:
    """A distribution as written in a space, e.g. ``float [0.001, 0.01] (log)``."""
    kind = next(iter(dist))
    extras = [f"step {dist['step']}"] if "step" in dist else []
    extras += ["log"] if dist.get("log") else []
    return f"{kind} {dist[kind]}" + (f" ({', '.join(extras)})" if extras else "")


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
