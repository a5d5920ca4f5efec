"""lm_flipout: LSTM language models regularized with structured weight noise (flipout)."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``lm_flipout.load_pretrained``, imported on first use so that the package (and the
    command line's --help) loads without torch."""
    if name == "load_pretrained":
        from .pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'lm_flipout' has no attribute {name!r}")
