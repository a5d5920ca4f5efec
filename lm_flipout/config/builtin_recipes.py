"""The built-in recipes: the repository's `recipes/` folder, which ships inside the installed
package as `lm_flipout/recipes/` (setup.py maps it there), found by name as torchtune's
`tune ls` / `tune cp` find theirs. Run from a clone, the clone's `recipes/` folder is used.

A recipe's name is its path under that folder without `.yaml`, e.g. `quickstart` or
`ptb/word_cpu_wd_flipout`; suites and W&B sweep files are not training recipes and are not
listed."""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .compose import load_recipe
from .yaml_io import read_yaml, recipe_to_yaml

NOT_RECIPES = ("suites", "sweeps")  # folders of files that are not training recipes
SENTENCE_END = re.compile(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z])")  # not "et al. Table"


def recipes_root() -> Path:
    """The folder of the built-in recipes: the installed package's, else the clone's."""
    packaged = resources.files("lm_flipout") / "recipes"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    clone = Path(__file__).resolve().parents[2] / "recipes"
    if clone.is_dir():
        return clone
    raise ConfigError(
        f"The built-in recipes are missing: neither {packaged} nor {clone} is a folder. "
        "Reinstall the package (pip install --force-reinstall lm-flipout), or name a recipe "
        "file instead.")


def builtin_recipes() -> dict[str, Path]:
    """Every built-in training recipe by name, in name order."""
    root = recipes_root()
    found = {}
    for path in root.rglob("*.yaml"):
        relative = path.relative_to(root)
        if relative.parts[0] not in NOT_RECIPES:
            found[relative.with_suffix("").as_posix()] = path
    return dict(sorted(found.items()))


def find_builtin(name: str) -> Optional[Path]:
    """The built-in recipe `name` names, or None: its full name, with or without `.yaml` and
    the `recipes/` in front (as a clone's paths have them), or a bare file name that only
    one built-in recipe has. A path elsewhere (`/...`, `my/quickstart.yaml`) names none."""
    recipes = builtin_recipes()
    key = name.removesuffix(".yaml").removeprefix("recipes/")
    if key in recipes:
        return recipes[key]
    if "/" in key:
        return None
    by_stem = [path for full, path in recipes.items() if full.rsplit("/", 1)[-1] == key]
    return by_stem[0] if len(by_stem) == 1 else None


def recipe_file(argument: str) -> Path:
    """What a recipe argument on the command line names: a file, else a built-in recipe."""
    path = Path(argument)
    if path.is_file():
        return path
    builtin = find_builtin(argument)
    if builtin is not None:
        return builtin
    if path.exists():
        return path  # a folder: reading it says so
    raise ConfigError(f"Recipe {argument!r} is neither a file nor a built-in recipe. "
                      f"{suggestion(argument)}Check the path, or run `lm-flipout recipes` to "
                      "list the built-in recipes by name.")


def suggestion(name: str) -> str:
    """'Did you mean ...?' for the built-in names closest to `name`, or ''."""
    close = difflib.get_close_matches(name.removesuffix(".yaml"), builtin_recipes(), n=3)
    return f"Did you mean {' or '.join(repr(n) for n in close)}? " if close else ""


def description(path: Path) -> str:
    """A recipe's one-line description: the first sentence of its opening comment."""
    text = " ".join(line.lstrip("#").strip() for line in opening_comment(path.read_text("utf-8")))
    text = " ".join(text.split())
    end = SENTENCE_END.search(text)
    return text if end is None else text[:end.start() + 1]


def copy_text(path: Path) -> str:
    """The text of a standalone copy of the recipe file at `path`: the file itself, or, when
    it composes other recipes through `base:`, its opening comment and the resolved recipe
    (the relative paths of its bases would not hold beside the copy)."""
    text = path.read_text(encoding="utf-8")
    data = read_yaml(path)
    if not (isinstance(data, dict) and "base" in data):
        return text
    recipe = load_recipe(path)
    train = data.get("train")
    if not (isinstance(train, dict) and "run_name" in train):
        recipe.train.run_name = None  # the copy's file name names its runs
    comment = opening_comment(text)
    comment.append(f"# (built-in recipe {path.stem} with its base recipes resolved)")
    return "\n".join(comment) + "\n" + recipe_to_yaml(recipe)


def opening_comment(text: str) -> list[str]:
    """The comment lines a recipe file opens with."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines
