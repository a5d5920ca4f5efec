"""The LSTM stack under torch.compile (lm_flipout/nn/compiled.py): one graph with no breaks
for every noise family x estimator, with recurrent dropout and zoneout, in training and
evaluation; the same numbers as eager; how a backend is chosen while tracing."""

import copy

import pytest
import torch

from lm_flipout.nn import LSTM, WeightNoise, use_backend
from lm_flipout.nn.backends import select_backend
from lm_flipout.nn.cell import CellOptions
from lm_flipout.nn.compiled import compile_stack, default_mode, is_compiled, prepare_dynamo

NOISES = {"none": None, **{f"{family}-{estimator}": (family, estimator)
                           for family in ("gaussian", "dropconnect")
                           for estimator in ("shared", "flipout", "independent")}}
CELLS = {"plain": {},
         "recurrent-dropout": {"cell_dropout": 0.3, "hidden_dropout": 0.2},
         "zoneout": {"zoneout_cell": 0.4, "zoneout_hidden": 0.2, "between_dropout": 0.1}}


def tiny_stack(noise, cell: dict, layers: int = 2) -> LSTM:
    spec = None if noise is None else WeightNoise(noise[0], estimator=noise[1], p=0.5)
    return LSTM(3, 4, layers, recurrent_noise=spec, input_noise=spec, **cell)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
@pytest.mark.parametrize("noise", NOISES.values(), ids=NOISES.keys())
def test_stack_forward_is_one_graph_without_breaks(noise, cell, training):
    """Dynamo captures the whole stack (noise draws, masks, the recurrence and its
    hand-written backward, which it traces with the autograd Function) as one graph."""
    prepare_dynamo()
    stack = tiny_stack(noise, cell).train(training)
    explained = torch._dynamo.explain(lambda x: stack(x)[0])(torch.randn(3, 2, 3))
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count, reasons) == (1, 0, [])


class Stacks(torch.nn.Module):
    """Several stacks in one module, so that one compilation covers them all."""

    def __init__(self, stacks: list[LSTM]) -> None:
        super().__init__()
        self.stacks = torch.nn.ModuleList(stacks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(stack(x)[0] * torch.linspace(-1, 1, 4)).sum()
                            for stack in self.stacks])


def compiled_against_eager(cell: dict, backend: str, noises):
    """Losses and parameter gradients of every noise on one cell setting, eager and compiled
    (fullgraph) from the same seed, over two training steps (the second on the gradients
    the first accumulated)."""
    torch.manual_seed(0)
    eager = Stacks([tiny_stack(noise, cell, layers=1) for noise in noises])
    compiled = copy.deepcopy(eager)
    prepare_dynamo()
    compiled.compile(backend=backend, fullgraph=True, dynamic=False)
    x = torch.randn(3, 2, 3)
    for seed in (1, 2):
        for model in (eager, compiled):
            torch.manual_seed(seed)
            losses = model(x)
            losses.sum().backward()
            yield model, losses


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
def test_forward_and_backward_trace_whole_and_match_eager(cell):
    """fullgraph=True through AOTAutograd (forward and backward graphs): every noise gives
    eager's losses and gradients."""
    runs = list(compiled_against_eager(cell, "aot_eager", NOISES.values()))
    for (eager, eager_losses), (compiled, compiled_losses) in zip(runs[::2], runs[1::2]):
        torch.testing.assert_close(compiled_losses, eager_losses, atol=1e-6, rtol=0)
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("noise", ["gaussian-flipout", "dropconnect-shared"])
def test_inductor_matches_eager_to_1e5(noise):
    """Inductor's generated kernels, with PyTorch's random kernels (fallback_random), draw
    the same noise and masks as eager: losses and gradients agree to 1e-5."""
    cell = {**CELLS["zoneout"], **CELLS["recurrent-dropout"]}
    runs = list(compiled_against_eager(cell, "inductor", [NOISES[noise]]))
    for (eager, eager_losses), (compiled, compiled_losses) in zip(runs[::2], runs[1::2]):
        torch.testing.assert_close(compiled_losses, eager_losses, atol=1e-5, rtol=1e-5)
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_tracing_chooses_a_compilable_backend():
    """While tracing, automatic choice skips the CPU backend (not traceable) for the
    reference, `use_backend` is not read, and a named backend that cannot be traced is a
    clear error."""
    x = torch.randn(2, 3, 4)
    flipout = CellOptions(unit=torch.ones(16, 4))
    assert select_backend(x, flipout).name == "cpu"  # eager: the CPU backend
    seen = []

    def traced(x):
        seen.append(select_backend(x, flipout).name)
        return x + 1

    with use_backend("cpu"):
        torch.compile(traced, backend="eager", fullgraph=True)(x)
    assert seen == ["reference"]
    with pytest.raises(Exception, match="cannot run inside torch.compile"):
        torch.compile(lambda x: select_backend(x, flipout, "cpu") and x,
                      backend="eager", fullgraph=True)(x)


def test_compile_stack_keeps_state_dict_keys_and_chooses_mode_by_device():
    stack = tiny_stack(None, {})
    keys = list(stack.state_dict())
    compile_stack(stack, torch.device("cpu"), backend="eager")
    assert is_compiled(stack) and list(stack.state_dict()) == keys
    assert default_mode(torch.device("cuda")) == "reduce-overhead"
    assert default_mode(torch.device("cpu")) == "default"
    with pytest.raises(ValueError, match="mode='fast' is unknown"):
        compile_stack(tiny_stack(None, {}), torch.device("cpu"), mode="fast")


def test_a_new_window_length_compiles_once_and_is_reused():
    """Static shapes: each window length is one graph, compiled once; coming back to a length
    seen before reuses its graph."""
    torch._dynamo.reset()
    frames = []

    def counting(graph, example_inputs):
        frames.append(graph)
        return graph.forward

    stack = tiny_stack(("gaussian", "flipout"), CELLS["zoneout"])
    stack.compile(backend=counting, dynamic=False)
    for steps in (3, 5, 3, 5, 3):
        stack(torch.randn(steps, 2, 3))
    assert len(frames) == 2
