"""``lm-flipout recipes [list]`` and ``lm-flipout recipes copy NAME [DEST]``: the recipes that
ship inside the package, listed by name and copied out to edit (as torchtune's ``tune ls`` and
``tune cp``). ``lm-flipout train NAME`` trains one by name."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, UserError
from . import fail

PROG = "lm-flipout recipes"

EPILOG = """examples:
  {prog}                                   # list the built-in recipes, one line each
  {prog} copy quickstart                   # write ./quickstart.yaml
  {prog} copy ptb/word_cpu_wd_flipout my.yaml
  lm-flipout train quickstart                          # train a built-in recipe by name
  lm-flipout train my.yaml                             # train the edited copy

A recipe that composes others through `base:` is copied as one standalone file, its bases
resolved, so that the copy works wherever it is put. An existing file is never overwritten."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of the recipes command."""
    parser = argparse.ArgumentParser(
        prog=prog, description="List the built-in recipes, or copy one to edit.",
        epilog=EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=("list", "copy"), default="list",
                        help="list (the default) or copy")
    parser.add_argument("name", nargs="?", help="the recipe to copy, as `list` names it")
    parser.add_argument("dest", nargs="?", default=".",
                        help="the file or folder to copy to (default: the current folder)")
    return parser


def list_recipes(width: Optional[int]) -> None:
    """Print each built-in recipe's name and the first sentence of its description, cut to
    ``width`` columns unless it is None."""
    from ..config.builtin_recipes import builtin_recipes, description

    recipes = builtin_recipes()
    column = max(len(name) for name in recipes) + 2
    room = None if width is None else max(20, width - column)
    for name, path in recipes.items():
        text = description(path)
        if room is not None and len(text) > room:
            text = text[:room - 3].rstrip() + "..."
        print(f"{name:<{column}}{text}".rstrip())


def copy_recipe(name: str, dest: str) -> Path:
    """Write the built-in recipe `name` to `dest` (a file, or a folder to put it in)."""
    from ..config.builtin_recipes import copy_text, find_builtin, suggestion

    source = find_builtin(name)
    if source is None:
        raise ConfigError(f"There is no built-in recipe named {name!r}. {suggestion(name)}"
                          "`lm-flipout recipes` lists them.")
    target = Path(dest)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise ConfigError(f"{target} already exists; it was left as it is. Name another "
                          "destination, or move that file away first.")
    text = copy_text(source)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"Cannot write {target}: {error.strerror}. Name a destination in a "
                          "folder that exists and that you may write to.") from None
    return target


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser(prog).parse_args(list(argv))
    try:
        if args.action == "list":
            if args.name is not None:
                raise ConfigError(f"`{prog} list` takes no name; to copy {args.name!r}, run "
                                  f"`{prog} copy {args.name}`.")
            terminal = sys.stdout.isatty()  # whole lines for a pipe (grep)
            list_recipes(shutil.get_terminal_size().columns if terminal else None)
            return 0
        if args.name is None:
            raise ConfigError(f"`{prog} copy` needs the name of a recipe, e.g. `{prog} copy "
                              "quickstart`; `lm-flipout recipes` lists the names.")
        target = copy_recipe(args.name, args.dest)
    except UserError as error:
        return fail(error)
    print(f"Wrote {target}; train it with: lm-flipout train {target}")
    return 0
