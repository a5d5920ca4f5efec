"""Helpers shared by the command-line entry points (train.py, evaluate.py, python -m ...)."""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # lm_flipout.training imports torch, which --help does not need
    from .training.distributed import DistContext


def fail(error: UserError) -> int:
    """Print a user error as one wrapped paragraph (no traceback); exit status 2."""
    text = textwrap.fill(str(error), width=100, break_long_words=False, break_on_hyphens=False)
    print(f"error: {text}", file=sys.stderr)
    return 2


def recipe_with_run_name(path: str, overrides: list[str]):
    """Load a recipe; an unset ``train.run_name`` becomes the recipe file's stem.
    Returns the recipe and its run directory."""
    from .config import load_recipe

    recipe = load_recipe(path, overrides)
    if not recipe.train.run_name:
        recipe.train.run_name = Path(path).stem
    return recipe, Path(recipe.train.out_dir) / recipe.train.run_name


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
