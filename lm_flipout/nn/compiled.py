"""The LSTM stack under ``torch.compile``: the reference cell, its noise draws and masks, and
the whole stack traced into one graph per window shape, which Inductor turns into fused
kernels (C++ on CPU, Triton on CUDA).

Inside a compiled model the layer runs the reference backend (or the fused ``nn.LSTM`` op
where it would anyway), since only backends marked ``compilable`` are traced; `use_backend`
is not read while tracing. Shapes are static: the time loop of the recurrence unrolls, so a
graph holds one window length T and one batch size B, and a new (T, B) compiles a new graph,
up to `GRAPH_LIMIT` graphs (then that shape runs eagerly). A run with a fixed ``data.bptt``
sees a handful of shapes (the training window, the last shorter window, the evaluation
batch sizes); ``data.variable_bptt`` sees every length from 5 to bptt + 20. On CUDA,
``mode="reduce-overhead"`` also records each graph as a CUDA graph where Inductor can
(static shapes, every tensor on the GPU), so a training step replays rather than launches
its kernels.

Random draws inside the graph use PyTorch's own random kernels (Inductor's
``fallback_random``), so a compiled model draws the same noise as the eager one from the same
seed, and compiled and eager runs give the same numbers to rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# graphs one process may compile for the stack: every window length x batch x fresh or
# carried state x training or evaluation that a run meets (Dynamo's default is 8)
GRAPH_LIMIT = 64


def default_mode(device: torch.device) -> str:
    """CUDA graphs on CUDA (launch overhead is what the step-by-step loop pays there);
    Inductor's default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def prepare_dynamo() -> None:
    """The settings the compiled stack needs, process-wide: Dynamo may trace the layer's
    parameter container (a one-layer ``nn.LSTM``, refused by default) and compile up to
    `GRAPH_LIMIT` shapes, and Inductor draws random numbers with PyTorch's kernels (the
    same stream as eager)."""
    config = torch._dynamo.config
    config.allow_rnn = True
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), GRAPH_LIMIT))
    torch._inductor.config.fallback_random = True


def compile_stack(module: nn.Module, device: torch.device, mode: Optional[str] = None,
                  backend: str = "inductor") -> nn.Module:
    """Compile ``module`` (an `LSTM` stack, or a model holding one) in place with static
    shapes and return it; its ``state_dict`` keys do not change. ``mode`` defaults to
    `default_mode` of ``device``; ``backend`` is torch.compile's (``eager`` and
    ``aot_eager`` trace without generating code, for tests)."""
    mode = mode or default_mode(device)
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_stack: mode={mode!r} is unknown; use one of {COMPILE_MODES}.")
    prepare_dynamo()
    options = {"mode": mode} if backend == "inductor" else {}
    module.compile(backend=backend, dynamic=False, **options)
    return module


def is_compiled(module: nn.Module) -> bool:
    """Whether `compile_stack` (``nn.Module.compile``) compiled ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None
