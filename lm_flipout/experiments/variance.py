"""Gradient variance against batch size for shared, flipout and independent weight noise
(Wen et al. 2018, Figure 1c; paper-notes §1 and §4).

    python -m lm_flipout.experiments.variance runs/ptb/best.pt --batch-sizes 1,2,4,...,4096

A trained model is frozen (eval mode: every dropout off) and multiplicative Gaussian noise
``W = W̄ ∘ (1 + σE)`` is put on the first layer's recurrent matrix only. One *draw* is a
mini-batch of random training windows plus one noise sample; its gradient of the mean
per-sequence loss w.r.t. W̄_h is taken, and the per-weight variance of that gradient over
the draws, averaged over each gate block (i, f, g, o), is the curve's value.

How a draw is computed (the paper's protocol for large batches): the N sequences are run
as sub-batches of at most 64 that share the draw's noise. ``shared`` uses one ΔW for the
whole draw; ``flipout`` one base ΔŴ for the whole draw and fresh sign vectors for every
sequence (so every sub-batch has independent signs); ``independent`` a ΔW per sequence
(run one sequence at a time, so only up to ``--max-independent`` sequences). The summed
gradients of the sub-batches accumulate into the gradient of the mean loss.

Batches are nested: the first N sequences of a draw of the largest size N_max are the
draw at batch size N, so one pass of N_max sequences gives every batch size (the values at
different N are then correlated, which does not bias any of them). Draw r uses the same data
windows for every estimator (common random numbers), so the curves differ by the noise only.

Confidence intervals: jackknife over the R draws, on the log scale (see `block_variance`).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..cli import fail
from ..errors import UserError
from ..model import LanguageModel
from ..nn import LayerSamples, NoiseSample
from ..nn.noise import ESTIMATORS

GATES = ("input", "forget", "cell", "output")  # torch.nn.LSTM's row blocks i, f, g, o
SUB_BATCH = 64
LINE_STYLES = {"shared": ":", "flipout": "-", "independent": "--"}
COLORS = {"shared": "tab:red", "flipout": "tab:blue", "independent": "tab:green"}
CSV_FIELDS = ("estimator", "batch_size", "gate", "variance", "ci_low", "ci_high")

# Sums the per-sequence losses of sequences [start, end) under ``sample`` and returns the
# gradient of that sum w.r.t. the perturbed weight's mean W̄.
ChunkGradient = Callable[[int, int, NoiseSample], Tensor]


# ------------------------------------------------------------------ noise for one draw


class DrawNoise:
    """The noise of one draw: multiplicative Gaussian unit noise ``U`` (ΔW = W̄ ∘ U) shared
    by the whole draw, and per-sequence samples for each sub-batch of it.

    shared: every sub-batch gets U; flipout: U with fresh Rademacher signs r_n, s_n per
    sequence (paper eq. 4); independent: a fresh U_n per sequence.
    """

    def __init__(
        self, estimator: str, sigma: float, shape: tuple[int, int], generator: torch.Generator
    ) -> None:
        if estimator not in ESTIMATORS:
            raise UserError(
                f"estimator {estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}."
            )
        self.estimator, self.sigma, self.shape, self.generator = estimator, sigma, shape, generator
        self.base = None if estimator == "independent" else self._unit(shape)

    def _unit(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.generator).mul_(self.sigma)

    def _signs(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, 2, shape, generator=self.generator).float().mul_(2).sub_(1)

    def chunk(self, batch_size: int) -> NoiseSample:
        """The sample for the next ``batch_size`` sequences of the draw."""
        out_features, in_features = self.shape
        if self.estimator == "independent":
            return NoiseSample(self._unit((batch_size, out_features, in_features)))
        if self.estimator == "shared":
            return NoiseSample(self.base)
        return NoiseSample(
            self.base,
            out_signs=self._signs((batch_size, out_features)),
            in_signs=self._signs((batch_size, in_features)),
        )


def chunk_bounds(batch_sizes: Sequence[int], sub_batch: int = SUB_BATCH) -> list[tuple[int, int]]:
    """Consecutive [start, end) sub-batches covering the largest batch size, each at most
    ``sub_batch`` long, with every batch size falling on a boundary."""
    largest = max(batch_sizes)
    edges = sorted(set(batch_sizes) | set(range(0, largest, sub_batch)))
    return list(itertools.pairwise(edges))


def nested_mean_gradients(
    chunk_gradient: ChunkGradient,
    noise: DrawNoise,
    batch_sizes: Sequence[int],
    sub_batch: int = SUB_BATCH,
    on_chunk: Optional[Callable[[], None]] = None,
) -> Tensor:
    """One draw: the gradient of the mean loss over the first N sequences for every N in
    ``batch_sizes`` (ascending), stacked as (len(batch_sizes), *weight shape)."""
    wanted = set(batch_sizes)
    total: Optional[Tensor] = None
    means = {}
    for start, end in chunk_bounds(batch_sizes, sub_batch):
        grad = chunk_gradient(start, end, noise.chunk(end - start)).detach().double()
        total = grad if total is None else total + grad
        if end in wanted:
            means[end] = (total / end).float()
        if on_chunk is not None:
            on_chunk()
    return torch.stack([means[n] for n in batch_sizes])


# ------------------------------------------------------------------ variance and its CI


@dataclass
class VarianceEstimate:
    """Per-weight variance averaged over a block, with a confidence interval."""

    variance: float
    ci_low: float
    ci_high: float


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t (Cornish-Fisher expansion in 1/dof around the normal quantile;
    within 0.2% for dof >= 3, which is all a confidence interval here needs)."""
    z = torch.special.ndtri(torch.tensor(p, dtype=torch.float64)).item()
    return (z + (z**3 + z) / (4 * dof)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * dof**4))


