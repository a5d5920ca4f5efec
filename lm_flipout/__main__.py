"""``python -m lm_flipout COMMAND ...``: the same as the ``lm-flipout`` command."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m lm_flipout"))
