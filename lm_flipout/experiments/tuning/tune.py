"""A whole study: check the space, open the study, train this process's share of the trials,
and write the outputs once the study holds the requested number of trials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ...config import Recipe
from ...errors import ConfigError
from .outputs import (
    ended_trials,
    tag_trial_run,
    wandb_summary,
    write_best,
    write_plots,
    write_report,
    write_trials_csv,
)
from .space import SearchSpace
from .study import default_storage, open_study, run_study
from .trial import run_trial, trial_dir_name, trial_recipe


def study_dir_of(base: Recipe) -> Path:
    """``<train.out_dir>/<train.run_name>-tune``."""
    return Path(base.train.out_dir) / f"{base.train.run_name}-tune"


@dataclass
class TuneResult:
    """Where the study stands when this process ends."""

    study_dir: Path
    ended: int  # finished or pruned trials in the study
    total: int
    best_path: Optional[Path] = None  # best.yaml, once the study is complete
    best_value: Optional[float] = None
    best_number: Optional[int] = None


def tune(base: Recipe, space: SearchSpace, trials: Optional[int], storage: Optional[str] = None,
         command: str = "", echo: Callable[[str], None] = print) -> TuneResult:
    """Run the study of ``base`` over ``space`` until it holds ``trials`` finished or pruned
    trials (``trials`` None: the space file's ``study.trials``)."""
    total = trials if trials is not None else space.study.trials
    if total is None or total < 1:
        raise ConfigError(f"No number of trials: give --trials N, or `study: {{trials: N}}` in "
                          f"{space.path}.")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what it would
    study_dir = study_dir_of(base)
    name = study_dir.name
    seed = space.study.seed if space.study.seed is not None else base.train.seed
    study = open_study(name, storage if storage else default_storage(study_dir), space, seed)

    def train_one(trial: Any) -> tuple[str, Optional[float]]:
        echo(f"Trial {trial.number} in {study_dir / trial_dir_name(trial.number)}")
        outcome = run_trial(trial, space, base, study_dir, name, echo)
        params = study.get_trials(deepcopy=False)[trial.number].params
        recipe = trial_recipe(base, params, study_dir, trial_dir_name(trial.number), name)
        tag_trial_run(recipe, study_dir / trial_dir_name(trial.number),
                      "pruned" if outcome.state == "pruned" else "finished")
        return outcome.state, outcome.value

    run_study(study, study_dir, total, train_one,
              after_each=lambda: write_trials_csv(study, space, study_dir), seed=seed)
    result = TuneResult(study_dir, len(ended_trials(study)), total)
    write_trials_csv(study, space, study_dir)
    if result.ended < total:
        echo(f"{result.ended} of {total} trials have ended; other processes are training the "
             f"rest. Results so far: {study_dir / 'trials.csv'}.")
        return result
    if not any(t.state.name == "COMPLETE" for t in ended_trials(study)):
        echo(f"All {total} trials were pruned; there is no best configuration. Widen the "
             "space, train longer or choose a gentler pruner.")
        return result
    best, _, best_path = write_best(study, base, study_dir)
    plots = write_plots(study, study_dir, echo)
    write_report(study, space, base, study_dir, command, plots)
    wandb_summary(study, space, base, study_dir)
    result.best_path, result.best_value, result.best_number = best_path, best.value, best.number
    return result
