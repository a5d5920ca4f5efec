"""A JSON-ready summary of a corpus (what `python -m lm_flipout.data stats` prints)."""

from __future__ import annotations

from typing import Any

from lm_flipout.data.corpus import Corpus


def corpus_stats(corpus: Corpus) -> dict[str, Any]:
    """Tokenizer, vocabulary size, cache path and per-split tokens/characters/words."""
    return {
        "tokenizer": corpus.tokenizer,
        "vocab_size": corpus.vocab_size,
        "cache_path": corpus.cache_path,
        "splits": {
            name: {"tokens": split.n_tokens, "characters": split.n_chars, "words": split.n_words}
            for name, split in corpus.splits.items()
        },
    }
