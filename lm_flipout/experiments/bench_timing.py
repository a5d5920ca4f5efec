"""The benchmark's timing harness: interleaved repeats, paired ratios, and the memory of one
training step."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

BASELINE = "torch.nn.LSTM"


class SavedBytes:
    """Counts the bytes of distinct storages saved for backward inside the context."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> "SavedBytes":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per task, ``samples[name][k]`` from repeat k (all tasks ran in every repeat)."""

    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, name: str, baseline: str = BASELINE) -> float:
        """Median over repeats of name / baseline within the same repeat: load that drifts
        over the run cancels out, as it would not in a ratio of two medians."""
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[baseline]))


def interleaved_times(tasks: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                      repeats: int) -> Timings:
    """Every task once per repeat, in an order rotated by one each repeat (so that no task
    always follows the same one), after ``warmup`` runs of each."""
    for task in tasks.values():
        for _ in range(warmup):
            task()
    synchronize(device)
    names = list(tasks)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for k in range(repeats):
        for name in names[k % len(names):] + names[: k % len(names)]:
            start = time.perf_counter()
            tasks[name]()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return Timings(samples)


def step_memory(task: Callable[[], None], device: torch.device) -> int:
    """Peak allocated bytes of one step (CUDA), or bytes saved for backward (CPU)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        task()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with SavedBytes() as saved:
        task()
    return saved.total
