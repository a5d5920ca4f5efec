"""``lm-flipout evaluate CHECKPOINT [--split ...]``: score a trained checkpoint on a split
(``python evaluate.py`` is the same command)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from . import add_threads_option, fail, parse_in_any_order

PROG = "lm-flipout evaluate"

EPILOG = """examples:
  {prog} checkpoints/quickstart/best.pt                     # test split, batch 1
  {prog} checkpoints/quickstart/best.pt --split valid --batch-size 10
  {prog} checkpoints/quickstart/best.pt --mc-samples 10     # Monte-Carlo averaging

  {prog} checkpoints/quickstart/best.pt --data-path ~/data/ptb   # the data moved

Prints a JSON object (split, ppl, bpc, tokens, and word_ppl for non-word tokenizers; bpc and
word_ppl only where no token became <unk>, else a note says why; the scoring's seconds and
its thread choice) and writes it beside the
checkpoint as <checkpoint>.<split>[.bsN][.mcK].json (bsN when --batch-size is given). Data
and model are rebuilt from the config stored in the checkpoint; a split whose text changed
since training is refused unless --allow-changed-data, and a checkpoint whose contents no
longer match the checksum stored in it unless --allow-corrupt-checkpoint (the result is then
marked "checkpoint_corrupt": true)."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the evaluate command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a trained checkpoint (perplexity, bits per character).",
        epilog=EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a best.pt or last.pt written by training")
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="evaluation batch size (default: the recipe's data.test_batch_size, "
                             "1 unless set, for test; data.eval_batch_size for valid)")
    parser.add_argument("--mc-samples", type=int, default=0, metavar="K",
                        help="average the predicted probabilities of K noise samples "
                             "(default: 0, mean weights)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    add_threads_option(parser)
    parser.add_argument("--data-path", metavar="DIR",
                        help="where the data lives now (sets data.path; default: the stored "
                             "recipe's)")
    parser.add_argument("--allow-changed-data", action="store_true",
                        help="score a split whose text changed since training (warns; not "
                             "comparable)")
    parser.add_argument("--allow-corrupt-checkpoint", action="store_true",
                        help="score a checkpoint whose contents no longer match their "
                             "checksum (warns; the result is marked)")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="where the data lives, e.g. data.test_file=FILE or "
                             "data.cache_dir=DIR")
    return parser


def parse_args(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The command line, checked; options in any order."""
    parser = build_parser(prog)
    args = parse_in_any_order(parser, argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.mc_samples < 0:
        parser.error(f"--mc-samples must be 0 or more, got {args.mc_samples}")
    return args


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv, prog)
    try:
        from ..atomic import atomic_write
        from ..training import evaluate_checkpoint
        from ..training.run_dir import strict_json

        overrides = args.overrides + ([f"data.path={json.dumps(args.data_path)}"]
                                     if args.data_path else [])
        result = evaluate_checkpoint(args.checkpoint, args.split, args.batch_size,
                                     args.mc_samples, args.device, overrides,
                                     args.allow_changed_data, threads=args.threads,
                                     allow_corrupt=args.allow_corrupt_checkpoint)
        threads = result["threads"]
        print(f"scored {args.split} in {result['seconds']:.1f} s on {threads['threads']} "
              f"thread{'s' if threads['threads'] > 1 else ''} ({threads['how']})",
              file=sys.stderr)
        text = strict_json(result)
        print(text)
        suffix = (f".{args.split}" + (f".bs{args.batch_size}" if args.batch_size else "")
                  + (f".mc{args.mc_samples}" if args.mc_samples else "") + ".json")
        out = Path(args.checkpoint).with_suffix(suffix)
        try:
            with atomic_write(out) as handle:
                handle.write(text.encode() + b"\n")
        except OSError as err:
            raise UserError(f"The result was printed but could not be written to {out} "
                            f"({err.strerror or err}). Check that the folder is writable."
                            ) from None
    except UserError as error:
        return fail(error)
    return 0
