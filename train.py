#!/usr/bin/env python
"""Train an LSTM language model from a YAML recipe. See `python train.py --help`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from lm_flipout.cli import fail, recipe_with_run_name, resume_command
from lm_flipout.errors import UserError

if TYPE_CHECKING:  # lm_flipout.training imports torch, which --help does not need
    from lm_flipout.training.distributed import DistContext

EPILOG = """examples:
  python train.py recipes/quickstart.yaml
  python train.py recipes/ptb/word_medium_wd_flipout.yaml model.noise.sigma=0.5 optim.lr=20
  python train.py recipes/quickstart.yaml --resume        # continue from checkpoints/<run>/last.pt
  python train.py recipes/quickstart.yaml --print-config  # the resolved recipe, nothing trained

The run directory is <train.out_dir>/<train.run_name> (default checkpoints/<recipe name>) and
holds config.yaml, last.pt, best.pt, metrics.jsonl and results.json. W&B logs offline by
default (wandb.mode=online to sync, wandb.mode=disabled to skip). Ctrl-C or SIGTERM finish the
current step, write last.pt and exit; --resume continues exactly where the run stopped (on a
finished run it only reports the results). A resume may change the training length, the
checkpoint and log intervals, the device, paths, W&B settings, optim.lr and optim.clip.

data parallel (one model, the batch split across processes; batch sizes stay global):
  torchrun --standalone --nproc_per_node=4 train.py RECIPE [key=value ...] [--resume]
  Only rank 0 writes the run directory and logs; resume with the same number of processes.

W&B sweeps: `wandb sweep recipes/sweeps/NAME.yaml`, then `wandb agent ENTITY/PROJECT/ID` on
any number of machines. Each trial trains in <out_dir>/<recipe name>-<W&B run id> unless
train.run_name is given, and must log online (the sweep files add wandb.mode=online)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train an LSTM language model described by a YAML recipe.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="path of the YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides of recipe values, e.g. optim.lr=20 model.num_layers=1")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its last.pt (starts afresh if there is none)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe as YAML and exit")
    return parser.parse_args(argv)


def run_training(args: argparse.Namespace, overrides: list[str], ctx: DistContext) -> int:
    """Resolve the recipe (``overrides`` gains a sweep trial's run name) and train it."""
    from lm_flipout.config import recipe_to_yaml
    from lm_flipout.sweeps import check_sweep_logging, sweep_run_name

    name = sweep_run_name(args.recipe, overrides, os.environ)
    if name is not None:
        overrides.append(f"train.run_name={name}")
    recipe, run_dir = recipe_with_run_name(args.recipe, overrides)
    if args.print_config:
        if ctx.is_main:
            print(recipe_to_yaml(recipe), end="")
        return 0
    check_sweep_logging(recipe.wandb.mode, os.environ)
    from lm_flipout.training import AlreadyFinished, Interrupted, RunWriteError, Trainer

    try:
        Trainer(recipe, run_dir, resume=args.resume, dist=ctx).run()
    except AlreadyFinished as done:
        if ctx.is_main:
            shown = ", ".join(f"{key} {done.results[key]:.4g}" for key in ("valid_ppl", "test_ppl")
                              if isinstance(done.results.get(key), (int, float)))
            print(f"{done.run_dir} is already finished ({shown}); nothing was trained. Its "
                  f"results are in {done.run_dir / 'results.json'}. To train further, start a new "
                  "run with train.run_name=NAME.")
        return 0
    except Interrupted as stop:
        if ctx.is_main:
            if stop.saved:
                what = f"Stopped after writing {stop.run_dir / 'last.pt'}."
            else:
                what = (f"Stopped at once; {stop.run_dir / 'last.pt'} is the one from the last "
                        "regular save.")
            print(f"\n{what} Resume with:\n  {resume_command(args.recipe, overrides, ctx)}",
                  file=sys.stderr)
        return 128 + stop.signum
    except RunWriteError as error:  # add the command that continues the run
        error.args = (f"{error} The command: {resume_command(args.recipe, overrides, ctx)}",)
        raise
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from lm_flipout.training import distributed

    overrides = list(args.overrides)
    ctx = distributed.DistContext()
    ranks_end_together = False  # every rank is known to end here (see distributed.shutdown)
    try:
        ctx = distributed.from_environment()
        status = run_training(args, overrides, ctx)
        ranks_end_together = True
        return status
    except UserError as error:
        ranks_end_together = getattr(error, "raised_on_main", False)
        if ctx.is_main:
            return fail(error)
        if ranks_end_together:
            return 2  # rank 0 reports it
        return fail(UserError(f"(rank {ctx.rank}) {error}"))
    except KeyboardInterrupt:
        if ctx.is_main:
            print("\nInterrupted before training started. Start again with: "
                  f"{resume_command(args.recipe, overrides, ctx)}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(ranks_end_together)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C while the libraries load
        print("\nInterrupted during start-up; nothing was changed.", file=sys.stderr)
        sys.exit(130)
