"""Speed and memory of the perturbed LSTM against ``torch.nn.LSTM``.

    lm-flipout bench [--device cpu|cuda] [--shapes ptb-small,ptb-medium,char]
                     [--batch-first] [--bidirectional]
    lm-flipout bench --contend          # thread choices with one core kept busy

For each shape and variant it times forward+backward of the LSTM stack alone and a full
language-model training step (embedding, LSTM, tied decoder, loss, SGD step), as medians
over repeats after warm-up, with the variants interleaved inside every repeat so that load
on a shared machine hits them alike; every figure is also given as a ratio to
``torch.nn.LSTM``: the median over repeats of the ratio within one repeat. Memory: on CUDA
the peak allocated during a training step; on CPU (which has no allocator statistics) the
bytes of tensors saved for backward, i.e. the activation memory of the step.

``--batch-first`` and ``--bidirectional`` time the stacks in that layout, each variant against
``torch.nn.LSTM`` with the same flags; a language model has no such layout, so these runs
time the stack alone and give the memory of its forward+backward.

``--contend`` instead times a training step of ``torch.nn.LSTM`` and of our flipout layer at
one thread, at all cores and at the count ``auto`` chooses, while a helper process it starts
(and always stops) keeps one core busy; ``--threads-table`` does the same on the machine as it
is.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..model import LanguageModel, ModelConfig, NoiseConfig
from ..nn import LSTM, CpuBackend
from ..nn.backends.cpu.products import (
    input_product,
    onednn_weight,
    step_product,
    transposed_gates,
    weight_gradient,
)
from .bench_timing import BASELINE, interleaved_times, step_memory


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    batch: int
    steps: int
    vocab: int


@dataclass(frozen=True)
class StackLayout:
    """The layout the stacks are timed in (the default: time-first, one direction)."""

    batch_first: bool = False
    bidirectional: bool = False

    @property
    def default(self) -> bool:
        return not (self.batch_first or self.bidirectional)


SHAPES = {
    "ptb-small": Shape(2, 200, 20, 35, 10_000),
    "ptb-medium": Shape(2, 650, 40, 35, 10_000),
    "char": Shape(1, 1000, 32, 100, 50),
    "tiny": Shape(1, 32, 4, 10, 100),  # a quick check that the command works
}

# variant name -> the `ModelConfig` settings of its regularizer (None: torch.nn.LSTM itself)
VARIANTS: dict[str, Optional[dict]] = {
    "torch.nn.LSTM": None,
    "ours, no noise": {},
    "gaussian shared": {"noise": NoiseConfig("gaussian", "shared", sigma=1.0)},
    "dropconnect shared": {"noise": NoiseConfig("dropconnect", "shared", p=0.5)},
    "gaussian flipout": {"noise": NoiseConfig("gaussian", "flipout", sigma=1.0)},
    "dropconnect flipout": {"noise": NoiseConfig("dropconnect", "flipout", p=0.5)},
    "gaussian independent": {"noise": NoiseConfig("gaussian", "independent", sigma=1.0)},
    "recurrent dropout 0.25": {"dropout_cell": 0.25},
    "zoneout 0.5 / 0.05": {"zoneout_cell": 0.5, "zoneout_hidden": 0.05},
}


def independent_fits(shape: Shape, device: torch.device, limit_gib: float,
                     directions: int = 1) -> bool:
    """Per-sequence weights (plus their gradients) for every layer under ``limit_gib``."""
    floats = 3 * directions * shape.layers * shape.batch * 4 * shape.hidden * shape.hidden
    return floats * 4 / 2**30 <= limit_gib


def build_stack(settings: Optional[dict], shape: Shape,
                layout: StackLayout = StackLayout()) -> nn.Module:
    """The variant's LSTM stack alone, as its language model has it, in ``layout``."""
    stack = build_language_model(settings, shape).lstm
    if layout.default:
        return stack
    flags = dict(batch_first=layout.batch_first, bidirectional=layout.bidirectional)
    if settings is None:
        return nn.LSTM(shape.hidden, shape.hidden, shape.layers, **flags)
    first = stack.layers[0]  # the regularizers its language model gave every layer
    masks = first.cell_masks
    return LSTM(shape.hidden, shape.hidden, shape.layers, **flags,
                recurrent_noise=first.recurrent_noise, input_noise=first.input_noise,
                hidden_dropout=first.hidden_dropout.p, cell_dropout=masks.cell_dropout,
                cell_dropout_per_step=masks.per_step, zoneout_cell=masks.zoneout_cell,
                zoneout_hidden=masks.zoneout_hidden)


