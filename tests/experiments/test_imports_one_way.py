"""Imports run one way (nn -> model -> training -> experiments -> cli): nothing under
lm_flipout/experiments, its ``python -m`` spellings included, imports the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "lm_flipout" / "experiments"


def module_names() -> list[str]:
    """Every module of lm_flipout.experiments, ``__main__`` modules included."""
    names = []
    for path in sorted(EXPERIMENTS.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_every_experiments_module_leaves_the_command_line_unimported() -> None:
    names = module_names()
    assert "lm_flipout.experiments.suite" in names and "lm_flipout.experiments.bench" in names
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.startswith('lm_flipout.cli')))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_older_module_spellings_point_to_the_command() -> None:
    for name, command in (("compare", "compare"), ("bench", "bench"),
                          ("variance", "variance")):
        done = subprocess.run([sys.executable, "-m", f"lm_flipout.experiments.{name}", "--help"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert f"`lm-flipout {command}`" in done.stderr
        assert done.stdout == ""
