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


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory):
    """``get(tokenizer)``: the run directory of a tiny run trained for one epoch with that
    tokenizer (word, char or sentencepiece), trained once per test session."""
    from helpers import train_tiny_run

    runs: dict[str, Path] = {}
    data = {"word": {"tokenizer": "word"}, "char": {},
            "sentencepiece": {"tokenizer": "sentencepiece", "sp_model_type": "bpe",
                              "sp_vocab_size": 30, "sp_byte_fallback": False}}

    def get(tokenizer: str) -> Path:
        if tokenizer not in runs:
            root = tmp_path_factory.mktemp(f"tiny-{tokenizer}")
            runs[tokenizer] = train_tiny_run(root, train={"epochs": 1}, data=data[tokenizer])
        return runs[tokenizer]

    return get
