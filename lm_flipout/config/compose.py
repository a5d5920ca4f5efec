"""Recipe files that build on other recipes, and loading a recipe with its overrides.

A recipe may name another recipe as its base and set only what differs::

    # recipes/ptb/word_cpu_wd_flipout.yaml
    base: word_cpu_wd.yaml          # relative to this file's folder
    model:
      noise:
        estimator: flipout

Bases may chain (a base names its own base). The recipe's data is its base's data with its
own merged on top: a section (``model``, ``model.noise``, ``data``, ...) merges key by key,
so the recipe above keeps its base's ``model.noise.p``; any other value (a number, a string,
a list such as ``wandb.tags``, a dict-valued setting such as ``data.hf_data_files``) replaces
the base's. The resolved data holds no ``base`` key: it is what the schema checks, what
``--print-config`` prints and what a run's config.yaml records, so a run never needs its base
files again. Every file of the chain is read with `read_yaml`'s checks. A missing base, or a
chain that comes back to a file it already read, is a ConfigError naming the chain.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError
from .convert import from_dict
from .messages import is_union, show_value
from .overrides import apply_overrides, parse_overrides
from .schema import Recipe, is_folder_name
from .yaml_io import read_yaml

BASE_KEY = "base"


def read_recipe_data(path: Union[str, Path]) -> tuple[dict[str, Any], list[Path]]:
    """The plain data of the recipe file at ``path`` with its bases merged in (no ``base``
    key), and the chain of files read: the recipe first, then its base, its base's base..."""
    chain: list[Path] = []
    layers: list[dict[str, Any]] = []
    path: Optional[Path] = Path(path)
    while path is not None:
        if any(path.resolve() == seen.resolve() for seen in chain):
            raise ConfigError(
                f"Recipe file {chain[0]} builds on itself: {_show_chain([*chain, path])}. A "
                "base cannot name a recipe that builds on it; point one of these base: keys "
                "at a recipe outside the loop, or remove it."
            )
        chain.append(path)
        data = _read_one(path, chain)
        base = data.pop(BASE_KEY, None)
        layers.append(data)
        path = None if base is None else _base_path(base, chain)
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged = merge_recipe_data(merged, layer)
    return merged, chain


def merge_recipe_data(base: Mapping[str, Any], update: Mapping[str, Any],
                      schema: Any = Recipe) -> dict[str, Any]:
    """``update`` merged onto ``base`` (plain recipe data of the section ``schema``): sections
    merge key by key, every other value replaces the base's."""
    merged = dict(base)
    hints = typing.get_type_hints(schema) if dataclasses.is_dataclass(schema) else {}
    for key, value in update.items():
        section = _section_type(hints.get(key))
        if section is not None and value is None:
            continue  # an empty section (`noise:`) changes nothing
        if section is not None and isinstance(value, Mapping) and isinstance(merged.get(key),
                                                                              Mapping):
            merged[key] = merge_recipe_data(merged[key], value, section)
        else:
            merged[key] = value
    return merged


def load_recipe(path: Union[str, Path], overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe file with its bases, apply ``key=value`` overrides, check everything.

    ``train.run_name`` left null becomes the file's stem, so the result is fully resolved.
    """
    path = Path(path)
    data, chain = read_recipe_data(path)
    where = str(path) if len(chain) == 1 else f"{path} (built on {_show_chain(chain[1:])})"
    parsed = parse_overrides(overrides)
    if parsed:
        data = apply_overrides(data, parsed)
        where = f"{where} with command-line overrides"
    recipe = from_dict(Recipe, data, where)
    if recipe.train.run_name is None:
        if not is_folder_name(path.stem):
            raise ConfigError(
                f"The recipe file name {path.name!r} gives the run name {path.stem!r}, which "
                "cannot be a folder inside train.out_dir. Rename the file, or set "
                "train.run_name=NAME."
            )
        recipe.train.run_name = path.stem
    return recipe


def recipe_with_run_name(path: Union[str, Path], overrides: Iterable[str]) -> tuple[Recipe, Path]:
    """Load a recipe (see `load_recipe`) and return it with its run directory,
    ``<train.out_dir>/<train.run_name>``."""
    recipe = load_recipe(path, overrides)
    return recipe, Path(recipe.train.out_dir) / str(recipe.train.run_name)


def _read_one(path: Path, chain: list[Path]) -> dict[str, Any]:
    """One file of the chain as a mapping (an empty file is an empty recipe)."""
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        role = "" if len(chain) == 1 else f" (the base of {_show_chain(chain[:-1])})"
        raise ConfigError(
            f"Recipe file {path}{role} must hold a mapping of sections (base:, model:, data:, "
            f"optim:, train:, wandb:) at the top level, but it holds {show_value(data)}."
        )
    return data


def _base_path(base: Any, chain: list[Path]) -> Path:
    """Where the ``base:`` of the last file of ``chain`` points, checked to exist."""
    named_by = chain[-1]
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(
            f"Recipe file {named_by}: base must be the path of another recipe file, relative "
            f"to {named_by.parent}, e.g. base: word_cpu.yaml, but it is {show_value(base)}."
        )
    path = Path(os.path.normpath(named_by.parent / base))
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"Recipe file {named_by} names base: {base}, but {path} {what} (the chain: "
            f"{_show_chain([*chain, path])}). A base is relative to the folder of the file "
            "that names it; fix the path or remove the base: key."
        )
    return path


def _show_chain(chain: list[Path]) -> str:
    """``a.yaml -> b.yaml -> ...`` with the first path in full, the rest as their base: would
    name them where they share its folder."""
    first = chain[0]
    rest = [p.name if p.parent == first.parent else str(p) for p in chain[1:]]
    return " -> ".join([str(first), *rest])


def _section_type(tp: Any) -> Optional[type]:
    """The section class an annotation stands for (``Optional[X]`` for a section X), or
    None for a setting."""
    if is_union(tp):
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        tp = options[0] if len(options) == 1 else None
    return tp if dataclasses.is_dataclass(tp) else None
