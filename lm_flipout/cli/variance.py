"""``lm-flipout variance CHECKPOINT [options]``: parse and check the flags, run the
gradient-variance study (`lm_flipout.experiments.variance`) and write its outputs."""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import UserError
from ..experiments.variance.gradients import load_frozen_model
from ..experiments.variance.outputs import (
    log_to_wandb,
    plot,
    print_summary,
    write_csv,
    write_slopes,
)
from ..experiments.variance.statistics import SUB_BATCH, summarize
from ..experiments.variance.study import VarianceSettings, run_variance
from ..nn.noise import ESTIMATORS
from . import fail, parse_in_any_order

PROG = "lm-flipout variance"


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


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the variance command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Gradient variance of layer 1's W_h against batch size for shared, flipout "
                    "and independent multiplicative Gaussian noise (paper Figure 1c).")
    parser.add_argument("checkpoint", help="best.pt or last.pt written by training")
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
    return parser


def parse_args(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The command line, unchecked; options in any order."""
    return parse_in_any_order(build_parser(prog), argv)


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


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status (2 for a user error)."""
    args = parse_args(argv, prog)
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
        write_slopes(summary, config, out / "slopes.json")
        title = (f"Layer-1 $W_h$ gradient variance, σ={settings.sigma:g}, "
                 f"R={settings.repeats} draws, {Path(args.checkpoint).name}")
        plot(rows, out / "variance.png", title)
        if args.wandb_mode != "disabled":
            log_to_wandb(out, args.wandb_mode, config, summary, out / "variance.png")
    except UserError as err:
        return fail(err)
    print_summary(out, summary)
    return 0
