"""A JSON-ready summary of a corpus (what `lm-flipout data stats` prints)."""

from __future__ import annotations

from typing import Any

from lm_flipout.data.corpus import Corpus
from lm_flipout.user_cache import cache_root


def corpus_stats(corpus: Corpus) -> dict[str, Any]:
    """Tokenizer, vocabulary size, cache path, the toolkit's cache root and per-split
    tokens/characters/words, with the tokens the vocabulary turned into ``<unk>`` and the
    characters of their text."""
    return {
        "tokenizer": corpus.tokenizer,
        "vocab_size": corpus.vocab_size,
        "cache_path": corpus.cache_path,
        "cache_root": str(cache_root()),
        "splits": {
            name: {"tokens": split.n_tokens, "characters": split.n_chars, "words": split.n_words,
                   "unk_tokens": split.unk_tokens, "unk_characters": split.unk_chars}
            for name, split in corpus.splits.items()
        },
    }