def block_variance(draws: Tensor, level: float = 0.95) -> VarianceEstimate:
    """The unbiased per-weight variance over R draws (R, ...) averaged over the weights,
    with a jackknife confidence interval.

    The interval is ``v · exp(±t · se)``, se the leave-one-draw-out jackknife standard error
    of log v and t Student's quantile with R−1 degrees of freedom. (A percentile bootstrap
    covers the truth far less often than asked for at the R ≈ 10 affordable here, since a
    resample's variance is biased low by (R−1)/R.) Each weighted variance is
    ``(Σ_r w_r K_rr − wᵀKw) / P · c`` with K the Gram matrix of the centred draws, P the
    number of weights and c the unbiasing factor, so the jackknife costs R quadratic forms.
    """
    repeats = draws.shape[0]
    if repeats < 3:
        raise UserError(
            f"a variance with a confidence interval needs at least 3 draws, got {repeats}."
        )
    flat = draws.reshape(repeats, -1).double()
    flat = flat - flat.mean(0)  # variance is shift-invariant; centring avoids cancellation
    gram = flat @ flat.t()

    def averaged(weights: Tensor, kept: int) -> Tensor:  # weights (B, R), rows sum to 1 → (B,)
        quadratic = torch.einsum("br,rs,bs->b", weights, gram, weights)
        return (weights @ gram.diagonal() - quadratic) * kept / (kept - 1) / flat.shape[1]

    point = averaged(torch.full((1, repeats), 1.0 / repeats, dtype=gram.dtype), repeats)[0].item()
    leave_one_out = (1 - torch.eye(repeats, dtype=gram.dtype)) / (repeats - 1)
    partial = averaged(leave_one_out, repeats - 1)
    if point <= 0 or bool((partial <= 0).any()):  # identical draws: no spread to measure
        return VarianceEstimate(point, math.nan, math.nan)
    logs = partial.log()
    std_error = math.sqrt((repeats - 1) / repeats * ((logs - logs.mean()) ** 2).sum().item())
    half_width = student_t_quantile(0.5 + level / 2, repeats - 1) * std_error
    return VarianceEstimate(point, point * math.exp(-half_width), point * math.exp(half_width))


