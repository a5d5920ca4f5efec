"""``python -m lm_flipout.experiments.variance``: see `lm_flipout.experiments.variance.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
