"""What a backend of the LSTM layer is: a way to run the recurrence of `lm_flipout.nn.cell`
over one call's steps, forward and backward.

A backend receives the call's `LayerInputs` (the tensors that take gradients) and its
`CellOptions` (flipout's noise and signs, the hidden-state mask, and any cell option added
later), and returns the outputs (T, B, H) and the final h and c, with gradients for every
input tensor. It must compute what the reference backend (`lm_flipout.nn.recurrence`)
computes, to rounding; tests/nn/test_nn_backends.py holds each one to that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from ..cell import CellOptions, LayerInputs


class Backend(ABC):
    """One way to run the layer's recurrence. ``name`` is how `use_backend` finds it;
    ``compilable`` says whether ``torch.compile`` can trace ``run`` into one graph (automatic
    choice inside a compiled model takes only such backends)."""

    name: str
    compilable: bool = False

    @abstractmethod
    def supports(self, like: Tensor, options: CellOptions) -> bool:
        """Whether this backend runs a call whose tensors are like ``like`` (device, dtype)
        with these cell options (a backend refuses an option it does not implement yet)."""

    @abstractmethod
    def run(self, inputs: LayerInputs, options: CellOptions) -> tuple[Tensor, Tensor, Tensor]:
        """(outputs (T, B, H), h_T, c_T) of one layer call, differentiable in ``inputs``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
