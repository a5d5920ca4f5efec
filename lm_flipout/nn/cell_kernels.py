"""The LSTM step's elementwise work as compiled C kernels (cell_kernels.c), for the layer's
loops on CPU (issue 7, docs/benchmarks.md).

One call per step replaces the dozen small PyTorch ops of the gates, cell and sign
products, and the backward's gate coefficients (computed in the step instead of in
separate passes over the whole window). The C source is compiled at first use with the
system's C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into a cache folder
(``$LM_FLIPOUT_CACHE``, else ``$XDG_CACHE_HOME/lm_flipout`` or ``~/.cache/lm_flipout``),
keyed by the source, the flags and the CPU, and loaded with ctypes. Where no compiler
works the layer runs on PyTorch ops, a few percent slower, after one warning. Set
``LM_FLIPOUT_COMPILED_CELL=0`` to turn the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("cell_kernels.c")
# -fno-trapping-math lets the exp's clamps vectorize; results are IEEE as without it
FLAGS = ["-O3", "-std=c11", "-fno-trapping-math", "-shared", "-fPIC"]

# Tests switch this off to compare against the PyTorch ops.
ENABLED = os.environ.get("LM_FLIPOUT_COMPILED_CELL", "1") != "0"

_LOCK = threading.Lock()
_LIBRARY: dict[str, Optional[ctypes.CDLL]] = {}

_POINTER = ctypes.c_void_p
_SIZE = ctypes.c_int64


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$LM_FLIPOUT_CACHE``, else the user's cache."""
    if os.environ.get("LM_FLIPOUT_CACHE"):
        return Path(os.environ["LM_FLIPOUT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lm_flipout"


def _compiler() -> Optional[str]:
    """The C compiler to use: ``$CC`` where set and found, else the first of cc, gcc, clang."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags where Linux says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "".join(sorted({line for line in lines if line.startswith(wanted)}))


def _shares_gomp() -> bool:
    """Whether PyTorch runs on GNU OpenMP in this process, so that kernels built with
    -fopenmp use its runtime and threads (a second OpenMP runtime would compete with them
    for the cores)."""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try in turn; the first set that compiles is kept. Without OpenMP a
    step runs on one thread; -march=native is not accepted everywhere."""
    extras = [["-march=native"], []]
    if _shares_gomp():
        extras = [["-march=native", "-fopenmp"], ["-fopenmp"]] + extras
    return [FLAGS + extra for extra in extras]


def _build(compiler: str) -> Path:
    """The compiled library in the cache, compiling it first if it is not there."""
    source = SOURCE.read_bytes()
    flag_sets = _flag_sets()
    key = hashlib.sha256(b"\0".join([source, repr(flag_sets).encode(),
                                     compiler.encode(), platform.machine().encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    target = cache_dir() / f"cell_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # a unique name, then an atomic rename: ranks of one job may compile at the same time
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        errors = ""
        for flags in flag_sets:
            done = subprocess.run([compiler, *flags, "-o", partial, str(SOURCE)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(partial, target)
                return target
            errors = done.stderr.strip()
        raise RuntimeError(f"{compiler} failed: {errors[-500:]}")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None (after one warning) where they cannot be built."""
    with _LOCK:
        if "cell" in _LIBRARY:
            return _LIBRARY["cell"]
        compiler = _compiler()
        loaded = None
        try:
            if compiler is None:
                raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
            loaded = ctypes.CDLL(str(_build(compiler)))
            loaded.lstm_forward_step.argtypes = [_SIZE, _SIZE] + [_POINTER] * 11
            loaded.lstm_backward_step.argtypes = [_SIZE, _SIZE] + [_POINTER] * 12
            loaded.lstm_forward_step.restype = loaded.lstm_backward_step.restype = None
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            warnings.warn(f"lm_flipout: the compiled LSTM cell kernels are not available "
                          f"({error}); the LSTM layer runs on PyTorch ops instead, a little "
                          f"slower on CPU. Install a C compiler or set CC to use them (and "
                          f"LM_FLIPOUT_CACHE to a writable folder if {cache_dir()} is not), "
                          f"or set LM_FLIPOUT_COMPILED_CELL=0 to silence this.", stacklevel=3)
            loaded = None
        _LIBRARY["cell"] = loaded
        return loaded


def available(like: Tensor) -> bool:
    """Whether the kernels serve a layer whose tensors are like ``like``: float32 on CPU."""
    return (ENABLED and like.device.type == "cpu" and like.dtype == torch.float32
            and library() is not None)


def check(*operands: tuple[Optional[Tensor], tuple[int, ...]]) -> None:
    """Raise unless every (tensor, shape) pair is a contiguous float32 CPU tensor of that
    shape (None passes): what the C code takes on trust. The step loops check their
    buffers once per call, so that every step's slices of them need no check."""
    for tensor, shape in operands:
        if tensor is not None and not (
                tensor.is_contiguous() and tensor.dtype == torch.float32
                and tensor.device.type == "cpu" and tuple(tensor.shape) == shape):
            raise RuntimeError(f"cell kernels: expected a contiguous float32 CPU tensor of "
                               f"shape {shape}, got {tuple(tensor.shape)} {tensor.dtype} on "
                               f"{tensor.device}; this is a bug in the caller")


def _pointer(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


def forward_step(gates: Tensor, mean: Tensor, noise: Optional[Tensor],
                 out_signs: Optional[Tensor], c_prev: Tensor, c: Tensor, h: Tensor,
                 mask: Optional[Tensor], u: Optional[Tensor], in_signs: Optional[Tensor],
                 u_signed: Optional[Tensor]) -> None:
    """In place: ``gates`` (B, 4H) + ``mean`` + ``noise`` ∘ r activated, c and h of the
    step, and for the next step's products u = h ∘ mask and u ∘ s (cell_kernels.c). Every
    operand must be as `check` demands: (B, 4H) or (B, H)."""
    batch, hidden = c.shape
    library().lstm_forward_step(batch, hidden, *map(_pointer, (
        gates, mean, noise, out_signs, c_prev, c, h, mask, u, in_signs, u_signed)))


def backward_step(gates: Tensor, c_prev: Tensor, c: Tensor, grad_out: Tensor,
                  carried: Tensor, carried_noise: Optional[Tensor],
                  in_signs: Optional[Tensor], mask: Optional[Tensor], grad_cell: Tensor,
                  grad_gates: Tensor, out_signs: Optional[Tensor],
                  signed_grads: Optional[Tensor]) -> None:
    """One step back: ∂a_t into ``grad_gates`` (and ∂a_t ∘ r into ``signed_grads``), and
    ``grad_cell`` from ∂c_t to ∂c_{t-1} (cell_kernels.c). Operands as for `forward_step`."""
    batch, hidden = c.shape
    library().lstm_backward_step(batch, hidden, *map(_pointer, (
        gates, c_prev, c, grad_out, carried, carried_noise, in_signs, mask, grad_cell,
        grad_gates, out_signs, signed_grads)))
