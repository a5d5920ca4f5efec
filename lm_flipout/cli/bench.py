"""``lm-flipout bench``: speed and memory of the perturbed LSTM against ``torch.nn.LSTM``
(the measurements are in `lm_flipout.experiments.bench`)."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from ..experiments import bench, bench_compiled
from ..experiments.bench import SHAPES
from . import parse_in_any_order

PROG = "lm-flipout bench"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the bench command."""
    parser = argparse.ArgumentParser(prog=prog, description=bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--shapes", default="ptb-small,ptb-medium,char",
                        help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--independent-limit-gib", type=float, default=1.0,
                        help="skip the independent estimator where its weights exceed this")
    parser.add_argument("--compile", action="store_true",
                        help="instead of the main table: the compiled reference path against "
                        "torch.nn.LSTM, the eager backends and the eager reference, with "
                        "compile times and per-step operation counts")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    return parser


def parse_args(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The command line, checked."""
    parser = build_parser(prog)
    args = parse_in_any_order(parser, argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")
    return args


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point: measure every shape, print the tables and write the JSON file."""
    args = parse_args(argv, prog)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "command": " ".join([prog, *argv]), "shapes": {}}
    for name in args.shapes.split(","):
        if args.compile:
            rows = bench_compiled.measure_compiled(SHAPES[name], device, args.warmup,
                                                   args.repeats)
            results.setdefault("compiled", {})[name] = rows
            print(bench_compiled.format_compiled(name, SHAPES[name], rows), "\n", flush=True)
            continue
        rows = bench.measure_shape(SHAPES[name], device, args.warmup, args.repeats,
                                   args.independent_limit_gib)
        results["shapes"][name] = rows
        print(bench.format_table(name, rows, device), "\n", flush=True)
        products = bench.measure_products(SHAPES[name], device, args.warmup, args.repeats)
        results.setdefault("products", {})[name] = products
        print(bench.format_products(products), "\n", flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0
