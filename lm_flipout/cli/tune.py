"""``lm-flipout tune RECIPE --space SPACE.yaml --trials N [key=value ...]``: search a recipe's
hyperparameters with Optuna; every trial is an ordinary training run."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from ..config import recipe_with_run_name
from ..config.builtin_recipes import recipe_file
from ..errors import UserError
from . import fail, parse_in_any_order

PROG = "lm-flipout tune"

EPILOG = """search space (SPACE.yaml): dotted recipe keys to distributions
  optim.lr: {{float: [0.001, 0.01], log: true}}
  model.dropout_output: {{float: [0.0, 0.5]}}
  model.num_layers: {{int: [1, 2]}}               # optional step: N
  model.noise.family: {{choice: [gaussian, dropconnect]}}
  study: {{trials: 20, pruner: median, sampler: tpe, seed: 0}}   # optional
The pruner is median, successive_halving or none (or {{median: {{n_warmup_steps: 2}}}} with
Optuna's arguments); the sampler tpe (default, seeded by study.seed or train.seed) or random.

examples:
  {prog} recipes/quickstart.yaml --space recipes/spaces/quickstart.yaml --trials 12
  {prog} RECIPE --space SPACE.yaml --trials 40 --storage postgresql://user@host/db

The study lives in <train.out_dir>/<train.run_name>-tune/: one run directory per trial
(trial-0000/, ...), trials.csv (number, state, value, parameters), study.journal (the
default storage) and, once all N trials have ended, best.yaml (a complete recipe for
`lm-flipout train`), report.md and Optuna's plots. The objective is a trial's best
validation perplexity; each epoch's is reported to the pruner. Overrides apply to every trial.

Stopped or killed at any moment, the same command continues: finished and pruned trials are
kept and an interrupted trial resumes from its last.pt under its own number, until the study
holds exactly N finished or pruned trials. Several processes may work on one study: on one
machine through the default storage, across machines through --storage."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Search a recipe's hyperparameters with Optuna.",
        epilog=EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="path of the YAML recipe every trial starts from")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides applied to every trial, e.g. train.epochs=10")
    parser.add_argument("--space", required=True, help="the search space (YAML)")
    parser.add_argument("--trials", type=int, default=None,
                        help="finished or pruned trials the study should hold (default: the "
                             "space file's study.trials)")
    parser.add_argument("--storage", default=None,
                        help="an Optuna storage URL (sqlite:///FILE, postgresql://...); "
                             "default: study.journal in the study's directory")
    return parser


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    args = parse_in_any_order(build_parser(prog), argv)
    command = shlex.join([*shlex.split(prog), *argv])
    try:
        try:
            import optuna  # noqa: F401 - checked before anything is read
        except ImportError:
            raise UserError("lm-flipout tune needs Optuna, which is not installed. Install it "
                            "with `pip install optuna` (or `pip install -e .[tune]`).") from None
        from tqdm import tqdm

        from ..experiments.tuning import read_space, tune
        from ..training import Interrupted

        recipe = str(recipe_file(args.recipe))  # a file, else a built-in recipe's name
        base, _ = recipe_with_run_name(recipe, list(args.overrides))
        space = read_space(args.space, base)
        try:
            result = tune(base, space, args.trials, args.storage, command, echo=tqdm.write)
        except Interrupted as stop:
            print(f"\nStopped; the trial's last.pt is kept. Continue the study with:\n  {command}",
                  file=sys.stderr)
            return 128 + stop.signum
    except UserError as error:
        return fail(error)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Continue the study with:\n  {command}", file=sys.stderr)
        return 130
    if result.best_path is not None:
        print(f"Best: trial {result.best_number}, validation perplexity "
              f"{result.best_value:.2f}. Its recipe, which `lm-flipout train` accepts as it is: "
              f"{result.best_path}")
        print(result.best_path.read_text(encoding="utf-8"), end="")
    return 0
