"""The command line: ``lm-flipout SUBCOMMAND`` (``python -m lm_flipout``), one module per
subcommand, and the helpers they share."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Union

from ..errors import UserError


def fail(error: UserError) -> int:
    """Print a user error as one wrapped paragraph (no traceback); exit status 2."""
    text = textwrap.fill(str(error), width=100, break_long_words=False, break_on_hyphens=False)
    print(f"error: {text}", file=sys.stderr)
    return 2


def thread_setting(text: str) -> Union[int, str]:
    """The value of ``--threads``: ``auto`` or a whole number >= 1."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a thread count; use auto or a whole "
                                     "number >= 1")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N|auto`` for a command that runs a model on the CPU."""
    parser.add_argument("--threads", type=thread_setting, default="auto", metavar="N|auto",
                        help="CPU threads: a number, or auto (default): the fastest count, "
                             "timed on a few steps of this model (OMP_NUM_THREADS, when set, "
                             "is used as given)")


INTERRUPTED_AT_START = "\nInterrupted during start-up; nothing was changed."


def exit_with(main: Callable[[], int]) -> None:
    """``sys.exit(main())``; Ctrl-C while the libraries load ends in one line and status 130."""
    try:
        status = main()
    except KeyboardInterrupt:
        print(INTERRUPTED_AT_START, file=sys.stderr)
        status = 130
    sys.exit(status)


def parse_in_any_order(parser: argparse.ArgumentParser,
                       argv: Sequence[str]) -> argparse.Namespace:
    """Parse with options and positionals (``key=value`` overrides) mixed in any order, so
    that ``RECIPE --resume optim.lr=1`` and ``RECIPE optim.lr=1 --resume`` mean the same."""
    return parser.parse_intermixed_args(list(argv))

