"""Imports run one way (nn -> model -> training -> experiments -> cli): nothing outside
lm_flipout/cli, the ``python -m`` spellings of its packages included, imports the command
line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "lm_flipout"


def module_names() -> list[str]:
    """Every module of lm_flipout below the command line, ``__main__`` modules of its
    subpackages included (``python -m lm_flipout`` itself is the command line)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[1] == "cli" or parts == ("lm_flipout", "__main__"):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_every_module_below_the_command_line_leaves_it_unimported() -> None:
    names = module_names()
    assert "lm_flipout.experiments.suite" in names and "lm_flipout.data.__main__" in names
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.startswith('lm_flipout.cli')))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_older_module_spellings_point_to_the_command() -> None:
    for module, command in (("experiments.compare", "compare"), ("experiments.bench", "bench"),
                            ("experiments.variance", "variance"), ("data", "data")):
        done = subprocess.run([sys.executable, "-m", f"lm_flipout.{module}", "--help"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert f"`lm-flipout {command}`" in done.stderr
        assert done.stdout == ""
