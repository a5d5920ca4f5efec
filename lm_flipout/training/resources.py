"""Will the model fit? Parameter, gradient and optimizer memory estimated from the recipe
before the model is built, against the memory the device has free.

The count comes from the model built on PyTorch's ``meta`` device (shapes only, no storage),
so it is exact for every architecture. Activations are not counted: the estimate is a lower
bound, and a recipe refused here could never have trained."""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..config import Recipe
from ..errors import ConfigError
from ..model import LanguageModel

GIB = 1024 ** 3


def optimizer_copies(recipe: Recipe) -> int:
    """Tensors the optimizer keeps per parameter: Adam's two moments (AMSGrad's three),
    SGD's momentum buffer, NT-ASGD's average."""
    optim = recipe.optim
    if optim.name in ("adam", "amsgrad"):
        return 2 if optim.name == "adam" else 3
    return (1 if optim.momentum > 0 else 0) + (1 if optim.name == "nt_asgd" else 0)


def parameter_bytes(recipe: Recipe) -> int:
    """Bytes of the model's parameters, counted without allocating them."""
    with torch.device("meta"):
        model = LanguageModel(recipe.model)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory of ``device`` (CUDA: free on the card; CPU: the system's available RAM),
    or None where it cannot be told (MPS, or an OS without these counters)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(recipe: Recipe, device: torch.device) -> None:
    """Raise ConfigError naming the size keys when the weights, their gradients and the
    optimizer state cannot fit in ``device``'s free memory (the CPU holds the weights once
    too, as the model is built there)."""
    weights = parameter_bytes(recipe)
    needs = {device: weights * (2 + optimizer_copies(recipe))}
    if device.type != "cpu":
        needs[torch.device("cpu")] = weights
    for where, need in needs.items():
        free = available_bytes(where)
        if free is not None and need > free:
            raise ConfigError(_too_large(recipe, where, need, free))


def _too_large(recipe: Recipe, device: torch.device, need: int, free: int) -> str:
    model = recipe.model
    return (
        f"The model does not fit in the memory of {device}: its weights, gradients and "
        f"{recipe.optim.name} state alone need {need / GIB:.1f} GiB, but {free / GIB:.1f} GiB "
        f"is free. Its size comes from model.hidden_size={model.hidden_size}, "
        f"model.embedding_size={model.embedding_size}, model.num_layers={model.num_layers} and "
        f"the vocabulary of {model.vocab_size} tokens (data.vocab_size or "
        "data.sp_vocab_size); make them smaller, or train on a device with more memory "
        "(train.device)."
    )
