#!/usr/bin/env python
"""Score a checkpoint on a split: the same command as ``lm-flipout evaluate``. See
`python evaluate.py --help`."""

import sys

from lm_flipout.cli import evaluate, exit_with


def parse_args(argv: list[str]):
    return evaluate.parse_args(argv, prog="evaluate.py")


def main(argv: list[str]) -> int:
    return evaluate.main(argv, prog="evaluate.py")


if __name__ == "__main__":
    exit_with(lambda: main(sys.argv[1:]))
