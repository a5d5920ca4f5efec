"""The reference backend: the plain-PyTorch recurrence, on any device and dtype."""

from __future__ import annotations

from torch import Tensor

from ..cell import CellOptions, LayerInputs
from ..recurrence import reference_recurrence
from .interface import Backend


class ReferenceBackend(Backend):
    """`lm_flipout.nn.recurrence`: the cell's equations step by step, nothing else."""

    name = "reference"
    compilable = True

    def supports(self, like: Tensor, options: CellOptions) -> bool:
        return True

    def run(self, inputs: LayerInputs, options: CellOptions) -> tuple[Tensor, Tensor, Tensor]:
        return reference_recurrence(inputs, options)
