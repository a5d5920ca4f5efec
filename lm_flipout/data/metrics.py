"""Tokenizer-independent scores from a model's summed negative log-likelihood.

    bpc      = NLL_split / (n_chars * ln 2)
    word PPL = exp(NLL_split / n_words)

NLL_split is the total NLL in nats over all of a split's tokens. Batching drops a few
tokens (the first of each stream, the trimmed tail), so when `n_scored` (the number of
tokens the NLL was summed over) is given, the total is scaled to the whole split:
NLL_split = total_nll * split.n_tokens / n_scored, i.e. the mean NLL per token times the
split's token count. For the word tokenizer n_tokens == n_words, so the word perplexity is
the usual exp(mean NLL per token)."""

from __future__ import annotations

import math
from typing import Optional

from lm_flipout.data.corpus import Split


def _split_nll(total_nll: float, split: Split, n_scored: Optional[int]) -> float:
    if n_scored is None:
        return float(total_nll)
    if n_scored <= 0:
        raise ValueError(f"n_scored must be positive, got {n_scored}")
    return float(total_nll) * split.n_tokens / n_scored


def bits_per_char(total_nll: float, split: Split, n_scored: Optional[int] = None) -> float:
    """Bits per character of `split` given the summed NLL in nats (see module docstring)."""
    return _split_nll(total_nll, split, n_scored) / (split.n_chars * math.log(2))


def word_perplexity(total_nll: float, split: Split, n_scored: Optional[int] = None) -> float:
    """Word-level perplexity of `split` given the summed NLL in nats (see module docstring)."""
    return math.exp(_split_nll(total_nll, split, n_scored) / split.n_words)
