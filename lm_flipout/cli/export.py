"""``lm-flipout export CHECKPOINT DIR``: write a trained model as a folder others can load
with ``lm_flipout.load_pretrained(DIR)`` (safetensors weights, JSON settings, tokenizer)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import UserError
from . import fail, parse_in_any_order

PROG = "lm-flipout export"

EPILOG = """examples:
  {prog} checkpoints/quickstart/best.pt models/quickstart
  {prog} checkpoints/quickstart/best.pt models/quickstart --force   # replace an export

Writes DIR/config.json (the model's settings and the tokenizer's), DIR/model.safetensors (the
weights; a last.pt taken while NT-ASGD averaged gives the averaged ones) and the tokenizer:
DIR/vocab.json, or DIR/tokenizer.model for SentencePiece. No optimizer or training state is
kept. Then, in Python:

  import lm_flipout
  lm = lm_flipout.load_pretrained("models/quickstart")
  print(lm.perplexity("some text"), lm.generate("the", tokens=20, seed=1))"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the export command."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Export a trained checkpoint as a loadable model folder.",
        epilog=EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a best.pt or last.pt written by training")
    parser.add_argument("directory", metavar="DIR", help="the folder to write (new or empty)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty DIR, replacing an earlier export's files")
    return parser


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    args = parse_in_any_order(build_parser(prog), argv)
    try:
        from .trained_model import from_checkpoint

        lm = from_checkpoint(args.checkpoint)
        directory = lm.save(args.directory, force=args.force)
    except UserError as error:
        return fail(error)
    print(f"Exported {args.checkpoint} ({lm.model.num_parameters():,} parameters) to "
          f"{directory}; load it with lm_flipout.load_pretrained({str(directory)!r}).")
    return 0