def loglog_slope(batch_sizes: Sequence[int], variances: Sequence[float]) -> float:
    """Least-squares slope of log(variance) against log(batch size)."""
    x = torch.log(torch.tensor(batch_sizes, dtype=torch.float64))
    y = torch.log(torch.tensor(variances, dtype=torch.float64))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# ------------------------------------------------------------------ the language model


@dataclass
class VarianceSettings:
    """What `run_variance` measures; the command-line flags."""

    batch_sizes: tuple[int, ...] = tuple(2**k for k in range(13))
    repeats: int = 10
    estimators: tuple[str, ...] = ESTIMATORS
    sigma: float = 1.0
    sub_batch: int = SUB_BATCH
    max_independent: int = 256
    bptt: Optional[int] = None  # window length; None = the recipe's data.bptt
    seed: int = 0


def load_frozen_model(path: str) -> tuple[LanguageModel, Tensor, dict[str, Any]]:
    """Model (eval mode, only layer 1's W_h trainable), training tokens and the stored
    config, rebuilt from a checkpoint written by train.py."""
    from ..evaluation import load_trained_run

    state, _, corpus, model = load_trained_run(path)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.lstm.layers[0].weight_hh.requires_grad_(True)
    cut = state["config"].get("data", {}).get("train_tokens")  # the text it was trained on
    return model, corpus.splits["train"].tokens[:cut], state["config"]


def random_windows(tokens: Tensor, count: int, length: int, generator: torch.Generator) -> Tensor:
    """``count`` windows of ``length + 1`` tokens at uniform random offsets: (length+1, count)."""
    if tokens.numel() < length + 2:
        raise UserError(
            f"the training split has {tokens.numel()} tokens, too few for windows of "
            f"{length + 1}; use a smaller --bptt."
        )
    starts = torch.randint(0, tokens.numel() - length, (count,), generator=generator)
    return tokens[starts[None, :] + torch.arange(length + 1)[:, None]]


def lm_chunk_gradient(model: LanguageModel, windows: Tensor) -> ChunkGradient:
    """Gradient of Σ_n (mean token NLL of sequence n) w.r.t. layer 1's W̄_h, for columns
    [start, end) of ``windows``, with the sample on layer 1's W_h and no other noise.

    The decoder dominates the cost, so its backward is written out: the summed cross-entropy
    has logit gradient softmax − one-hot, which goes back to the LSTM output through the
    decoder matrix; no log-softmax graph is kept.
    """
    weight = model.lstm.layers[0].weight_hh
    clean = [LayerSamples() for _ in model.lstm.layers[1:]]

    def lstm_output(inputs: Tensor, sample: NoiseSample) -> Tensor:
        samples = [LayerSamples(recurrent=sample), *clean]
        return model.lstm(model.embedding(inputs), None, samples)[0]

    def gradient(start: int, end: int, sample: NoiseSample) -> Tensor:
        inputs, targets = windows[:-1, start:end], windows[1:, start:end]
        if sample.independent:
            # independent: a fused pass per sequence beats per-sequence weights in one batch
            # (a step loop over (B, 4H, H) tensors) by about 10x on a CPU
            hidden = torch.cat([lstm_output(inputs[:, n : n + 1], NoiseSample(sample.unit[n]))
                                for n in range(end - start)], dim=1)
        else:
            hidden = lstm_output(inputs, sample)  # (T, B, H)
        with torch.no_grad():
            logits = model.decoder(hidden)  # (T, B, V)
            probs = logits.sub_(logits.amax(-1, keepdim=True)).exp_()
            probs.div_(probs.sum(-1, keepdim=True))
            probs.scatter_add_(-1, targets[..., None], probs.new_full((*targets.shape, 1), -1.0))
            grad_hidden = (probs @ model.decoder.weight).div_(inputs.shape[0])
        (grad,) = torch.autograd.grad(hidden, weight, grad_hidden)
        return grad

    return gradient


