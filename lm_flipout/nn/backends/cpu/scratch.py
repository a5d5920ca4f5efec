"""Scratch buffers reused from call to call on CPU: touching fresh pages of the large
per-call buffers costs as much as the work on them (docs/benchmarks.md)."""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_SCRATCH = threading.local()


def scratch(name: str, like: Tensor) -> Tensor:
    """An uninitialized tensor shaped like ``like``. On CPU it is a view of a buffer that this
    thread keeps under ``name`` for the next call (grown when too small); elsewhere it is
    fresh, since CUDA's caching allocator already reuses memory, and so it is under
    ``torch.inference_mode`` (a buffer made there could not be written outside it). Only for
    tensors that do not outlive the call that asks for them."""
    if like.device.type != "cpu" or torch.is_inference_mode_enabled():
        return torch.empty_like(like)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.numel() < like.numel() or buffer.dtype != like.dtype:
        buffer = buffers[name] = like.new_empty(like.numel())
    return buffer[: like.numel()].view(like.shape)