def build_language_model(settings: Optional[dict], shape: Shape) -> LanguageModel:
    config = ModelConfig(vocab_size=shape.vocab, embedding_size=shape.hidden,
                         hidden_size=shape.hidden, num_layers=shape.layers, tie_weights=True,
                         **(settings or {}))
    model = LanguageModel(config)
    if settings is None:  # same model around the fused kernel: nn.LSTM has the same signature
        model.lstm = nn.LSTM(shape.hidden, shape.hidden, shape.layers)
    return model


def lm_step(model: nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    """One training step of ``model`` on ``tokens``: forward, loss, backward, SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, _ = model(tokens[:-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten()).backward()
        optimizer.step()
    return run


def measure_shape(shape: Shape, device: torch.device, warmup: int, repeats: int,
                  independent_limit_gib: float,
                  layout: StackLayout = StackLayout()) -> list[dict]:
    """Time and memory of every variant on one shape; outside the default layout, of the
    stack alone (the language-model step figures are None)."""
    torch.manual_seed(0)
    directions = 2 if layout.bidirectional else 1
    variants = {name: settings for name, settings in VARIANTS.items()
                if "independent" not in name
                or independent_fits(shape, device, independent_limit_gib, directions)}
    x = torch.randn(shape.steps, shape.batch, shape.hidden, device=device)
    if layout.batch_first:
        x = x.transpose(0, 1).contiguous()
    tokens = torch.randint(0, shape.vocab, (shape.steps + 1, shape.batch), device=device)
    stacks = {name: build_stack(settings, shape, layout).to(device).train()
              for name, settings in variants.items()}
    models = ({name: build_language_model(settings, shape).to(device).train()
               for name, settings in variants.items()} if layout.default else {})

    def stack_task(name: str) -> Callable[[], None]:
        def run() -> None:
            y, _ = stacks[name](x)
            y.sum().backward()
        return run

    stack_times = interleaved_times({n: stack_task(n) for n in variants}, device, warmup, repeats)
    if not layout.default:
        memory = {name: step_memory(stack_task(name), device) for name in variants}
        return [{"variant": name, "stack_ms": 1000 * stack_times.median(name),
                 "stack_ratio": stack_times.ratio(name), "step_ms": None, "step_ratio": None,
                 "memory_mib": memory[name] / 2**20,
                 "memory_ratio": memory[name] / memory["ours, no noise"]}
                for name in variants]
    step_times = interleaved_times({n: lm_step(models[n], tokens) for n in variants}, device,
                                   warmup, repeats)
    memory = {name: step_memory(lm_step(models[name], tokens), device) for name in variants}
    rows = []
    for name in variants:
        rows.append({
            "variant": name,
            "stack_ms": 1000 * stack_times.median(name),
            "stack_ratio": stack_times.ratio(name),
            "step_ms": 1000 * step_times.median(name),
            "step_ratio": step_times.ratio(name),
            "memory_mib": memory[name] / 2**20,
            "memory_ratio": memory[name] / memory["ours, no noise"],
        })
    return rows


def measure_products(shape: Shape, device: torch.device, warmup: int, repeats: int) -> dict:
    """One per-step product (B × H) @ (H × 4H) by ``torch.mm`` and by `step_product` (oneDNN
    on CPU, with its weight prepacked or not as the recurrence does), and the matrix
    products of a whole flipout stack fwd+bwd without anything else, against the
    ``torch.nn.LSTM`` stack in the same run: the floor of the flipout stack's ratio."""
    t, b, h = shape.steps, shape.batch, shape.hidden
    rand = lambda *size: torch.randn(*size, device=device)  # noqa: E731
    u, g, weight = rand(b, h), rand(b, 4 * h), rand(4 * h, h)
    layer_backend = CpuBackend()  # its defaults: oneDNN on, the prepacking threshold
    backward_prepacked = t >= layer_backend.prepack_backward_min_steps
    forward = step_product(weight, b)
    backward = step_product(weight.t(), b, backward_prepacked)
    flat_x, flat_g, w_ih, bias = rand(t * b, h), rand(t * b, 4 * h), rand(4 * h, h), rand(4 * h)
    fused = nn.LSTM(h, h, shape.layers).to(device)
    x = rand(t, b, h)

    def flipout_products() -> None:
        for layer in range(shape.layers):
            input_product(flat_x, w_ih, bias)  # of all steps
            products = [step_product(weight, b), step_product(weight, b)]  # W̄ and ΔŴ
            for _ in range(t):
                for product in products:
                    product(u)
            products = [step_product(weight.t(), b, backward_prepacked) for _ in range(2)]
            for _ in range(t):
                for product in products:
                    product(g)
            grads, inputs = flat_g.view(t, b, -1), flat_x.view(t, b, -1)
            grads_t = transposed_gates(grads, inputs)  # gradients as the recurrence does them:
            for _ in range(2):  # W_ih and W̄
                weight_gradient(grads, inputs, grads_t=grads_t)
            weight_gradient(grads, inputs)  # ΔŴ
            if layer > 0:  # the stack's input needs no gradient
                step_product(w_ih.t(), t * b, prepacked=False)(flat_g)

    def fused_stack() -> None:
        y, _ = fused(x)
        y.sum().backward()

    def steps_of(product: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:  # one window's worth, so that a repeat is not microseconds long
            for _ in range(t):
                product()
        return run

    singles = {
        "mm u Wᵀ": lambda: torch.mm(u, weight.t()), "step_product u Wᵀ": lambda: forward(u),
        "mm g W": lambda: torch.mm(g, weight), "step_product g W": lambda: backward(g),
        "prepack W": lambda: onednn_weight(weight, b),
    }
    tasks = {name: steps_of(task) for name, task in singles.items()}
    tasks.update({"flipout products": flipout_products, BASELINE: fused_stack})
    times = interleaved_times(tasks, device, warmup, repeats)  # like the main table
    return {"us": {name: 1e6 * times.median(name) / t for name in singles},
            "flipout_products_ms": 1000 * times.median("flipout products"),
            "torch_stack_ms": 1000 * times.median(BASELINE),
            "floor_ratio": times.ratio("flipout products"),
            "prepacked": onednn_weight(weight, b) is not None}


def format_products(result: dict) -> str:
    lines = ["| one per-step product | µs |", "|---|---:|"]
    lines += [f"| {name} | {us:.0f} |" for name, us in result["us"].items()]
    lines.append(
        "\nMatrix products alone of a flipout stack fwd+bwd: "
        f"{result['flipout_products_ms']:.1f} ms"
        f" = {result['floor_ratio']:.2f}x the whole torch.nn.LSTM stack "
        f"({result['torch_stack_ms']:.1f} ms; oneDNN prepacking "
        f"{'on' if result['prepacked'] else 'off: plain torch.mm'}).")
    return "\n".join(lines)


def format_table(shape_name: str, rows: list[dict], device: torch.device,
                 layout: StackLayout = StackLayout()) -> str:
    memory_label = "peak MiB" if device.type == "cuda" else "saved MiB"
    flags = [name for name in ("batch_first", "bidirectional") if getattr(layout, name)]
    lines = [
        f"### {shape_name}: {SHAPES[shape_name]}"
        + (f", {' + '.join(flags)} (stack alone)" if flags else ""),
        "",
        "| variant | stack fwd+bwd ms | x nn.LSTM | LM step ms | x nn.LSTM "
        f"| {memory_label} | x no noise |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        step = ("— | —" if r["step_ms"] is None
                else f"{r['step_ms']:.1f} | {r['step_ratio']:.2f}")
        lines.append(
            f"| {r['variant']} | {r['stack_ms']:.1f} | {r['stack_ratio']:.2f} | {step} "
            f"| {r['memory_mib']:.1f} | {r['memory_ratio']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # the command line is the one entry point; this module calls down
    sys.exit("`python -m lm_flipout.experiments.bench` is now `lm-flipout bench` (or "
             "`python -m lm_flipout bench`), with the same options.")
