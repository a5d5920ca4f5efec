"""lm_flipout: LSTM language models regularized with structured weight noise (flipout)."""

__version__ = "0.1.0"