def run_variance(
    model: LanguageModel,
    tokens: Tensor,
    settings: VarianceSettings,
    bptt: int,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """CSV rows (estimator, batch_size, gate, variance, ci_low, ci_high) for every estimator,
    batch size and gate block of layer 1's W_h."""
    from tqdm import tqdm

    weight = model.lstm.layers[0].weight_hh
    hidden = model.lstm.layers[0].hidden_size
    plans = {}
    for estimator in settings.estimators:
        cap = settings.max_independent if estimator == "independent" else max(settings.batch_sizes)
        sizes = [n for n in settings.batch_sizes if n <= cap]
        if sizes:
            plans[estimator] = sizes
    total = sum(len(chunk_bounds(s, settings.sub_batch)) for s in plans.values()) * settings.repeats
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, desc="sub-batches", unit="batch", disable=not progress,
              file=sys.stderr) as bar:
        for estimator, sizes in plans.items():
            draws = []
            for draw in range(settings.repeats):
                # draw r reads the same windows under every estimator (common random numbers)
                data_rng = torch.Generator().manual_seed(_seed(settings.seed, 0, draw))
                windows = random_windows(tokens, max(settings.batch_sizes), bptt, data_rng)
                noise_rng = torch.Generator().manual_seed(
                    _seed(settings.seed, 1 + ESTIMATORS.index(estimator), draw))
                noise = DrawNoise(estimator, settings.sigma, tuple(weight.shape), noise_rng)
                bar.set_postfix(estimator=estimator, draw=draw + 1)
                draws.append(nested_mean_gradients(
                    lm_chunk_gradient(model, windows), noise, sizes, settings.sub_batch,
                    on_chunk=bar.update,
                ))
            stacked = torch.stack(draws)  # (R, sizes, 4H, H)
            for k, size in enumerate(sizes):
                for gate, block in zip(GATES, stacked[:, k].split(hidden, dim=1)):
                    estimate = block_variance(block)
                    rows.append({"estimator": estimator, "batch_size": size, "gate": gate,
                                 **asdict(estimate)})
    return rows


