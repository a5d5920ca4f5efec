"""The range check that recipe sections share: a number outside its interval is a
ConfigError that names the dotted key, the value and the allowed range."""

from __future__ import annotations

import math
from typing import Optional

from .errors import ConfigError


def check_range(
    key: str,
    value: float,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
    hint: str = "",
) -> None:
    """Raise ConfigError unless ``value`` is finite and in the interval (default [low, high))."""
    inside = math.isfinite(value)
    if low is not None:
        inside = inside and (value > low if low_open else value >= low)
    if high is not None:
        inside = inside and (value < high if high_open else value <= high)
    if inside:
        return
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        want = f"{'<' if high_open else '<='} {high}"
    else:
        want = "a finite number"
    raise ConfigError(f"{key}={value!r} is out of range: it must be {want}. {hint}".rstrip())
