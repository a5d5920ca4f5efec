"""``python -m lm_flipout.experiments.variance``: the older spelling of
``lm-flipout variance`` (`lm_flipout.cli.variance`)."""

import sys

from ...cli.variance import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m lm_flipout.experiments.variance"))