def _seed(*parts: int) -> int:
    """A generator seed from a tuple of small integers."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**62)
    return value


# ------------------------------------------------------------------ summaries and outputs


def _curve(
    rows: Sequence[dict[str, Any]], estimator: str, gate: str
) -> tuple[list[int], list[float]]:
    picked = sorted((r["batch_size"], r["variance"]) for r in rows
                    if r["estimator"] == estimator and r["gate"] == gate)
    return [n for n, _ in picked], [v for _, v in picked]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fitted log-log slopes and the ratios the paper's claims rest on, per gate block.

    ``slope``: over every batch size; ``slope_top``: over the largest four batch sizes
    (three doublings for a power-of-two list); ``shared_over_flipout``: at the largest batch
    size both have; ``flipout_over_independent``: at every batch size independent has;
    ``batch1_ci_overlap``: whether all estimators' intervals at the smallest batch overlap.
    """
    estimators = sorted({r["estimator"] for r in rows}, key=ESTIMATORS.index)
    summary: dict[str, Any] = {"slope": {}, "slope_top": {}, "slope_top_batch_sizes": {}}
    for estimator in estimators:
        summary["slope"][estimator], summary["slope_top"][estimator] = {}, {}
        for gate in GATES:
            sizes, variances = _curve(rows, estimator, gate)
            if len(sizes) >= 2:
                summary["slope"][estimator][gate] = loglog_slope(sizes, variances)
            if len(sizes) >= 4:
                summary["slope_top"][estimator][gate] = loglog_slope(sizes[-4:], variances[-4:])
                summary["slope_top_batch_sizes"][estimator] = sizes[-4:]
    lookup = {(r["estimator"], r["batch_size"], r["gate"]): r for r in rows}

    def ratios(top: str, bottom: str, sizes: Sequence[int]) -> dict[str, dict[str, float]]:
        return {gate: {str(n): lookup[top, n, gate]["variance"]
                       / lookup[bottom, n, gate]["variance"] for n in sizes}
                for gate in GATES}

    def sizes_of(estimator: str) -> set[int]:
        return {n for (e, n, _) in lookup if e == estimator}

    if {"shared", "flipout"} <= set(estimators):
        largest = max(sizes_of("shared") & sizes_of("flipout"))
        summary["shared_over_flipout"] = ratios("shared", "flipout", [largest])
    if {"flipout", "independent"} <= set(estimators):
        common = sorted(sizes_of("flipout") & sizes_of("independent"))
        summary["flipout_over_independent"] = ratios("flipout", "independent", common)
    smallest = min(n for (_, n, _) in lookup)
    overlap = {}
    for gate in GATES:
        present = [lookup[e, smallest, gate] for e in estimators if (e, smallest, gate) in lookup]
        overlap[gate] = max(r["ci_low"] for r in present) <= min(r["ci_high"] for r in present)
    summary["batch1_ci_overlap"] = {"batch_size": smallest, **overlap}
    return summary


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per (estimator, batch size, gate)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in CSV_FIELDS})


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Log-log variance curves, one panel per gate block, with confidence bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimators = sorted({r["estimator"] for r in rows}, key=ESTIMATORS.index)
    figure, axes = plt.subplots(1, len(GATES), figsize=(13, 3.4), sharex=True)
    for axis, gate in zip(axes, GATES):
        for estimator in estimators:
            picked = sorted((r for r in rows if r["estimator"] == estimator and r["gate"] == gate),
                            key=lambda r: r["batch_size"])
            sizes = [r["batch_size"] for r in picked]
            axis.plot(sizes, [r["variance"] for r in picked], LINE_STYLES[estimator],
                      color=COLORS[estimator], label=estimator, linewidth=1.6)
            axis.fill_between(sizes, [r["ci_low"] for r in picked], [r["ci_high"] for r in picked],
                              color=COLORS[estimator], alpha=0.15, linewidth=0)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(f"{gate} gate block of $W_h$", fontsize=10)
        axis.set_xlabel("batch size")
        axis.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("gradient variance (per weight)")
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def log_to_wandb(out_dir: Path, mode: str, config: dict[str, Any], summary: dict[str, Any],
                 figure: Path) -> None:
    """Log the slopes and the figure as a W&B run (files under ``out_dir/wandb``)."""
    from ..config import WandbConfig
    from ..tracking import Tracker

    settings = WandbConfig(mode=mode, group="gradient_variance", name=out_dir.name)
    flat = {f"{kind}/{est}/{gate}": value for kind in ("slope", "slope_top")
            for est, gates in summary[kind].items() for gate, value in gates.items()}
    with Tracker(out_dir, {"variance": config}, settings) as tracker:
        tracker.log({"event": "variance", **flat}, step=0)
        tracker.summary(flat)
        if tracker.wandb_run is not None:
            import wandb

            tracker.wandb_run.log({"variance/figure": wandb.Image(str(figure)), "step": 0})


