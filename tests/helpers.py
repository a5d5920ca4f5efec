"""Helpers for the tests: a tiny hand-made text corpus, tiny recipes, and running train.py /
evaluate.py as a user would (a subprocess in the repository)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]

# A small language with structure to learn: after a word comes one of two fixed successors.
WORDS = "the cat sat on a mat and dog ran to big red box".split()


def corpus_lines(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        word = rng.choice(WORDS)
        line = [word]
        for _ in range(rng.randint(4, 7)):
            word = WORDS[(WORDS.index(word) + rng.choice((1, 2))) % len(WORDS)]
            line.append(word)
        lines.append(" ".join(line))
    return lines


def write_corpus(directory: Path, train_lines: int = 40, eval_lines: int = 10) -> Path:
    """train.txt, valid.txt and test.txt of the tiny language in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate((("train", train_lines), ("valid", eval_lines),
                                   ("test", eval_lines))):
        (directory / f"{name}.txt").write_text("\n".join(corpus_lines(n, seed=i)) + "\n")
    return directory


def tiny_recipe(root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A character-level recipe small enough to train in a second or two: flipout weight
    noise, locked dropout and variable BPTT, so resuming has RNG and data positions to
    restore. ``sections`` update the sections (``train={"epochs": 2}``)."""
    recipe: dict[str, Any] = {
        "model": {
            "embedding_size": 16, "hidden_size": 16, "num_layers": 1, "tie_weights": True,
            "dropout_input": 0.1, "dropout_output": 0.1,
            "noise": {"family": "gaussian", "estimator": "flipout", "sigma": 0.2},
        },
        "data": {
            "source": "files", "path": str(root / "corpus"), "tokenizer": "char",
            "batch_size": 4, "eval_batch_size": 2, "bptt": 8, "variable_bptt": True,
            "cache_dir": str(root / "cache"),
        },
        "optim": {"name": "adam", "lr": 0.01, "clip": 1.0},
        "train": {"epochs": 3, "seed": 7, "out_dir": str(root / "runs"), "run_name": "run",
                  "log_every": 5, "checkpoint_every_s": 0, "threads": 1},
        "wandb": {"mode": "disabled"},
    }
    for section, values in sections.items():
        recipe[section].update(values)
    if not (root / "corpus").exists():
        write_corpus(root / "corpus")
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def script_env(root: Path) -> dict[str, str]:
    """Environment for train.py / evaluate.py subprocesses: one thread (tiny models run much
    faster without thread contention), W&B silent and kept inside ``root``."""
    env = dict(os.environ)
    env.pop("WANDB_MODE", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               **quiet_wandb_env(root))
    return env


def quiet_wandb_env(root: Path) -> dict[str, str]:
    """W&B variables that silence it and keep its files under ``root``."""
    env = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        env[name] = str(root / "wandb_home")
    return env


def start_script(script: str, args: list[str], root: Path) -> subprocess.Popen:
    """The script as a child that the tests signal. Its SIGINT and SIGTERM start at their
    defaults: a shell's background job inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt."""
    def default_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=REPO,
                            env=script_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)


def run_script(script: str, args: list[str], root: Path,
               timeout: Optional[float] = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO,
                          env=script_env(root), capture_output=True, text=True, timeout=timeout)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes, to show that nothing changed."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` with ``options`` (e.g. "size=16k" or "ro") for the block;
    skips the test where mounting is not possible (not root, or no permission)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def local_ptb() -> Optional[Path]:
    """Our copy of Penn Treebank: ``$LM_FLIPOUT_DATA/ptb`` (``.ci/run`` sets the variable when
    ``../shared/data`` is beside the checkout), or None when it is not there."""
    root = os.environ.get("LM_FLIPOUT_DATA")
    folder = Path(root) / "ptb" if root else None
    return folder if folder is not None and (folder / "train.txt").is_file() else None


def train_tiny_run(root: Path, **sections: dict[str, Any]) -> Path:
    """Train `tiny_recipe` (updated by ``sections``) in-process on one thread, as the
    subprocesses run; returns the run directory ``root/runs/run``."""
    import torch

    from lm_flipout.config import Recipe, from_dict
    from lm_flipout.training import Trainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = from_dict(Recipe, tiny_recipe(root, **sections), "test recipe")
        Trainer(recipe, root / "runs" / "run", echo=lambda _: None).run()
    finally:
        torch.set_num_threads(before)
    return root / "runs" / "run"


def flip_tensor_byte(checkpoint: Path) -> None:
    """Flip one bit in the middle of the largest tensor's bytes of a torch zip checkpoint, as
    a failing disk or a bad copy would; the file still loads with torch.load."""
    import struct
    import zipfile

    with zipfile.ZipFile(checkpoint) as archive:
        entry = max((info for info in archive.infolist() if "/data/" in info.filename),
                    key=lambda info: info.file_size)
    with open(checkpoint, "r+b") as handle:
        handle.seek(entry.header_offset + 26)  # the local header's name and extra lengths
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        where = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        handle.seek(where)
        byte = handle.read(1)[0]
        handle.seek(where)
        handle.write(bytes([byte ^ 0x04]))
