"""Plain (YAML) data <-> dataclass trees, with typed conversion.

`from_dict` builds any dataclass from plain data and refuses unknown keys and wrong types
with a message that names the source, the dotted key and the allowed values: a typo is an
error, never silently ignored. After building a dataclass it runs the instance's
``validate()``, if it has one; a ValueError or UserError from it becomes a ConfigError that
names the source and the section.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal, Optional, TypeVar

from ..errors import ConfigError, UserError
from .messages import (
    is_dict,
    is_list,
    is_union,
    join_key,
    section_name,
    show_value,
    suggest,
    type_error,
    unknown_key_message,
)

T = TypeVar("T")


def from_dict(cls: type[T], data: Optional[Mapping[str, Any]], where: str) -> T:
    """Build dataclass ``cls`` from plain (YAML) data; missing keys and sections take defaults.

    ``where`` names the source (a file, or "command-line overrides") in error messages.
    """
    return _build(cls, data, where, "")


def to_dict(instance: Any) -> dict[str, Any]:
    """The plain-data form of a dataclass tree (dicts, lists, scalars), for YAML and W&B."""
    if not dataclasses.is_dataclass(instance) or isinstance(instance, type):
        raise TypeError(f"to_dict: expected a dataclass instance, got {type(instance).__name__}.")
    return plain_data(instance)


def plain_data(value: Any) -> Any:
    """``value`` with every dataclass turned into a dict, every tuple into a list."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    return value


def _build(cls: type[T], data: Any, where: str, section: str) -> T:
    if data is None:  # an empty YAML section (`model:`) means "all defaults"
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: {section_name(section)} must be a mapping of keys to values, but it is "
            f"{show_value(data)}. Write it as indented `key: value` lines."
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(unknown_key_message(where, section, key, list(fields)))
    kwargs = {
        key: convert_value(hints[key], value, where, join_key(section, key))
        for key, value in data.items()
    }
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in kwargs and no_default:
            raise ConfigError(
                f"{where}: required key '{join_key(section, name)}' is missing. Add it."
            )
    try:
        instance = cls(**kwargs)
        validate = getattr(instance, "validate", None)
        if callable(validate):
            validate()
    except (ValueError, UserError) as err:
        context = f" in section '{section}'" if section else ""
        raise ConfigError(f"{where}: invalid setting{context}: {err}") from None
    return instance


def convert_value(tp: Any, value: Any, where: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type; ``key`` is
    its dotted key for error messages."""
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if is_union(tp):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        for option in options:
            try:
                return convert_value(option, value, where, key)
            except ConfigError:
                if len(options) == 1 and option not in (bool, int, float, str):
                    raise  # keep the inner message, which names the inner key
        raise type_error(where, key, tp, value)
    if typing.get_origin(tp) is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return value
        raise ConfigError(
            f"{where}: '{key}' must be one of {', '.join(map(repr, args))}, but it is "
            f"{show_value(value)}.{suggest(value, [str(a) for a in args])}"
        )
    if is_list(tp):
        if not isinstance(value, (list, tuple)):
            raise type_error(where, key, tp, value)
        item_type = args[0] if args else Any
        return [convert_value(item_type, item, where, f"{key}[{i}]")
                for i, item in enumerate(value)]
    if is_dict(tp):
        return _convert_mapping(tp, value, where, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, key)
    return _convert_scalar(tp, value, where, key)


def _convert_mapping(tp: Any, value: Any, where: str, key: str) -> dict:
    if not isinstance(value, Mapping):
        raise type_error(where, key, tp, value)
    key_type, value_type = typing.get_args(tp) or (Any, Any)
    out = {}
    for k, v in value.items():
        if key_type is str and not isinstance(k, str):
            raise ConfigError(
                f"{where}: '{key}' has the key {k!r}, but its keys must be strings. "
                "Quote it in YAML."
            )
        out[k] = convert_value(value_type, v, where, f"{key}.{k}")
    return out


def _convert_scalar(tp: Any, value: Any, where: str, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads `1e-3` (no dot) as a string; accept any float literal here.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"from_dict: field '{key}' has an unsupported type {tp!r}.")
    raise type_error(where, key, tp, value)