# ------------------------------------------------------------------ command line


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,2,4,8' or '1,2,4,...,4096' ('...' continues the ratio of the two numbers before it
    up to the number after it) → strictly increasing positive integers."""
    parts = [p.strip() for p in text.split(",")]
    example = "e.g. 1,2,4,8 or 1,2,4,...,4096"
    try:
        if "..." in parts:
            at = parts.index("...")
            if at < 2 or at != len(parts) - 2:
                raise UserError(f"--batch-sizes {text!r}: '...' needs at least two numbers before "
                                f"it and exactly one after it, {example}.")
            head, last = [int(p) for p in parts[:at]], int(parts[-1])
            ratio = head[-1] // head[-2] if head[-2] > 0 else 0
            if ratio < 2 or head[-1] != head[-2] * ratio:
                raise UserError(f"--batch-sizes {text!r}: '...' continues a whole-number ratio "
                                f"such as a doubling, {example}.")
            sizes = head
            while sizes[-1] * ratio <= last:
                sizes.append(sizes[-1] * ratio)
            if sizes[-1] != last:
                sizes.append(last)
        else:
            sizes = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--batch-sizes {text!r} must be positive integers separated by commas, "
                        f"{example}.") from None
    if len(sizes) < 2 or sizes[0] < 1 or any(b <= a for a, b in itertools.pairwise(sizes)):
        raise UserError(f"--batch-sizes {text!r} must list at least two strictly increasing "
                        f"positive integers, {example}.")
    return tuple(sizes)


def parse_estimators(text: str) -> tuple[str, ...]:
    """'shared,flipout' → ('shared', 'flipout'), in the canonical order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise UserError(
            f"--estimators {text!r}: unknown estimator "
            f"{', '.join(map(repr, unknown)) or '(none)'}; use a comma list of "
            f"{', '.join(ESTIMATORS)}."
        )
    return tuple(e for e in ESTIMATORS if e in names)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lm_flipout.experiments.variance",
        description="Gradient variance of layer 1's W_h against batch size for shared, flipout "
                    "and independent multiplicative Gaussian noise (paper Figure 1c).")
    parser.add_argument("checkpoint", help="best.pt or last.pt written by train.py")
    parser.add_argument("--batch-sizes", default="1,2,4,...,4096",
                        help="comma list; '...' continues a doubling (default 1,2,4,...,4096)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="independent draws of data and noise per estimate (default 10)")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS),
                        help="comma list of shared, flipout, independent (default: all)")
    parser.add_argument("--sigma", type=float, default=1.0,
                        help="std of the multiplicative Gaussian noise (default 1)")
    parser.add_argument("--max-independent", type=int, default=256,
                        help="largest batch size for the (memory-hungry) independent estimator")
    parser.add_argument("--sub-batch", type=int, default=SUB_BATCH,
                        help="sequences per forward/backward pass (default 64, as in the paper)")
    parser.add_argument("--bptt", type=int, default=None,
                        help="window length (default: the checkpoint's data.bptt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="variance", help="output directory (default ./variance)")
    parser.add_argument("--wandb-mode", choices=("offline", "online", "disabled"),
                        default="offline", help="W&B logging of the figure (default offline)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> VarianceSettings:
    """Check the flags and turn them into `VarianceSettings`."""
    for name in ("repeats", "max_independent", "sub_batch", "bptt", "threads"):
        value = getattr(args, name)
        least = 3 if name == "repeats" else 1
        if value is not None and value < least:
            raise UserError(f"--{name.replace('_', '-')}={value} must be at least {least}.")
    if not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise UserError(f"--sigma={args.sigma} must be a finite number >= 0.")
    return VarianceSettings(
        batch_sizes=parse_batch_sizes(args.batch_sizes), repeats=args.repeats,
        estimators=parse_estimators(args.estimators), sigma=args.sigma,
        sub_batch=args.sub_batch, max_independent=args.max_independent, bptt=args.bptt,
        seed=args.seed,
    )


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        model, tokens, recipe = load_frozen_model(args.checkpoint)
        bptt = settings.bptt or recipe["data"]["bptt"]
        rows = run_variance(model, tokens, settings, bptt, progress=not args.no_progress)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = summarize(rows)
        config = {"checkpoint": str(args.checkpoint), **asdict(settings), "bptt": bptt,
                  "model": {k: recipe["model"][k] for k in ("hidden_size", "num_layers")}}
        write_csv(rows, out / "variance.csv")
        report = json.dumps({"settings": config, **summary}, indent=2)
        (out / "slopes.json").write_text(report + "\n", encoding="utf-8")
        title = (f"Layer-1 $W_h$ gradient variance, σ={settings.sigma:g}, "
                 f"R={settings.repeats} draws, {Path(args.checkpoint).name}")
        plot(rows, out / "variance.png", title)
        if args.wandb_mode != "disabled":
            log_to_wandb(out, args.wandb_mode, config, summary, out / "variance.png")
    except UserError as err:
        return fail(err)
    print(f"wrote {out / 'variance.csv'}, {out / 'variance.png'}, {out / 'slopes.json'}")
    for estimator, gates in summary["slope"].items():
        shown = ", ".join(f"{gate} {value:.3f}" for gate, value in gates.items())
        print(f"slope {estimator}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
