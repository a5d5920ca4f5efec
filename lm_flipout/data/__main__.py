"""``python -m lm_flipout.data stats|synthetic|fetch``: the older spelling of
``lm-flipout data`` (`lm_flipout.cli.data`)."""

import sys

from ..cli.data import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m lm_flipout.data"))
