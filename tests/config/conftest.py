"""Fixtures of the recipe tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """A function that writes YAML text to a file in ``tmp_path`` and returns its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
