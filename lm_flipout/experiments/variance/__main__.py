"""``python -m lm_flipout.experiments.variance`` points to the command, ``lm-flipout variance``
(`lm_flipout.cli.variance`): the command line is the one entry point, and nothing under
`lm_flipout.experiments` imports it."""

import sys

if __name__ == "__main__":
    sys.exit("`python -m lm_flipout.experiments.variance` is now `lm-flipout variance` (or "
             "`python -m lm_flipout variance`), with the same arguments.")
