"""Whether a run compiles its LSTM stack (``train.compile``), the compilation itself, and
what it cost: the choice and the seconds are printed and go into results.json.

``auto`` compiles on CUDA, where the step-by-step recurrence is bound by kernel launches
that fused kernels and CUDA graphs remove, and stays eager on CPU and MPS (on CPU the
hand-written CPU backend runs the weight-noise rows; docs/compile.md). Compilation happens
up front, on warm-up calls of the training and evaluation shapes that leave every random
generator as it was, so that compiling changes no draw of the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Union

import torch

from ..model import LanguageModel
from ..nn import detach_state
from ..nn.compiled import compile_stack, default_mode

CompileSetting = Union[bool, str]  # True, False or "auto"


@dataclass(frozen=True)
class CompileReport:
    """What the run did: ``compiled`` or not, why (``reason``), and the warm-up compilation
    time in seconds."""

    compiled: bool
    reason: str
    seconds: float = 0.0

    def facts(self) -> dict:
        """The results.json entries."""
        return {"compiled": self.compiled, "compile_choice": self.reason,
                "compile_s": self.seconds}

    def line(self) -> str:
        """The console line."""
        if not self.compiled:
            return f"torch.compile: off ({self.reason})"
        return (f"torch.compile: on ({self.reason}); the LSTM stack compiled in "
                f"{self.seconds:.1f} s")


def choose_compile(setting: CompileSetting, device: torch.device) -> tuple[bool, str]:
    """Whether to compile on ``device`` under ``train.compile=setting``, and why."""
    if setting is True or setting is False:
        return setting, f"train.compile={str(setting).lower()}"
    if device.type == "cuda":
        return True, "train.compile=auto on CUDA"
    return False, (f"train.compile=auto on {device.type}: eager; train.compile=true compiles")


def _warm_up(model: LanguageModel, steps: int, batch: int, eval_batch: int,
             device: torch.device) -> None:
    """Run the compiled stack on the shapes training and validation call first: a training
    window from a fresh state and from a carried one (forward and backward), and a
    validation window without gradients (fresh and carried state). Random generators are
    restored afterwards and parameter gradients cleared."""
    stack, was_training = model.lstm, model.training
    cuda = device.type == "cuda"

    def call(*args):  # on CUDA each call is a step of its own for the CUDA graphs' memory
        if cuda:
            torch.compiler.cudagraph_mark_step_begin()
        return stack(*args)

    with torch.random.fork_rng(devices=[device] if cuda else []):
        stack.train()
        # embeddings take gradients (one-hot input does not), and the graph depends on it
        x = torch.zeros(steps, batch, stack.input_size, device=device,
                        requires_grad=model.embedding is not None)
        y, state = call(x)
        y, _ = call(x, detach_state(state))
        y.sum().backward()
        stack.zero_grad(set_to_none=True)
        stack.eval()
        with torch.no_grad():
            x = torch.zeros(steps, eval_batch, stack.input_size, device=device)
            call(x, detach_state(call(x)[1]))
    model.train(was_training)


def compile_for_training(model: LanguageModel, setting: CompileSetting, device: torch.device,
                         shapes: tuple[int, int, int],
                         echo: Callable[[str], None] = print) -> CompileReport:
    """Compile ``model``'s LSTM stack in place when `choose_compile` says so, warming it up
    on ``shapes`` = (window length, training batch, validation batch); prints and returns
    the `CompileReport`."""
    enabled, reason = choose_compile(setting, device)
    if not enabled:
        report = CompileReport(False, reason)
    else:
        compile_stack(model.lstm, device)
        started = time.monotonic()
        _warm_up(model, *shapes, device)
        report = CompileReport(True, f"{reason}, mode {default_mode(device)}",
                               time.monotonic() - started)
    echo(report.line())
    return report
