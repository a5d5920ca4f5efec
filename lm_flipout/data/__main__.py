"""``python -m lm_flipout.data``: points to ``lm-flipout data``; the command line is the one
entry point, and this package only calls down."""

import sys

if __name__ == "__main__":
    sys.exit("`python -m lm_flipout.data` is now `lm-flipout data` (or "
             "`python -m lm_flipout data`), with the same arguments.")
