"""``lm-flipout COMMAND ...``: the dispatcher of the console command (also
``python -m lm_flipout``). Each command lives in its own module of `lm_flipout.cli` and is
imported only when it runs, so that ``--help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Optional

from .. import __version__
from . import INTERRUPTED_AT_START

COMMANDS = {
    "train": "train a language model from a YAML recipe",
    "recipes": "list the built-in recipes, or copy one to edit",
    "evaluate": "score a trained checkpoint on the valid or test split",
    "generate": "write text with a trained model (streamed as it comes)",
    "export": "write a checkpoint as a folder others load with load_pretrained",
    "compare": "train the unfinished runs of a suite and write its report",
    "tune": "search a recipe's hyperparameters with Optuna (each trial an ordinary run)",
    "data": "corpus statistics, the synthetic corpus, and `data fetch ptb`",
    "bench": "speed and memory of the perturbed LSTM against torch.nn.LSTM",
    "variance": "gradient variance against batch size per estimator (Figure 1c)",
}

EPILOG = """commands:
{commands}

`{prog} COMMAND --help` describes each command. Options and key=value overrides may come in
any order. Run directories and reports are written relative to the current folder; recipes
name public corpora under the data root ($LM_FLIPOUT_DATA, default ~/.cache/lm_flipout/data).

examples:
  {prog} recipes
  {prog} train quickstart
  {prog} data fetch ptb
  {prog} train recipes/quickstart.yaml
  {prog} train recipes/ptb/word_cpu_wd_flipout.yaml --resume optim.lr=10
  {prog} evaluate checkpoints/quickstart/best.pt --split valid
  {prog} generate checkpoints/quickstart/best.pt --prompt "the" --tokens 50 --seed 1
  {prog} export checkpoints/quickstart/best.pt models/quickstart
  {prog} compare recipes/suites/ptb_word_cpu.yaml"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The top-level parser: the command's name (its own arguments are parsed by it)."""
    commands = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=prog,
        description="LSTM language models regularized with structured weight noise (flipout).",
        epilog=EPILOG.format(commands=commands, prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lm-flipout {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND",
                        help=f"one of {', '.join(COMMANDS)}")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "lm-flipout") -> int:
    """Run ``prog COMMAND ARGS``; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser(prog).parse_args(argv[:1])  # --help, --version, or an error
    try:
        module = importlib.import_module(f"{__package__}.{argv[0]}")
        return module.main(argv[1:], prog=f"{prog} {argv[0]}")
    except KeyboardInterrupt:  # Ctrl-C while the libraries load
        print(INTERRUPTED_AT_START, file=sys.stderr)
        return 130
