"""The package as pip installs it: a wheel built from the repository holds the built-in
recipes and names wandb and datasets as dependencies; installed on its own (the clone off the
path) it lists the recipes and trains one by name from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, quiet_wandb_env

BUILD_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "lm_flipout", "recipes")


def build_wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of the repository's build files (a build in the repository
    itself would leave build/ there, whose stale files could enter a later wheel)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(REPO / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "wheels"), str(source)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "wheels").glob("lm_flipout-*.whl")
    return wheel


def test_a_wheel_lists_and_trains_a_builtin_recipe_from_an_empty_folder(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")  # the build backend, used without network
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    shipped = {n for n in names if n.startswith("lm_flipout/recipes/")}
    assert {"lm_flipout/recipes/quickstart.yaml",
            "lm_flipout/recipes/ptb/word_cpu_wd_flipout.yaml"} <= shipped
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert any(r.startswith("wandb") for r in requires), requires
    assert any(r.startswith("datasets") for r in requires), requires

    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--disable-pip-version-check", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, **quiet_wandb_env(tmp_path), "PYTHONPATH": str(site),
           "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1",
           "LM_FLIPOUT_CACHE": str(tmp_path / "cache")}
    env.pop("WANDB_MODE", None)
    command = [str(site / "bin" / "lm-flipout")]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import lm_flipout; print(lm_flipout.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(site)  # not the clone

    listed = run("recipes")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.startswith("quickstart ") and "synthetic corpus" in line for line in lines)
    assert any(line.startswith("ptb/word_cpu_wd_flipout ") for line in lines)
    assert not any(line.startswith(("suites/", "sweeps/")) for line in lines)

    trained = run("train", "quickstart", "train.max_steps=2", "model.hidden_size=8",
                  "model.embedding_size=8", "data.test_batch_size=16", "wandb.mode=offline")
    assert trained.returncode == 0, trained.stderr
    results = empty / "checkpoints" / "quickstart" / "results.json"
    assert results.is_file()
    last = trained.stdout.strip().splitlines()[-1]
    assert last.startswith("done | valid ppl ") and "optimal test ppl" in last
    assert last.endswith(str(Path("checkpoints") / "quickstart" / "results.json"))
    assert "wandb:" not in trained.stdout + trained.stderr  # W&B's own messages are silenced
    assert not (empty / ".cache").exists() and (tmp_path / "cache" / "tokens").is_dir()

    copied = run("recipes", "copy", "quickstart")
    assert copied.returncode == 0, copied.stderr
    assert (empty / "quickstart.yaml").read_text() == (REPO / "recipes/quickstart.yaml").read_text()
