"""``lm-flipout generate CHECKPOINT``: write text with a trained model, token by token as it
is drawn (the checkpoint may also be a folder written by ``lm-flipout export``)."""

from __future__ import annotations

import argparse
import math
import secrets
import sys
import warnings
from collections.abc import Sequence

from ..errors import UserError
from . import fail, parse_in_any_order

PROG = "lm-flipout generate"

EPILOG = """examples:
  {prog} checkpoints/quickstart/best.pt --prompt "the cat" --tokens 50 --seed 1
  {prog} checkpoints/quickstart/best.pt --top-p 0.9 --temperature 0.8
  {prog} checkpoints/quickstart/best.pt --top-k 1              # the most likely token each step
  {prog} checkpoints/quickstart/best.pt --sample-weights       # one noise sample, held
  {prog} models/quickstart --prompt "the"                      # a folder from lm-flipout export

Prints the prompt as the model reads it (with the run's own tokenizer: words it does not know
become <unk>, with a warning) and then the generated text as it comes. The model reads the
prompt as the start of a line; each <eos> it writes is a newline. The same --seed gives the same
text; without one a seed is drawn and shown on stderr. --temperature divides the logits, then
--top-k keeps the k most likely tokens and --top-p the smallest set of most likely tokens whose
probability reaches p, before sampling."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the generate command."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Generate text with a trained language model.",
        epilog=EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a best.pt or last.pt written by training, or a "
                                           "folder written by lm-flipout export")
    parser.add_argument("--prompt", default="", metavar="TEXT",
                        help="the text to continue (default: none, a new line)")
    parser.add_argument("--tokens", type=int, default=100, metavar="N",
                        help="how many tokens to write (default: 100)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="above 0; below 1 is more conservative (default: 1)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="sample among the K most likely tokens (default: all)")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="sample among the most likely tokens holding probability P, in "
                             "(0, 1] (default: all)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sampling (default: a fresh one, shown on stderr)")
    parser.add_argument("--sample-weights", action="store_true",
                        help="draw one sample of the model's noise (weights, flipout signs, "
                             "dropout masks) and hold it for the whole text (default: the mean "
                             "weights)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    return parser


def parse_args(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The command line, checked; options in any order."""
    parser = build_parser(prog)
    args = parse_in_any_order(parser, argv)
    if args.tokens < 0:
        parser.error(f"--tokens must be 0 or more, got {args.tokens}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        parser.error(f"--temperature must be a number above 0, got {args.temperature}; use "
                     "--top-k 1 for the most likely token at every step")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be a positive integer, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be a probability in (0, 1], got {args.top_p}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        parser.error(f"--seed must be an integer from 0 to 2**63-1, got {args.seed}")
    return args


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv, prog)
    text = ""
    try:
        from ..training import select_device
        from .trained_model import load_model_source

        lm = load_model_source(args.checkpoint, select_device(args.device))
        seed = args.seed
        if seed is None:
            seed = secrets.randbits(31)
            print(f"seed {seed} (pass --seed {seed} to write this text again)", file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _warn
            text = lm.generate(args.prompt, args.tokens, seed, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p,
                               sample_weights=args.sample_weights, on_text=_write)
    except UserError as error:
        return fail(error)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    if not text.endswith("\n"):
        _write("\n")
    return 0
