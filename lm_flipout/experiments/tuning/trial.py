"""One trial: an ordinary training run in ``<study dir>/trial-NNNN`` whose recipe is the base
recipe with the trial's parameters, reporting each epoch's validation perplexity to Optuna."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ...config import Recipe, apply_overrides, from_dict, recipe_to_dict
from ...errors import TrainingError, first_line
from ...training import AlreadyFinished, Trainer
from ...training.run_dir import LAST_FILE
from .space import SearchSpace

PRUNED_ATTR = "pruned_at_epoch"
DIVERGED_ATTR = "diverged"


def trial_dir_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_recipe(base: Recipe, values: dict[str, Any], study_dir: Path, run_name: str,
                 group: Optional[str] = None) -> Recipe:
    """``base`` with the trial's ``values`` (dotted keys), writing to ``study_dir/run_name``;
    with ``group`` its W&B run joins the study's group."""
    settings: dict[str, Any] = dict(values)
    settings["train.out_dir"] = str(study_dir)
    settings["train.run_name"] = run_name
    if group is not None:
        settings["wandb.group"] = group
        if base.wandb.name is None:
            settings["wandb.name"] = f"{group}/{run_name}"
    data = apply_overrides(recipe_to_dict(base), settings)
    return from_dict(Recipe, data, f"the recipe of {run_name} in {study_dir}")


@dataclass
class Outcome:
    """How a trial ended: its state ("complete" or "pruned") and best validation perplexity."""

    state: str
    value: Optional[float]


def run_trial(trial: Any, space: SearchSpace, base: Recipe, study_dir: Path,
              group: str, echo: Callable[[str], None] = print) -> Outcome:
    """Train ``trial``'s run (resuming its last.pt when one exists) and return its outcome.

    A trial that the pruner stops, or whose training diverges, ends pruned; SIGINT/SIGTERM
    raise `Interrupted` with the trial's last.pt written, so a rerun continues it."""
    values = {key: dist.suggest(trial, key) for key, dist in space.params.items()}
    run_name = trial_dir_name(trial.number)
    recipe = trial_recipe(base, values, study_dir, run_name, group)
    run_dir = study_dir / run_name
    stored = trial.study.get_trials(deepcopy=False)[trial.number]
    reported = set(stored.intermediate_values)
    pruned = PRUNED_ATTR in stored.user_attrs

    def on_epoch_end(epoch: int, metrics: dict) -> bool:
        nonlocal pruned
        if epoch not in reported:  # a resumed trial repeats no report
            trial.report(metrics["valid_ppl"], epoch)
        if trial.should_prune():
            trial.set_user_attr(PRUNED_ATTR, epoch)
            pruned = True
        return pruned

    try:
        trainer = Trainer(recipe, run_dir, resume=(run_dir / LAST_FILE).exists(), echo=echo,
                          on_epoch_end=on_epoch_end)
        results = trainer.run()
    except AlreadyFinished as done:  # finished before the process that ran it was killed
        results = done.results
    except TrainingError as err:
        if not str(err).startswith("Training diverged"):  # the loop's divergence message
            raise
        trial.set_user_attr(DIVERGED_ATTR, first_line(err, 300))
        return Outcome("pruned", None)
    value = results.get("valid_ppl")
    return Outcome("pruned" if pruned else "complete", value)
