#!/usr/bin/env python
"""Train an LSTM language model from a YAML recipe: the same command as
``lm-flipout train``. See `python train.py --help`."""

import sys

from lm_flipout.cli import exit_with, train


def parse_args(argv: list[str]):
    return train.parse_args(argv, prog="train.py")


def main(argv: list[str]) -> int:
    return train.main(argv, prog="train.py")


if __name__ == "__main__":
    exit_with(lambda: main(sys.argv[1:]))
