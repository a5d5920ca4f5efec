#!/usr/bin/env python
"""Train an LSTM language model from a YAML recipe. See `python train.py --help`."""

from __future__ import annotations

import argparse
import shlex
import sys

from lm_flipout.cli import fail, recipe_with_run_name
from lm_flipout.errors import UserError

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
checkpoint and log intervals, the device, paths, W&B settings, optim.lr and optim.clip."""


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


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    resume_command = shlex.join(["python", "train.py", args.recipe, *args.overrides, "--resume"])
    try:
        from lm_flipout.config import recipe_to_yaml

        recipe, run_dir = recipe_with_run_name(args.recipe, args.overrides)
        if args.print_config:
            print(recipe_to_yaml(recipe), end="")
            return 0
        from lm_flipout.training import AlreadyFinished, Interrupted, Trainer

        try:
            Trainer(recipe, run_dir, resume=args.resume).run()
        except AlreadyFinished as done:
            shown = ", ".join(f"{key} {done.results[key]:.4g}" for key in ("valid_ppl", "test_ppl")
                              if isinstance(done.results.get(key), (int, float)))
            print(f"{done.run_dir} is already finished ({shown}); nothing was trained. Its "
                  f"results are in {done.run_dir / 'results.json'}. To train further, start a new "
                  "run with train.run_name=NAME.")
            return 0
        except Interrupted as stop:
            if stop.saved:
                what = f"Stopped after writing {stop.run_dir / 'last.pt'}."
            else:
                what = (f"Stopped at once; {stop.run_dir / 'last.pt'} is the one from the last "
                        "regular save.")
            print(f"\n{what} Resume with:\n  {resume_command}", file=sys.stderr)
            return 128 + stop.signum
    except UserError as error:
        return fail(error)
    except KeyboardInterrupt:
        print(f"\nInterrupted before training started. Start again with:\n  {resume_command}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
