"""What a study leaves in its directory: ``trials.csv``, ``best.yaml``, ``report.md`` with
Optuna's optimization-history and parameter-importance plots, and on W&B a state tag on
each trial's run and a summary run with the best configuration and the trials table."""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from ...atomic import atomic_write
from ...config import Recipe, save_recipe
from ...errors import first_line
from .space import SearchSpace
from .trial import DIVERGED_ATTR, trial_dir_name, trial_recipe

TRIALS_FILE, BEST_FILE, REPORT_FILE = "trials.csv", "best.yaml", "report.md"
HISTORY_PLOT, IMPORTANCE_PLOT = "optimization_history.png", "param_importances.png"


def ended_trials(study: Any) -> list[Any]:
    """The study's finished and pruned trials, by number."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def trial_value(frozen: Any) -> Optional[float]:
    """A finished trial's best validation perplexity; a pruned one's best before it stopped
    (None when it diverged before its first validation)."""
    if frozen.value is not None and frozen.state.name == "COMPLETE":
        return frozen.value
    reached = [v for v in frozen.intermediate_values.values() if math.isfinite(v)]
    return min(reached) if reached else None


def trials_table(study: Any, space: SearchSpace) -> tuple[list[str], list[list[Any]]]:
    """Columns (number, state, value, the parameters) and one row per ended trial."""
    columns = ["number", "state", "value", *space.params]
    rows = []
    for frozen in ended_trials(study):
        value = trial_value(frozen)
        rows.append([frozen.number, frozen.state.name.lower(),
                     "" if value is None else round(value, 4),
                     *(frozen.params.get(key, "") for key in space.params)])
    return columns, rows


def write_trials_csv(study: Any, space: SearchSpace, study_dir: Path) -> Path:
    columns, rows = trials_table(study, space)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    path = study_dir / TRIALS_FILE
    with atomic_write(path) as handle:
        handle.write(text.getvalue().encode("utf-8"))
    return path


def best_recipe(study: Any, base: Recipe) -> tuple[Any, Recipe]:
    """The best finished trial and its configuration as a complete recipe, writing to
    ``<train.out_dir>/<train.run_name>-best``."""
    best = study.best_trial
    out_dir = Path(base.train.out_dir)
    recipe = trial_recipe(base, best.params, out_dir, f"{base.train.run_name}-best")
    recipe.wandb = replace(base.wandb)  # the study's group was only for its trials
    return best, recipe


def write_best(study: Any, base: Recipe, study_dir: Path) -> tuple[Any, Recipe, Path]:
    best, recipe = best_recipe(study, base)
    path = study_dir / BEST_FILE
    save_recipe(recipe, path)
    return best, recipe, path


def write_plots(study: Any, study_dir: Path, echo: Callable[[str], None]) -> list[str]:
    """Optuna's optimization-history and parameter-importance plots as PNG; a plot that
    cannot be made (too few trials, matplotlib missing) is skipped with a message."""
    made = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as optuna_plots
    except ImportError as err:
        echo(f"No plots: {first_line(err)} (install matplotlib).")
        return made
    for name, draw in ((HISTORY_PLOT, optuna_plots.plot_optimization_history),
                       (IMPORTANCE_PLOT, optuna_plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = draw(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
            plt.close(figure)
            with atomic_write(study_dir / name) as handle:
                handle.write(buffer.getvalue())
            made.append(name)
        except Exception as err:  # noqa: BLE001 - e.g. importances need two finished trials
            echo(f"The plot {name} was not made: {first_line(err)}")
    return made


def write_report(study: Any, space: SearchSpace, base: Recipe, study_dir: Path,
                 command: str, plots: list[str]) -> Path:
    """A short Markdown summary: the command, the counts, the best trial, the plots."""
    columns, rows = trials_table(study, space)
    best, _ = best_recipe(study, base)
    pruned = sum(row[1] == "pruned" for row in rows)
    diverged = sum(DIVERGED_ATTR in t.user_attrs for t in ended_trials(study))
    lines = [f"# Study {study.study_name}", "", f"Command: `{command}`", "",
             f"{len(rows)} trials: {len(rows) - pruned} finished, {pruned} pruned"
             + (f" ({diverged} of them diverged)" if diverged else "") + ". The objective is a "
             "trial's best validation perplexity.", "",
             f"Best: trial {best.number} ({trial_dir_name(best.number)}), validation perplexity "
             f"{best.value:.2f}; its recipe is [{BEST_FILE}]({BEST_FILE}).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    lines += [""] + [f"![{name}]({name})" for name in plots]
    path = study_dir / REPORT_FILE
    with atomic_write(path) as handle:
        handle.write(("\n".join(lines) + "\n").encode("utf-8"))
    return path


def tag_trial_run(recipe: Recipe, run_dir: Path, state: str) -> None:
    """Add the trial's final state ("finished" or "pruned") as a tag of its W&B run."""
    if recipe.wandb.mode == "disabled":
        return
    from ...config import recipe_to_dict
    from ...tracking import start_wandb

    run = start_wandb(recipe.wandb, run_dir, recipe_to_dict(recipe), resume=True)
    run.tags = tuple(run.tags or ()) + (state,)
    run.finish()


def wandb_summary(study: Any, space: SearchSpace, base: Recipe, study_dir: Path) -> None:
    """The study's summary W&B run in its group: the best configuration as config, its
    value in the summary and the trials table."""
    if base.wandb.mode == "disabled":
        return
    from ...config import recipe_to_dict
    from ...tracking import start_wandb

    best, recipe = best_recipe(study, base)
    settings = replace(base.wandb, group=study.study_name, name=f"{study.study_name}/summary")
    run = start_wandb(settings, study_dir / "summary", recipe_to_dict(recipe), resume=True)
    import wandb  # start_wandb has checked that it is installed

    columns, rows = trials_table(study, space)
    run.log({"trials": wandb.Table(columns=columns, data=[[str(c) for c in row] for row in rows])})
    run.summary.update({"best_valid_ppl": best.value, "best_trial": best.number,
                        "best_params": best.params})
    run.finish()
