"""How many CPU threads a process computes with: a count the user gave, or the fastest of a
few counts timed on real steps of the work at hand.

PyTorch starts one thread per core, and each parallel region waits at a barrier for all of
them, so a step can take many times longer than on one thread when another process keeps a
core busy. ``auto`` (``train.threads``, ``--threads``) therefore times a few steps of the
run's own model at each candidate count, keeps the fastest, and times again now and then
(when a choice has aged, or the step time drifts), never spending more than about 1/20 of the
time on timing. A count given as a number, or OMP_NUM_THREADS set in the environment, is used
as given. Processes that share a machine divide its cores: torchrun's LOCAL_WORLD_SIZE, and
LM_FLIPOUT_PROCESSES, which ``compare`` sets for each run it starts.

The timed steps leave no trace: the random-number state is restored, no gradient is stored
and no optimizer steps, so a run's numbers depend only on the thread count it computes with.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

Setting = Union[int, str]  # a count >= 1, or "auto"
PROCESSES_VARIABLE = "LM_FLIPOUT_PROCESSES"
OVERHEAD = 20  # a choice is timed again no sooner than this many times its timing's cost
DRIFT = 1.3  # a median step time this many times above or below the reference is a drift
DRIFT_WINDOW = 20  # training steps per median


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def processes_sharing(local_world_size: int = 1,
                      environ: Optional[Mapping[str, str]] = None) -> int:
    """How many training processes share this machine's cores: torchrun's processes on it,
    times LM_FLIPOUT_PROCESSES (ignored unless a whole number >= 1)."""
    text = (os.environ if environ is None else environ).get(PROCESSES_VARIABLE, "1").strip()
    runs = int(text) if text.isdigit() and int(text) >= 1 else 1
    return max(local_world_size, 1) * runs


def candidate_counts(cores: int) -> list[int]:
    """1, ``cores``, and the powers of two between them."""
    counts, n = [1], 2
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + ([cores] if cores > 1 else [])


@dataclass
class ThreadChoice:
    """The thread count for one kind of work, how it was chosen, and the timings behind it
    (median milliseconds per step at each count timed)."""

    threads: int
    how: str
    timings_ms: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"threads": self.threads, "how": self.how,
                "timings_ms": {str(n): round(ms, 3) for n, ms in self.timings_ms.items()}}

    def line(self, work: str) -> str:
        """One readable line, e.g. ``threads for training: 1 (timed: 1 thread 18.0 ms,
        2 threads 338.1 ms per step)``."""
        timed = ", ".join(f"{n} thread{'s' if n > 1 else ''} {ms:.1f} ms"
                          for n, ms in self.timings_ms.items())
        return f"threads for {work}: {self.threads} ({self.how}" + (
            f": {timed} per step)" if timed else ")")


def time_counts(step: Callable[[], None], counts: list[int], repeats: int,
                timer: Callable[[], float]) -> dict[int, float]:
    """Median seconds of ``step`` at each thread count: one untimed warm-up run per count,
    then ``repeats`` rounds that run every count once, in an order rotated each round so
    that load which changes during the timing hits every count alike."""
    for n in counts:
        torch.set_num_threads(n)
        step()
    samples: dict[int, list[float]] = {n: [] for n in counts}
    for k in range(repeats):
        for n in counts[k % len(counts):] + counts[:k % len(counts)]:
            torch.set_num_threads(n)
            start = timer()
            step()
            samples[n].append(timer() - start)
    return {n: statistics.median(values) for n, values in samples.items()}


class ThreadChooser:
    """Chooses and sets the thread count of each kind of work of one process ("training",
    "valid", "test", ...), and says when the training choice should be timed again.

    ``setting`` is ``auto`` or a count (``key`` names where it came from, for the reports);
    ``processes`` is how many processes divide the machine's cores. ``timer`` (seconds) is
    injectable so that tests can decide what is fast.
    """

    def __init__(self, setting: Setting, device: torch.device, processes: int = 1,
                 key: str = "train.threads", timer: Callable[[], float] = time.perf_counter,
                 repeats: int = 3, environ: Optional[Mapping[str, str]] = None) -> None:
        self.setting, self.timer, self.repeats = setting, timer, repeats
        self.cores = max(machine_cores() // max(processes, 1), 1)
        self.choices: dict[str, ThreadChoice] = {}
        self._made_at: dict[str, float] = {}
        self._cost: dict[str, float] = {}
        self._steps: list[float] = []
        self._reference: Optional[float] = None
        self.timings = 0  # how many times counts were timed
        env = os.environ if environ is None else environ
        self.fixed: Optional[ThreadChoice] = None
        if setting != "auto":
            self.fixed = ThreadChoice(int(setting), key)
        elif env.get("OMP_NUM_THREADS", "").strip():
            self.fixed = ThreadChoice(torch.get_num_threads(), "OMP_NUM_THREADS")
        elif device.type != "cpu":
            self.fixed = ThreadChoice(self.cores, f"the steps run on {device.type}; the "
                                                  "process's share of the cores")
        elif self.cores == 1:
            self.fixed = ThreadChoice(1, f"one core for this process of {processes}"
                                         if processes > 1 else "one core")

    def use(self, work: str, step: Callable[[], None],
            on_choice: Optional[Callable[[str, ThreadChoice, Optional[ThreadChoice]], None]]
            = None) -> ThreadChoice:
        """Set the thread count for ``work``: the fixed one, a fresh earlier choice, or the
        fastest of the candidate counts timed on ``step`` now, which ``on_choice(work, new,
        previous)`` then hears of."""
        choice = self.fixed or self.choices.get(work)
        if choice is None or (self.fixed is None and self._aged(work)):
            previous, choice = self.choices.get(work), self._time(work, step)
            if on_choice is not None:
                on_choice(work, choice, previous)
        torch.set_num_threads(choice.threads)
        return choice

    def _aged(self, work: str) -> bool:
        return self.timer() - self._made_at[work] >= OVERHEAD * self._cost[work]

    def _time(self, work: str, step: Callable[[], None]) -> ThreadChoice:
        started = self.timer()
        timings = time_counts(step, candidate_counts(self.cores), self.repeats, self.timer)
        fastest = min(timings, key=lambda n: (timings[n], n))
        choice = ThreadChoice(fastest, "timed", {n: 1000 * s for n, s in timings.items()})
        now = self.timer()
        self._made_at[work], self._cost[work] = now, now - started
        self.timings += 1
        self.choices[work] = choice
        if work == "training":
            self._steps, self._reference = [], None
        return choice

    def drifted(self, seconds: float) -> bool:
        """Note one training step's time; True when the median of the last `DRIFT_WINDOW`
        steps has moved by more than `DRIFT` from the median of the first window after the
        choice, and the choice may be timed again (see `OVERHEAD`)."""
        if self.fixed is not None or "training" not in self.choices:
            return False
        self._steps.append(seconds)
        if len(self._steps) < DRIFT_WINDOW:
            return False
        median, self._steps = statistics.median(self._steps), []
        if self._reference is None:
            self._reference = median
            return False
        ratio = median / max(self._reference, 1e-12)
        return (ratio > DRIFT or ratio < 1 / DRIFT) and self._aged("training")

    def summary(self) -> dict:
        """What results.json records: the setting, the cores this process had, the last
        choice for each kind of work with its timings, and how often counts were timed."""
        choices = ({"all": self.fixed.as_dict()} if self.fixed is not None else
                   {work: choice.as_dict() for work, choice in self.choices.items()})
        return {"setting": self.setting, "cores": self.cores, "timings": self.timings,
                **choices}


def training_step(model: nn.Module, steps: int, batch: int,
                  device: torch.device) -> Callable[[], None]:
    """Forward and backward of ``model`` (in training mode, noise and dropout included) on
    random tokens of shape (``steps``, ``batch``), leaving no trace: the generators are
    restored, gradients are returned and dropped rather than stored, nothing is stepped."""
    params = [p for p in model.parameters() if p.requires_grad]
    vocab = model.decoder.out_features

    def run() -> None:
        with torch.random.fork_rng(devices=[]):  # timed on the CPU only
            tokens = torch.randint(vocab, (steps + 1, batch), device=device)
            logits, _ = model(tokens[:-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[1:].flatten())
            torch.autograd.grad(loss, params)
    return run


def scoring_step(model: nn.Module, steps: int, batch: int,
                 device: torch.device) -> Callable[[], None]:
    """One evaluation window of ``model`` (eval mode, no gradients) on random tokens of shape
    (``steps``, ``batch``); the generators and the model's mode are restored."""
    vocab = model.decoder.out_features

    def run() -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                model(torch.randint(vocab, (steps, batch), device=device))
        finally:
            model.train(was_training)
    return run
