"""The wording of recipe errors: dotted keys, types in words, values shown with their type,
and a "Did you mean ...?" for a near miss; plus the tests on type annotations that the
wording and the converter share."""

from __future__ import annotations

import dataclasses
import difflib
import reprlib
import types
import typing
from typing import Any, Literal, Union

from ..errors import ConfigError


def is_union(tp: Any) -> bool:
    """True for ``Optional[X]``, ``Union[X, Y]`` and ``X | Y``."""
    return typing.get_origin(tp) in (Union, getattr(types, "UnionType", Union))


def is_list(tp: Any) -> bool:
    """True for ``list`` and ``list[X]``."""
    return typing.get_origin(tp) in (list, typing.List) or tp is list


def is_dict(tp: Any) -> bool:
    """True for ``dict`` and ``dict[K, V]``."""
    return typing.get_origin(tp) in (dict, typing.Dict) or tp is dict


def join_key(section: str, key: str) -> str:
    """The dotted key of ``key`` inside ``section`` ("" is the top level)."""
    return f"{section}.{key}" if section else key


def section_name(section: str) -> str:
    """How a message names ``section``: "section 'model.noise'", or "the recipe" at the top."""
    return f"section '{section}'" if section else "the recipe"


_SHORT = reprlib.Repr()  # a few items per level and a few levels: never the whole value
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 80, 80


def show_value(value: Any, limit: int = 80) -> str:
    """A value as the user wrote it, at most ``limit`` characters, with its YAML-read type;
    only as much of a large value is looked at as is shown."""
    text = _SHORT.repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


def describe_type(tp: Any) -> str:
    """A type annotation in words, for error messages."""
    args = typing.get_args(tp)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in simple:
        return simple[tp]
    if is_union(tp):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in args)
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, args))
    if is_list(tp):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if is_dict(tp):
        return f"a mapping from strings to {_plural(args[1])}" if args else "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys to values"
    return repr(tp)


def _plural(tp: Any) -> str:
    words = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return words.get(tp, f"({describe_type(tp)})")


def type_error(where: str, key: str, tp: Any, value: Any) -> ConfigError:
    """The error for ``value`` at ``key`` not being of type ``tp``, with how to write one."""
    hint = {
        bool: " Use true or false.",
        str: ' Quote the value in YAML, e.g. key: "123".',
        int: " Write a whole number without a decimal point.",
        float: " Write a number, e.g. 20 or 1e-3.",
    }.get(tp, "")
    return ConfigError(
        f"{where}: '{key}' must be {describe_type(tp)}, but it is {show_value(value)}.{hint}"
    )


def unknown_key_message(where: str, section: str, key: Any, allowed: list[str]) -> str:
    """The message for a key that ``section`` does not have, listing the ones it does."""
    return (
        f"{where}: unknown key '{join_key(section, str(key))}'."
        f"{suggest(key, allowed, prefix=section)} Allowed keys in {section_name(section)}: "
        f"{', '.join(allowed)}. Fix the spelling or remove the key."
    )


def suggest(value: Any, choices: list[str], prefix: str = "") -> str:
    """" Did you mean 'x'?" for the choice closest to ``value``, or "" when none is close."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f" Did you mean '{join_key(prefix, close[0])}'?" if close else ""
