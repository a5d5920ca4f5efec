#!/usr/bin/env python
"""Train an LSTM language model from a YAML recipe. See `python train.py --help`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from lm_flipout.cli import fail, recipe_with_run_name
from lm_flipout.errors import ConfigError, UserError

if TYPE_CHECKING:  # lm_flipout.distributed imports torch, which --help does not need
    from lm_flipout.distributed import DistContext

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


def sweep_run_name(recipe_path: str, overrides: list[str],
                   environ: Mapping[str, str]) -> Optional[str]:
    """``<recipe>-<WANDB_RUN_ID>`` when a W&B sweep agent started this process and neither the
    recipe nor the overrides name the run, so that every trial gets its own run directory."""
    if not (environ.get("WANDB_SWEEP_ID") and environ.get("WANDB_RUN_ID")):
        return None
    if any(item.partition("=")[0].strip() == "train.run_name" for item in overrides):
        return None
    from lm_flipout.config import read_yaml

    data = read_yaml(recipe_path)
    train = data.get("train") if isinstance(data, dict) else None
    if isinstance(train, dict) and train.get("run_name") is not None:
        return None
    return f"{Path(recipe_path).stem}-{environ['WANDB_RUN_ID']}"


def check_sweep_logging(mode: str, environ: Mapping[str, str]) -> None:
    """A sweep trial must log online: offline, the agent would never see its results."""
    sweep = environ.get("WANDB_SWEEP_ID")
    if sweep and mode == "offline":
        raise ConfigError(
            f"This run is a trial of the W&B sweep {sweep} (WANDB_SWEEP_ID is set), but "
            "wandb.mode=offline, so the sweep would never receive its metrics. Add "
            "wandb.mode=online to the sweep's command (the files in recipes/sweeps/ do), or "
            "wandb.mode=disabled to train without W&B."
        )


def resume_command(recipe: str, overrides: list[str], ctx: DistContext) -> str:
    """The command line that continues this run."""
    if not ctx.enabled:
        return shlex.join(["python", "train.py", recipe, *overrides, "--resume"])
    launch = ["torchrun", f"--nproc_per_node={ctx.local_world_size}"]
    if ctx.num_nodes == 1:
        return shlex.join([*launch, "train.py", recipe, *overrides, "--resume"])
    launch.append(f"--nnodes={ctx.num_nodes}")
    return (shlex.join([*launch, "train.py", recipe, *overrides, "--resume"])
            + "  (on every node, with the same rendezvous options as before)")


def run_training(args: argparse.Namespace, overrides: list[str], ctx: DistContext) -> int:
    """Resolve the recipe (``overrides`` gains a sweep trial's run name) and train it."""
    from lm_flipout.config import recipe_to_yaml

    name = sweep_run_name(args.recipe, overrides, os.environ)
    if name is not None:
        overrides.append(f"train.run_name={name}")
    recipe, run_dir = recipe_with_run_name(args.recipe, overrides)
    if args.print_config:
        if ctx.is_main:
            print(recipe_to_yaml(recipe), end="")
        return 0
    check_sweep_logging(recipe.wandb.mode, os.environ)
    from lm_flipout.training import AlreadyFinished, Interrupted, Trainer

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
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from lm_flipout import distributed

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
            print("\nInterrupted before training started. Start again with:\n  "
                  f"{resume_command(args.recipe, overrides, ctx)}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(ranks_end_together)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
