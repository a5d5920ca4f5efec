"""``lm-flipout train RECIPE [key=value ...] [--resume] [--print-config]``: train an LSTM
language model from a YAML recipe (``python train.py`` is the same command)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from . import fail, parse_in_any_order

if TYPE_CHECKING:  # lm_flipout.training imports torch, which --help does not need
    from ..training.distributed import DistContext

PROG = "lm-flipout train"

EPILOG = """examples:
  {prog} quickstart                       # a built-in recipe (`lm-flipout recipes` lists them)
  {prog} recipes/quickstart.yaml
  {prog} recipes/ptb/word_medium_gauss_flipout.yaml model.noise.sigma=0.5 optim.lr=20
  {prog} recipes/quickstart.yaml --resume        # continue from checkpoints/<run>/last.pt
  {prog} recipes/quickstart.yaml --print-config  # the resolved recipe, nothing trained

A recipe may name another as its base (base: word_cpu.yaml, relative to the recipe's folder)
and set only what differs; sections merge key by key, other values replace, and --print-config,
config.yaml and the checkpoints hold the resolved whole. Options and key=value overrides may
come in any order. The run directory is
<train.out_dir>/<train.run_name> (default checkpoints/<recipe name>, relative to the current
folder) and holds config.yaml, last.pt, best.pt, metrics.jsonl and results.json. W&B logs
offline by default (wandb.mode=online to sync, wandb.mode=disabled to skip). Ctrl-C or SIGTERM
finish the current step, write last.pt and exit (during the final scoring they stop at once);
--resume continues exactly where the run stopped, scoring what is left, and on a finished run
only reports the results. A last.pt or best.pt whose contents no longer match the checksum
stored in it is refused unless --allow-corrupt-checkpoint (results.json is then marked). A
resume may change the training length, the checkpoint and log intervals, the device, paths, W&B
settings, optim.lr and optim.clip. A bare data.path such as `ptb` is a folder under the data
root ($LM_FLIPOUT_DATA, default ~/.cache/lm_flipout/data); `lm-flipout data fetch ptb`
downloads Penn Treebank there.

data parallel (one model, the batch split across processes; batch sizes stay global):
  torchrun --standalone --nproc_per_node=4 train.py RECIPE [key=value ...] [--resume]
  torchrun --standalone --nproc_per_node=4 -m lm_flipout train RECIPE [key=value ...]
  Only rank 0 writes the run directory and logs; resume with the same number of processes.

W&B sweeps: `wandb sweep recipes/sweeps/NAME.yaml`, then `wandb agent ENTITY/PROJECT/ID` on
any number of machines. Each trial trains in <out_dir>/<recipe name>-<W&B run id> unless
train.run_name is given, and must log online (the sweep files add wandb.mode=online)."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the train command."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Train an LSTM language model described by a YAML recipe.",
        epilog=EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="path of a YAML recipe, or the name of a built-in "
                                           "one (`lm-flipout recipes` lists them)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides of recipe values, e.g. optim.lr=20 "
                             "model.num_layers=1")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its last.pt (starts afresh if there is none)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe as YAML and exit")
    parser.add_argument("--allow-corrupt-checkpoint", action="store_true",
                        help="resume from (and score) checkpoints whose contents no longer "
                             "match their checksum (warns; results.json is marked)")
    return parser


def parse_args(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The command line, options and overrides in any order."""
    return parse_in_any_order(build_parser(prog), argv)


def resume_command(prog: str, recipe: str, overrides: list[str], ctx: DistContext) -> str:
    """The command line that continues this run, in the form it was started with and
    working as pasted from any folder: it changes to the folder the run was started in
    (run directories and the recipe's path are relative to it), and names the interpreter and
    script (``train.py``) that ran."""
    tail = [recipe, *overrides, "--resume"]
    cd = f"cd {shlex.quote(os.getcwd())} && "
    if not ctx.enabled:
        return cd + shlex.join([*_launcher(prog), *tail])
    program = [_script(prog)] if prog.endswith(".py") else ["-m", "lm_flipout", "train"]
    launch = ["torchrun", f"--nproc_per_node={ctx.local_world_size}"]
    if ctx.num_nodes == 1:
        return cd + shlex.join([*launch, *program, *tail])
    launch.append(f"--nnodes={ctx.num_nodes}")
    return (cd + shlex.join([*launch, *program, *tail])
            + "  (on every node, with the same rendezvous options as before)")


def _launcher(prog: str) -> list[str]:
    """The command that started this process: this interpreter and the script, or the
    console command (``lm-flipout train``, ``python -m lm_flipout train``)."""
    if prog.endswith(".py"):
        return [sys.executable, _script(prog)]
    words = shlex.split(prog)
    return [sys.executable, *words[1:]] if words[0] == "python" else words


def _script(prog: str) -> str:
    """The absolute path of the script ``prog`` names, as this process was started with it."""
    started = sys.argv[0] if sys.argv and Path(sys.argv[0]).name == Path(prog).name else prog
    return os.path.abspath(started)


def run_training(args: argparse.Namespace, overrides: list[str], ctx: DistContext,
                 prog: str) -> int:
    """Resolve the recipe (``overrides`` gains a sweep trial's run name) and train it."""
    from ..config import recipe_to_yaml, recipe_with_run_name
    from ..config.builtin_recipes import recipe_file
    from ..sweeps import check_sweep_logging, sweep_run_name

    path = str(recipe_file(args.recipe))  # a file, else a built-in recipe's name
    name = sweep_run_name(path, overrides, os.environ)
    if name is not None:
        overrides.append(f"train.run_name={name}")
    recipe, run_dir = recipe_with_run_name(path, overrides)
    if args.print_config:
        if ctx.is_main:
            print(recipe_to_yaml(recipe).replace(
                "model:\n  vocab_size: null\n",
                "model:\n  vocab_size: null  # the corpus's vocabulary, set when training starts\n",
                1), end="")
        return 0
    check_sweep_logging(recipe.wandb.mode, os.environ)
    from ..training import AlreadyFinished, Interrupted, RunWriteError, Trainer

    try:
        Trainer(recipe, run_dir, resume=args.resume, dist=ctx,
                allow_corrupt=args.allow_corrupt_checkpoint).run()
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
            if stop.scoring:
                what = (f"Stopped during the final scoring; {stop.run_dir / 'last.pt'} holds "
                        "the finished training, and a resume scores the splits left.")
            elif stop.saved:
                what = f"Stopped after writing {stop.run_dir / 'last.pt'}."
            else:
                what = (f"Stopped at once; {stop.run_dir / 'last.pt'} is the one from the last "
                        "regular save.")
            print(f"\n{what} Resume with:\n  "
                  f"{resume_command(prog, args.recipe, overrides, ctx)}", file=sys.stderr)
        return 128 + stop.signum
    except RunWriteError as error:  # add the command that continues the run
        error.args = (f"{error} The command: {resume_command(prog, args.recipe, overrides, ctx)}",)
        raise
    return 0


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv, prog)
    from ..training import distributed

    overrides = list(args.overrides)
    ctx = distributed.DistContext()
    ranks_end_together = False  # every rank is known to end here (see distributed.shutdown)
    try:
        ctx = distributed.from_environment()
        status = run_training(args, overrides, ctx, prog)
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
                  f"{resume_command(prog, args.recipe, overrides, ctx)}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(ranks_end_together)
