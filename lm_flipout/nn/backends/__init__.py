"""The backends that run the LSTM layer's recurrence, and how one is chosen for a call.

A backend (interface.py) runs the cell of `lm_flipout.nn.cell` over a call's steps. Two
ship: "reference" (plain PyTorch ops, any device and dtype: the definition) and "cpu"
(float32 on CPU: oneDNN products, scratch buffers, compiled step kernels). The layer picks
one per call, in this order:

1. the backend given to the layer (``LSTM(..., backend=...)``), else
2. the one set by ``with use_backend(...):`` around the call, else
3. automatically: the first registered backend whose ``supports`` accepts the call's
   tensors, else the reference.

Under automatic choice a call without per-sequence noise, hidden-state mask, extra input
term, recurrent-dropout or zoneout masks runs ``torch.nn.LSTM``'s fused kernel instead;
naming a backend (1 or 2) runs that backend for every call. The CPU backend does not
implement recurrent dropout or zoneout, so automatic choice runs those on the reference.

While ``torch.compile`` traces a call (`lm_flipout.nn.compiled`), step 2 is skipped (Dynamo
cannot read the context variable), automatic choice takes only backends whose
``compilable`` is true (the reference), and the fused kernel is not used.

A CUDA backend would plug in the same way: subclass `Backend` with ``name = "cuda"``,
``supports`` true for CUDA tensors (and the cell options it implements), and ``run``
applying its own autograd Function to the `LayerInputs` and `CellOptions`; then
``register_backend(CudaBackend())``, and test it against the reference as
tests/nn/test_nn_backends.py does the CPU one.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional, Union

import torch
from torch import Tensor

from ..cell import CellOptions
from .cpu import CpuBackend
from .interface import Backend
from .reference import ReferenceBackend

BackendChoice = Union[str, Backend, None]

REFERENCE = ReferenceBackend()
# the backends automatic choice tries, in order, before falling back on the reference
_REGISTERED: dict[str, Backend] = {}
_REQUESTED: ContextVar[Optional[Backend]] = ContextVar("lm_flipout_backend", default=None)


def register_backend(backend: Backend) -> None:
    """Make ``backend`` known by its name and tried, after those registered before it, by
    the automatic choice."""
    _REGISTERED[backend.name] = backend


def resolve(choice: BackendChoice) -> Optional[Backend]:
    """A backend from a name or a `Backend` (None stays None: automatic choice)."""
    if choice is None or isinstance(choice, Backend):
        return choice
    if choice == REFERENCE.name:
        return REFERENCE
    if choice in _REGISTERED:
        return _REGISTERED[choice]
    known = [REFERENCE.name, *_REGISTERED]
    raise ValueError(f"backend {choice!r} is unknown; use one of {known} or a Backend.")


@contextmanager
def use_backend(choice: BackendChoice) -> Iterator[Optional[Backend]]:
    """Run the LSTM layers inside the block on ``choice`` (a name, a `Backend`, or None for
    automatic choice), unless a layer was given its own."""
    token = _REQUESTED.set(resolve(choice))
    try:
        yield _REQUESTED.get()
    finally:
        _REQUESTED.reset(token)


def requested_backend(choice: BackendChoice = None) -> Optional[Backend]:
    """The backend named for this call: ``choice``, else the one of `use_backend`; None
    when neither names one (automatic choice). While ``torch.compile`` traces, `use_backend`
    is not read (a context variable would break the graph): only ``choice`` counts."""
    if torch.compiler.is_compiling():
        return resolve(choice)
    return resolve(choice) or _REQUESTED.get()


def select_backend(like: Tensor, options: CellOptions = CellOptions(),
                   choice: BackendChoice = None) -> Backend:
    """The backend that runs a call whose tensors are like ``like``, with these cell options:
    the requested one (which must support them), else the first registered that does, else
    the reference."""
    backend = requested_backend(choice)
    compiling = torch.compiler.is_compiling()
    if backend is not None:
        if not backend.supports(like, options):
            raise ValueError(f"backend {backend!r} does not run {like.dtype} tensors on "
                             f"{like.device} with {options.names()}; use 'reference' or "
                             f"automatic choice (None).")
        if compiling and not backend.compilable:
            raise ValueError(f"backend {backend.name!r} cannot run inside torch.compile; use "
                             "'reference' or automatic choice (None) for a compiled model.")
        return backend
    for candidate in _REGISTERED.values():
        if (candidate.compilable or not compiling) and candidate.supports(like, options):
            return candidate
    return REFERENCE


register_backend(CpuBackend())

__all__ = ["Backend", "CpuBackend", "ReferenceBackend", "REFERENCE", "register_backend",
           "requested_backend", "resolve", "select_backend", "use_backend"]
