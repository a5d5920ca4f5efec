"""Step times at each thread choice: one thread, all cores (PyTorch's default) and ``auto``
(the count `lm_flipout.training.threads` chooses by timing, as a training run does), for
``torch.nn.LSTM`` and our flipout layer, in one run with every task interleaved.

``lm-flipout bench --contend`` measures it while a helper process keeps one core busy (see
`lm_flipout.experiments.contention`), ``--threads-table`` on the machine as it is.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..training.threads import ThreadChooser, machine_cores, training_step
from .bench import VARIANTS, Shape, build_language_model, lm_step
from .bench_timing import BASELINE, interleaved_times

OURS = "gaussian flipout"
MODELS: dict[str, Optional[dict]] = {BASELINE: VARIANTS[BASELINE], OURS: VARIANTS[OURS]}


def measure_thread_choices(shape: Shape, device: torch.device, warmup: int,
                           repeats: int) -> dict:
    """Per model: ms per language-model training step at 1 thread, at all cores and at the
    count ``auto`` chooses, and auto's time over the better fixed choice's (the median of
    the ratio within each repeat); plus our layer on auto over torch.nn.LSTM on all cores."""
    torch.manual_seed(0)
    cores = machine_cores()
    tokens = torch.randint(0, shape.vocab, (shape.steps + 1, shape.batch), device=device)
    tasks: dict[str, Callable[[], None]] = {}
    chosen: dict[str, int] = {}
    for name, settings in MODELS.items():
        model = build_language_model(settings, shape).to(device).train()
        step = lm_step(model, tokens)
        chooser = ThreadChooser("auto", device, environ={})  # as a run does, on its own model
        chosen[name] = chooser.use("bench", training_step(model, shape.steps, shape.batch,
                                                          device)).threads
        for label, threads in (("1", 1), ("all", cores), ("auto", chosen[name])):
            tasks[f"{name} @ {label}"] = at_threads(threads, step)
    times = interleaved_times(tasks, device, warmup, repeats)
    rows = []
    for name in MODELS:
        fixed = {label: times.median(f"{name} @ {label}") for label in ("1", "all")}
        best = min(fixed, key=fixed.__getitem__)
        rows.append({
            "model": name,
            "one_thread_ms": 1000 * fixed["1"],
            "all_threads_ms": 1000 * fixed["all"],
            "auto_ms": 1000 * times.median(f"{name} @ auto"),
            "auto_threads": chosen[name],
            "best_fixed": best,
            "auto_vs_best_fixed": times.ratio(f"{name} @ auto", f"{name} @ {best}"),
        })
    return {"cores": cores, "rows": rows,
            "ours_auto_vs_torch_default": times.ratio(f"{OURS} @ auto", f"{BASELINE} @ all")}


def at_threads(threads: int, task: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        torch.set_num_threads(threads)
        task()
    return run


def format_thread_choices(shape_name: str, shape: Shape, result: dict, contended: bool) -> str:
    cores = result["cores"]
    load = "one core kept busy by a helper process" if contended else "as the machine is"
    lines = [
        f"### {shape_name}: {shape}, {cores} cores, {load}",
        "",
        f"| model | 1 thread ms | {cores} threads ms | auto ms (threads) | auto / best fixed |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['one_thread_ms']:.1f} | {r['all_threads_ms']:.1f} "
                     f"| {r['auto_ms']:.1f} ({r['auto_threads']}) "
                     f"| {r['auto_vs_best_fixed']:.2f} |")
    lines.append(f"\nOurs ({OURS}) on auto / {BASELINE} on PyTorch's default ({cores} threads): "
                 f"{result['ours_auto_vs_torch_default']:.2f}")
    return "\n".join(lines)
