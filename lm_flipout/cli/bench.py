"""``lm-flipout bench``: speed and memory of the perturbed LSTM against ``torch.nn.LSTM``
(the measurements are in `lm_flipout.experiments.bench`)."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..experiments import bench, bench_compiled
from ..experiments.bench import SHAPES
from ..experiments.bench_threads import format_thread_choices, measure_thread_choices
from ..experiments.contention import one_core_busy
from . import parse_in_any_order

PROG = "lm-flipout bench"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the bench command."""
    parser = argparse.ArgumentParser(prog=prog, description=bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda when available (cpu for --contend and "
                             "--threads-table)")
    parser.add_argument("--shapes", default="ptb-small,ptb-medium,char",
                        help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--independent-limit-gib", type=float, default=1.0,
                        help="skip the independent estimator where its weights exceed this")
    parser.add_argument("--batch-first", action="store_true",
                        help="time the stacks on (batch, time, features) input")
    parser.add_argument("--bidirectional", action="store_true",
                        help="time bidirectional stacks")
    parser.add_argument("--compile", action="store_true",
                        help="instead of the main table: the compiled reference path against "
                        "torch.nn.LSTM, the eager backends and the eager reference, with "
                        "compile times and per-step operation counts")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--contend", action="store_true",
                        help="step times at 1 thread, all cores and auto, for torch.nn.LSTM and "
                             "ours, while a helper process keeps one core busy (CPU)")
    parser.add_argument("--threads-table", action="store_true",
                        help="the same table as --contend without the helper process")
    return parser


def parse_args(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The command line, checked."""
    parser = build_parser(prog)
    args = parse_in_any_order(parser, argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if args.device is None:
        on_cpu = args.contend or args.threads_table or not torch.cuda.is_available()
        args.device = "cpu" if on_cpu else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")
    if (args.contend or args.threads_table) and args.device != "cpu":
        parser.error("--contend and --threads-table time CPU threads; use --device cpu")
    return args


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point: measure every shape, print the tables and write the JSON file."""
    args = parse_args(argv, prog)
    device = torch.device(args.device)
    layout = bench.StackLayout(args.batch_first, args.bidirectional)
    results = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "command": " ".join([prog, *argv]), "layout": asdict(layout), "shapes": {}}
    if args.contend:
        with one_core_busy() as helper:
            results["helper_pid"] = helper.pid
            thread_choices(args, device, results, contended=True)
    elif args.threads_table:
        thread_choices(args, device, results, contended=False)
    elif args.compile:
        compiled(args, device, results)
    else:
        all_variants(args, device, results, layout)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


def thread_choices(args: argparse.Namespace, device: torch.device, results: dict,
                   contended: bool) -> None:
    """The thread-choice table of every shape, printed and added to ``results``."""
    results.update(threads="1, all, auto", contended=contended)
    for name in args.shapes.split(","):
        measured = measure_thread_choices(SHAPES[name], device, args.warmup, args.repeats)
        results["shapes"][name] = measured
        print(format_thread_choices(name, SHAPES[name], measured, contended), "\n", flush=True)


def compiled(args: argparse.Namespace, device: torch.device, results: dict) -> None:
    """The compiled reference path's table of every shape, printed and added to ``results``."""
    torch.set_num_threads(args.threads)
    for name in args.shapes.split(","):
        rows = bench_compiled.measure_compiled(SHAPES[name], device, args.warmup, args.repeats)
        results.setdefault("compiled", {})[name] = rows
        print(bench_compiled.format_compiled(name, SHAPES[name], rows), "\n", flush=True)


def all_variants(args: argparse.Namespace, device: torch.device, results: dict,
                 layout: bench.StackLayout) -> None:
    """Every variant's speed and memory, and the matrix products, of every shape."""
    torch.set_num_threads(args.threads)
    for name in args.shapes.split(","):
        rows = bench.measure_shape(SHAPES[name], device, args.warmup, args.repeats,
                                   args.independent_limit_gib, layout)
        results["shapes"][name] = rows
        print(bench.format_table(name, rows, device, layout), "\n", flush=True)
        if not layout.default:  # the products' floor does not depend on the layout
            continue
        products = bench.measure_products(SHAPES[name], device, args.warmup, args.repeats)
        results.setdefault("products", {})[name] = products
        print(bench.format_products(products), "\n", flush=True)
