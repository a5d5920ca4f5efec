"""The LSTM step's elementwise work as compiled C kernels (kernels.c), for the CPU backend's
step loops (docs/benchmarks.md).

One call per step replaces the dozen small PyTorch ops of the gates, cell and sign
products, and the backward's gate coefficients (computed in the step instead of in
separate passes over the whole window). The C source is compiled at first use with the
system's C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into `kernels/` under the
toolkit's cache root (`lm_flipout.user_cache`: ``$LM_FLIPOUT_CACHE``, else ``~/.cache/lm_flipout``),
keyed by the source, the flags, the compiler and the CPU, and loaded with ctypes. Where
no compiler works the layer runs on PyTorch ops, about 7% slower at PTB-medium size, after
one warning. Set ``LM_FLIPOUT_COMPILED_CELL=0`` to turn the kernels off (read when the
default CPU backend is made, at import; see `enabled_by_environment`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ....user_cache import cache_root

SOURCE = Path(__file__).with_name("kernels.c")
# -fno-trapping-math lets the exp's clamps vectorize; results are IEEE as without it
FLAGS = ["-O3", "-std=c11", "-fno-trapping-math", "-shared", "-fPIC"]

_LOCK = threading.Lock()
_UNTRIED = object()
_library: object = _UNTRIED  # then the loaded CDLL, or None where it cannot be built

_POINTER = ctypes.c_void_p
_SIZE = ctypes.c_int64


def enabled_by_environment() -> bool:
    """False where ``LM_FLIPOUT_COMPILED_CELL=0`` turns the kernels off."""
    return os.environ.get("LM_FLIPOUT_COMPILED_CELL", "1") != "0"


def cache_dir() -> Path:
    """Where compiled kernels are kept: `kernels/` under the toolkit's cache root."""
    return cache_root() / "kernels"


def _compiler() -> Optional[list[str]]:
    """The C compiler command: ``$CC`` (which may carry arguments, e.g. ``ccache gcc``)
    where set and found, else the first of cc, gcc, clang on the PATH."""
    for command in (shlex.split(os.environ.get("CC", "")), ["cc"], ["gcc"], ["clang"]):
        if command and shutil.which(command[0]):
            return [shutil.which(command[0]), *command[1:]]
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
    """Whether this process has GNU OpenMP loaded as ``libgomp.so.1`` (PyTorch's Linux
    wheels do), which a library built with -fopenmp then shares, threads included. Anything
    else (a renamed libgomp, LLVM's or Intel's OpenMP) would make it load a second runtime
    that competes for the cores, so the kernels are then built without OpenMP."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    return any(line.endswith("/libgomp.so.1") for line in maps)


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try in turn; the first set that compiles is kept. Without OpenMP a
    step runs on one thread; -march=native is not accepted everywhere."""
    extras = [["-march=native"], []]
    if _shares_gomp():
        extras = [["-march=native", "-fopenmp"], ["-fopenmp"]] + extras
    return [FLAGS + extra for extra in extras]


def _build(compiler: list[str], flag_sets: list[list[str]], target: Path) -> None:
    """Compile the kernels into ``target`` with the first of ``flag_sets`` that works."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # a unique name, then an atomic rename: ranks of one job may compile at the same time
    handle, partial = tempfile.mkstemp(prefix=".partial-", suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        first_error = ""
        for flags in flag_sets:
            done = subprocess.run([*compiler, *flags, "-o", partial, str(SOURCE)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(partial, 0o755 & ~umask)  # mkstemp's 0600 would lock out other users
                os.replace(partial, target)
                return
            first_error = first_error or next(
                (line for line in done.stderr.splitlines() if "error" in line),
                f"exit status {done.returncode}")
        raise RuntimeError(f"{' '.join(compiler)} failed: {first_error.strip()}")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _cache_path(compiler: list[str], flag_sets: list[list[str]]) -> Path:
    """The kernels' file in the cache, named by the source, flags, compiler and CPU."""
    key = hashlib.sha256(b"\0".join(
        [SOURCE.read_bytes(), repr(flag_sets).encode(), " ".join(compiler).encode(),
         platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
    return cache_dir() / f"cell_kernels-{key}.so"


def _load() -> ctypes.CDLL:
    """The kernels from the cache, built first where they are not there or do not load."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
    flag_sets = _flag_sets()
    target = _cache_path(compiler, flag_sets)
    try:
        loaded = ctypes.CDLL(str(target))
    except OSError:  # not built yet, or a broken file: build it (again)
        _build(compiler, flag_sets, target)
        loaded = ctypes.CDLL(str(target))
    loaded.lstm_forward_step.argtypes = [_SIZE, _SIZE] + [_POINTER] * 11
    loaded.lstm_backward_step.argtypes = [_SIZE, _SIZE] + [_POINTER] * 12
    loaded.lstm_forward_step.restype = loaded.lstm_backward_step.restype = None
    return loaded


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None (after one warning) where they cannot be built."""
    global _library
    if _library is not _UNTRIED:
        return _library
    with _LOCK:
        if _library is _UNTRIED:
            try:
                _library = _load()
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _library = None  # before warning: a warning raised as an error must not retry
                warnings.warn(
                    f"lm_flipout: the compiled LSTM step kernels are not available ({error}), "
                    f"so the LSTM layer runs on PyTorch ops instead, about 7% slower at "
                    f"PTB-medium size on CPU. To use them, install a C compiler (or point CC "
                    f"at one) and make sure the cache folder is writable (set "
                    f"LM_FLIPOUT_CACHE to move it); set LM_FLIPOUT_COMPILED_CELL=0 to run on "
                    f"PyTorch ops without this warning.", stacklevel=3)
    return _library


def available(like: Tensor) -> bool:
    """Whether the kernels serve a layer whose tensors are like ``like``: float32 on CPU."""
    return like.device.type == "cpu" and like.dtype == torch.float32 and library() is not None


def check(*operands: tuple[Optional[Tensor], tuple[int, ...]]) -> None:
    """Raise unless every (tensor, shape) pair is a contiguous float32 CPU tensor of that
    shape (None passes): what the C code takes on trust. The step loops check their buffers
    once per call and pass slices of them; the other operands are the step products' fresh
    results, whose shapes follow from the weights that `lm_flipout.nn.functional.lstm_layer`
    checks."""
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
    step, and for the next step's products u = h ∘ mask and u ∘ s (kernels.c). Every
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
    ``grad_cell`` from ∂c_t to ∂c_{t-1} (kernels.c). Operands as for `forward_step`."""
    batch, hidden = c.shape
    library().lstm_backward_step(batch, hidden, *map(_pointer, (
        gates, c_prev, c, grad_out, carried, carried_noise, in_signs, mask, grad_cell,
        grad_gates, out_signs, signed_grads)))
