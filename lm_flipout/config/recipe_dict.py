"""A recipe as plain data: for checkpoints and the W&B config, back again with every check,
and the settings in which two such dicts differ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import UserError
from .convert import from_dict, to_dict
from .schema import Recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (for checkpoints and the W&B config)."""
    return to_dict(recipe)


def recipe_from_dict(data: Mapping[str, Any], where: str) -> Recipe:
    """Rebuild and check a recipe from `recipe_to_dict` data, e.g. a checkpoint's config;
    ``where`` names the source in error messages."""
    return from_dict(Recipe, data, where)


def with_defaults(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored recipe dict with every key of today's schema: a key added since the run was
    written takes its default (the value the run effectively had unless it says otherwise).
    A dict the schema no longer reads is returned as it is."""
    try:
        return recipe_to_dict(recipe_from_dict(stored, where="the stored recipe"))
    except UserError:
        return dict(stored)


def changed_settings(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """The dotted keys whose values differ between two recipe dicts, sorted, each with its
    (old, new) value (None where a side lacks the key)."""
    before, after = _flatten(old), _flatten(new)
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A recipe dict as {dotted key: value} (``data.hf_data_files`` stays one value)."""
    if isinstance(data, dict) and not (prefix and prefix.endswith("hf_data_files")):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}
