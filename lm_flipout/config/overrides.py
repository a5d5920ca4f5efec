"""Command-line ``key=value`` overrides: parsed as YAML values, checked against the schema,
and set into a recipe's plain data before the recipe is built."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from ..errors import ConfigError, first_line
from .convert import convert_value, plain_data
from .messages import describe_type, is_union, join_key, show_value, unknown_key_message
from .schema import Recipe


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` items into ``{dotted_key: value}``; values are read as YAML, so
    ``optim.lr=20`` is a number, ``wandb.tags=[a,b]`` a list and ``x=null`` None."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[^.\s=]+(\.[^.\s=]+)*", key):
            raise ConfigError(
                f"Override {item!r} is not of the form key=value with a dotted key, e.g. "
                "model.hidden_size=650 or optim.lr=20 (no spaces around '=')."
            )
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"Override {item!r}: the value {text!r} is not valid YAML "
                f"({first_line(err)}). Fix the brackets, or quote a text value: {key}='\"...\"'."
            ) from None
    return overrides


def apply_overrides(
    data: Mapping[str, Any], overrides: Mapping[str, Any], schema: type = Recipe,
    source: str = "command-line override",
) -> dict[str, Any]:
    """Return a copy of the recipe data with each dotted override set.

    Keys are checked against ``schema`` here, so an unknown key or a wrong-typed value is
    reported as coming from ``source`` (by default the command line; range checks run when the
    recipe is built).
    A dotted key sets one entry; a mapping value merges into a section (``model.noise={p: 0.5}``)
    and replaces a dict-valued setting.
    """
    result = _deep_copy(data)
    for dotted, value in overrides.items():
        where = f"{source} '{dotted}'"
        parts = dotted.split(".")
        defaults, tp, section = [], schema, ""
        for part in parts:  # check the whole key against the schema before touching data
            tp, default = _child_type(tp, part, section, where)
            defaults.append(default)
            section = join_key(section, part)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:  # absent in the file: start from the schema default
                default = plain_data(defaults[depth])
                child = node[part] = default if isinstance(default, dict) else {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"{where}: '{'.'.join(parts[:depth + 1])}' is {show_value(child)} in the "
                    "recipe, not a section, so it has no keys to set. Fix the recipe file."
                )
            node = child
        last = parts[-1]
        is_section = dataclasses.is_dataclass(_strip_optional(tp))
        if not is_section:
            convert_value(tp, value, where, dotted)
        if is_section and isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last] = _merge(node[last], value)
        else:
            node[last] = _deep_copy(value)
    return result


def _child_type(tp: Any, part: str, section: str, where: str) -> tuple[Any, Any]:
    """The annotation and default of key ``part`` inside a value of type ``tp``."""
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        if part not in fields:
            raise ConfigError(unknown_key_message(where, section, part, list(fields)))
        f = fields[part]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        return typing.get_type_hints(tp)[part], default
    if typing.get_origin(tp) is dict:
        args = typing.get_args(tp)
        return (args[1] if args else Any), None
    raise ConfigError(
        f"{where}: '{section}' is {describe_type(tp)}, not a section, so it has no key '{part}'. "
        f"Set '{section}' itself instead."
    )


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if is_union(tp) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _deep_copy(value)
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def setting_type(dotted: str, where: str, schema: type = Recipe) -> Any:
    """The type annotation of the recipe setting ``dotted`` (Optional stripped); an unknown
    key is a ConfigError naming ``where`` and the allowed keys."""
    tp, section = schema, ""
    for part in dotted.split("."):
        tp, _ = _child_type(tp, part, section, where)
        section = join_key(section, part)
    return _strip_optional(tp)
