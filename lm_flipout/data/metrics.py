"""Tokenizer-independent scores from a model's summed negative log-likelihood.

    bpc      = NLL_split / (n_chars * ln 2)
    word PPL = exp(NLL_split / n_words)

NLL_split is the total NLL in nats over all of a split's tokens. Batching drops a few
tokens (the first of each stream, the trimmed tail), so when `n_scored` (the number of
tokens the NLL was summed over) is given, the total is scaled to the whole split:
NLL_split = total_nll * split.n_tokens / n_scored, i.e. the mean NLL per token times the
split's token count. For the word tokenizer n_tokens == n_words, so the word perplexity is
the usual exp(mean NLL per token).

Both are defined only when the split's tokens account for every character of its text: a
token the tokenizer mapped to `<unk>` (a word cut from the vocabulary, a character that
SentencePiece does not cover) costs one `<unk>` prediction however many characters it
held, so dividing by n_chars or n_words would only rescale the token perplexity. A literal
`<unk>` written in the text (as in PTB) is text and does not count against this."""

from __future__ import annotations

import math
from typing import Optional

from lm_flipout.data.corpus import Corpus, Split


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


# The keys that let each tokenizer spell more of the evaluation text.
UNK_FIX = {
    "word": "data.vocab_size: null and data.min_freq: 1 keep every training word (an unseen "
            "one stays <unk>)",
    "char": "data.vocab_size: null and data.min_freq: 1 keep every training character",
    "sentencepiece": "data.sp_byte_fallback: true spells unseen characters in bytes",
}


def undefined_char_metrics_note(corpus: Corpus, splits: tuple[str, ...] = ("valid", "test")
                                ) -> Optional[str]:
    """One line: why bits per character and word-level perplexity are left out for some of
    `splits` (their <unk> counts) and the key that changes it; None when every one of them
    accounts for every character."""
    parts = [f"{s.unk_tokens:,} of {s.n_tokens:,} {s.name}"
             for s in (corpus.splits[name] for name in splits) if not s.covers_text]
    if not parts:
        return None
    return (f"Note: {' and '.join(parts)} tokens are <unk> to the {corpus.tokenizer} tokenizer, "
            "so bits per character and word perplexity are not reported there; "
            f"{UNK_FIX[corpus.tokenizer]}.")
