"""Recipe files: reading YAML (a key written twice is an error), loading a recipe with its
overrides, and writing one back."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

import yaml

from ..atomic import atomic_write
from ..errors import ConfigError, first_line
from .convert import from_dict, to_dict
from .messages import show_value
from .overrides import apply_overrides, parse_overrides
from .schema import Recipe


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML keeps the last)."""


def _construct_unique_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (the later value would silently win)",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def read_yaml(path: Union[str, Path]) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a ConfigError with the line."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"Recipe file {path} {what}. Check the path, e.g. recipes/ptb/<name>.yaml."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"Recipe file {path} is not UTF-8 text. Save it as UTF-8 YAML.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or first_line(err)
        if problem.startswith("duplicate key"):
            fix = "Keep only one of the two entries."
        else:
            fix = (
                "Fix the syntax there; wrong indentation, a missing ':' or an unclosed bracket "
                "or quote are the usual causes."
            )
        raise ConfigError(f"Recipe file {path} has a YAML error{at}: {problem}. {fix}") from None


def load_recipe(path: Union[str, Path], overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe file, apply ``key=value`` overrides, check everything.

    ``train.run_name`` left null becomes the file's stem, so the result is fully resolved.
    """
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Recipe file {path} must hold a mapping of sections (model:, data:, optim:, "
            f"train:, wandb:) at the top level, but it holds {show_value(data)}."
        )
    parsed = parse_overrides(overrides)
    where = str(path)
    if parsed:
        data = apply_overrides(data, parsed)
        where = f"{path} with command-line overrides"
    recipe = from_dict(Recipe, data, where)
    if recipe.train.run_name is None:
        recipe.train.run_name = path.stem
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text, sections and keys in schema order; reloads to an equal recipe."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)


def save_recipe(recipe: Recipe, path: Union[str, Path]) -> None:
    """Write the recipe as YAML atomically (a crash leaves the old file or the new one)."""
    with atomic_write(path) as handle:
        handle.write(recipe_to_yaml(recipe).encode("utf-8"))
