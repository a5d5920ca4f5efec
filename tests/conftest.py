"""Test session set-up and the fixtures several test modules use."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from helpers import quiet_wandb_env

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # train.py and evaluate.py are imported by some tests
    sys.path.insert(0, str(REPO))

# The compiled LSTM step kernels are built into a folder of the test session's own (the
# subprocesses inherit it), not into the user's cache.
_KERNEL_CACHE = tempfile.TemporaryDirectory(prefix="lm_flipout-kernels-")
os.environ.setdefault("LM_FLIPOUT_CACHE", _KERNEL_CACHE.name)


@pytest.fixture
def one_thread():
    """Run in-process training on one thread (as the subprocesses do), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B importable, silent, in no mode forced by the environment, with its files under
    ``tmp_path``."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name, value in quiet_wandb_env(tmp_path).items():
        monkeypatch.setenv(name, value)
