"""The process's surroundings: which device it computes on, how its generators are seeded,
and which commit of the code it runs."""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import ConfigError, TrainingError
from .distributed import DistContext

DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def select_device(name: str, dist: Optional[DistContext] = None) -> torch.device:
    """The device ``name`` (``train.device`` or evaluate.py's ``--device``) stands for.

    ``auto`` picks CUDA when present. A single process may name any device (TrainingError
    when it is unusable); among torchrun's data-parallel processes (``dist``) each one uses
    the GPU of its LOCAL_RANK or the CPU (ConfigError for anything else).
    """
    if not DEVICE_NAME.fullmatch(name):
        raise TrainingError(f"Device {name!r} is not a device. Use auto (CUDA when available), "
                            "cpu, cuda, cuda:N (e.g. cuda:1) or mps.")
    if dist is not None and dist.enabled:
        return _data_parallel_device(name, dist)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(
                f"train.device={name!r} asks for a GPU but PyTorch sees none. Use "
                "train.device=auto or train.device=cpu."
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise TrainingError(
                f"train.device={name!r} names GPU {index}, but PyTorch sees "
                f"{torch.cuda.device_count()} (cuda:0 to cuda:{torch.cuda.device_count() - 1}). "
                "Pick one of those or use train.device=auto."
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("train.device='mps' asks for Apple's GPU, but PyTorch cannot use it "
                            "here. Use train.device=auto or train.device=cpu.")
    return torch.device(name)


def _data_parallel_device(name: str, dist: DistContext) -> torch.device:
    """cuda:LOCAL_RANK on GPUs (``auto`` or ``cuda``), else the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name == "mps":
        raise ConfigError("train.device=mps cannot be used for data-parallel training: PyTorch "
                          "distributed has no backend for Apple's GPU. Use train.device=cpu, or "
                          "run a single process.")
    if name.startswith("cuda:"):
        raise ConfigError(
            f"train.device={name!r} names one GPU, but under torchrun every process uses the GPU "
            "of its LOCAL_RANK (process k on a machine uses cuda:k). Use train.device=cuda or "
            "auto, and choose the GPUs with CUDA_VISIBLE_DEVICES."
        )
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} asks for GPUs but PyTorch sees none. Use "
                          "train.device=auto or train.device=cpu.")
    if dist.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"This machine runs {dist.local_world_size} processes but PyTorch sees "
            f"{torch.cuda.device_count()} GPUs, so process {dist.local_rank} has none. Start at "
            f"most {torch.cuda.device_count()} processes per machine (--nproc_per_node)."
        )
    return torch.device("cuda", dist.local_rank)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator; ``deterministic`` also makes PyTorch use deterministic kernels
    (and fail on an operation that has none), at some cost in speed on GPUs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.backends.cudnn.benchmark = False


def git_revision() -> str:
    """The checkout's commit (with ``-dirty`` for local changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
