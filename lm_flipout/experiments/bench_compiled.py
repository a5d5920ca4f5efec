"""The compiled reference path (``lm-flipout bench --compile``) against ``torch.nn.LSTM``,
the eager backends and the eager reference: training-step time, compile time, and the
operations one training step runs (PyTorch profiler counts).

For flipout, recurrent dropout and zoneout, each on the shape's language model (embedding,
LSTM stack, tied decoder, loss, SGD step): "eager" is what automatic backend choice runs
(on CPU the hand-written CPU backend for flipout, the reference for the per-step masks),
"eager reference" the reference backend named explicitly, "compiled" the stack under
`compile_stack`. Compile time is the first compiled step (tracing and code generation)
less the median step. Counts come from one profiled step after warm-up: "ATen ops" every
``aten::`` event (nested ones included), "generated" the kernels Inductor wrote (C++ on CPU,
Triton on CUDA), and on CUDA "device kernels" every kernel the GPU ran; "eager ops /
compiled" divides the eager reference's count by the compiled one's (see `kernels`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable

import torch

from ..nn import use_backend
from ..nn.compiled import compile_stack
from .bench import VARIANTS, Shape, build_language_model, lm_step
from .bench_timing import BASELINE, interleaved_times, synchronize

REGULARIZERS = ("gaussian flipout", "recurrent dropout 0.25", "zoneout 0.5 / 0.05")


def step_task(settings, shape: Shape, device: torch.device, backend: str | None = None,
              compile_backend: str | None = None) -> Callable[[], None]:
    """One training step of the variant's language model: eager on ``backend`` (None:
    automatic choice), or with its stack compiled by ``compile_backend``."""
    torch.manual_seed(0)
    model = build_language_model(settings, shape).to(device).train()
    if compile_backend is not None:
        compile_stack(model.lstm, device, backend=compile_backend)
    tokens = torch.randint(0, shape.vocab, (shape.steps + 1, shape.batch), device=device)
    step = lm_step(model, tokens)

    def run() -> None:
        with use_backend(backend) if backend else nullcontext():
            step()
    return run


def operation_counts(task: Callable[[], None], device: torch.device) -> dict[str, int]:
    """The profiler's count of ATen ops, generated kernels and (CUDA) device kernels in one
    call of ``task``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        task()
        synchronize(device)
    events = profile.events()
    counts = {"aten_ops": sum(e.name.startswith("aten::") for e in events),
              "generated": sum("cpp_fused" in e.name or e.name.startswith("triton_")
                               for e in events)}
    if device.type == "cuda":
        counts["device_kernels"] = sum(e.device_type == torch.autograd.DeviceType.CUDA
                                       for e in events)
    return counts


def kernels(counts: dict[str, int]) -> int:
    """The launches of one step: device kernels on CUDA; on CPU, ATen ops plus generated
    kernels (an ATen op that calls others counts each)."""
    return counts.get("device_kernels", counts["aten_ops"] + counts["generated"])


def measure_compiled(shape: Shape, device: torch.device, warmup: int, repeats: int,
                     compile_backend: str = "inductor",
                     regularizers: tuple[str, ...] = REGULARIZERS) -> list[dict]:
    """One row per regularizer and way of running it, plus ``torch.nn.LSTM`` (see the module
    docstring); ratios are paired within repeats, as in the main table."""
    torch._inductor.config.cpp.enable_kernel_profile = True  # name C++ kernels for the count
    tasks = {BASELINE: step_task(VARIANTS[BASELINE], shape, device)}
    compile_seconds = {}
    for name in regularizers:
        settings = VARIANTS[name]
        tasks[f"{name}, eager"] = step_task(settings, shape, device)
        if device.type == "cpu" and "flipout" in name:  # automatic choice is the CPU backend
            tasks[f"{name}, eager reference"] = step_task(settings, shape, device, "reference")
        compiled = step_task(settings, shape, device, compile_backend=compile_backend)
        started = time.perf_counter()
        compiled()
        synchronize(device)
        compile_seconds[name] = time.perf_counter() - started
        tasks[f"{name}, compiled"] = compiled
    times = interleaved_times(tasks, device, warmup, repeats)
    counts = {label: operation_counts(task, device) for label, task in tasks.items()}
    rows = []
    for label in tasks:
        name, _, way = label.partition(", ")
        eager = f"{name}, eager"
        row = {"variant": label, "step_ms": 1000 * times.median(label),
               "x_nn_lstm": times.ratio(label),
               "x_eager": times.ratio(label, eager) if eager in tasks else None,
               **counts[label]}
        if way == "compiled":
            reference = (f"{name}, eager reference" if f"{name}, eager reference" in tasks
                         else eager)
            row["compile_s"] = compile_seconds[name] - times.median(label)
            row["ops_eager_over_compiled"] = (kernels(counts[reference])
                                              / max(1, kernels(counts[label])))
        rows.append(row)
    return rows


def format_compiled(shape_name: str, shape: Shape, rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [f"### compiled path, {shape_name}: {shape}", "",
             "| variant | LM step ms | x nn.LSTM | x eager | compile s | ATen ops | generated "
             "| eager ops / compiled |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        x_eager = "" if r["x_eager"] is None else f"{r['x_eager']:.2f}"
        compile_s = f"{r['compile_s']:.0f}" if "compile_s" in r else ""
        fewer = (f"{r['ops_eager_over_compiled']:.1f}x" if "ops_eager_over_compiled" in r
                 else "")
        lines.append(f"| {r['variant']} | {r['step_ms']:.1f} | {r['x_nn_lstm']:.2f} | "
                     f"{x_eager} | {compile_s} | {r['aten_ops']} | {r['generated']} | {fewer} |")
    return "\n".join(lines)
