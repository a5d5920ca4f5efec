"""The command line: ``lm-flipout SUBCOMMAND`` (``python -m lm_flipout``), one module per
subcommand, and the helpers they share."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence

from ..errors import UserError


def fail(error: UserError) -> int:
    """Print a user error as one wrapped paragraph (no traceback); exit status 2."""
    text = textwrap.fill(str(error), width=100, break_long_words=False, break_on_hyphens=False)
    print(f"error: {text}", file=sys.stderr)
    return 2


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

