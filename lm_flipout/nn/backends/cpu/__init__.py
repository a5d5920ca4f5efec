"""The CPU backend: float32 CPU tensors, with oneDNN's products (prepacked weights), scratch
buffers reused across calls and compiled step kernels (docs/benchmarks.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...cell import CellOptions, LayerInputs
from ..interface import Backend
from . import kernels
from .products import PREPACK_BACKWARD_MIN_STEPS
from .recurrence import CpuRecurrence


@dataclass(frozen=True)
class CpuBackend(Backend):
    """The recurrence of `CpuRecurrence`. ``onednn=False`` runs every product on
    ``torch.mm``; ``compiled_kernels=False`` runs the steps' elementwise work on PyTorch ops
    (the default follows ``LM_FLIPOUT_COMPILED_CELL``); backward prepacks its weights for
    windows of at least ``prepack_backward_min_steps`` steps. It does not implement the
    per-step masks of recurrent dropout and zoneout: a call with them runs on the reference
    under automatic choice."""

    onednn: bool = True
    compiled_kernels: bool = field(default_factory=kernels.enabled_by_environment)
    prepack_backward_min_steps: int = PREPACK_BACKWARD_MIN_STEPS
    name = "cpu"

    def supports(self, like: Tensor, options: CellOptions) -> bool:
        return (like.device.type == "cpu" and like.dtype == torch.float32
                and not options.per_step)

    def run(self, inputs: LayerInputs, options: CellOptions) -> tuple[Tensor, Tensor, Tensor]:
        return CpuRecurrence.apply(self.onednn, self.compiled_kernels,
                                   self.prepack_backward_min_steps, options, *inputs.tensors())


__all__ = ["CpuBackend"]
