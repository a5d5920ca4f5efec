"""Penn Treebank ($LM_FLIPOUT_DATA/ptb): the standard word-level counts, and character
counts that agree across tokenizers. Skipped when PTB is absent."""

import pytest

from helpers import local_ptb
from lm_flipout.data import DataConfig, corpus_stats, load_corpus

PTB = local_ptb()
pytestmark = pytest.mark.skipif(PTB is None, reason="no Penn Treebank in $LM_FLIPOUT_DATA/ptb")


def test_ptb_word_level_counts(tmp_path):
    corpus = load_corpus(DataConfig(path=str(PTB), cache_dir=str(tmp_path)))
    stats = corpus_stats(corpus)
    assert stats["vocab_size"] == 10_000
    splits = ("train", "valid", "test")
    assert [stats["splits"][s]["tokens"] for s in splits] == [929_589, 73_760, 82_430]
    assert [stats["splits"][s]["words"] for s in splits] == [929_589, 73_760, 82_430]
    assert corpus.vocab.count("<unk>") == 1  # PTB's own <unk> is the unknown token
    assert corpus.decode(corpus.splits["valid"].tokens[:15]) == (
        "consumers may want to move their telephones a little closer to the tv set\n"
    )


def test_ptb_char_ptb_counts_agree_with_words(tmp_path):
    corpus = load_corpus(DataConfig(path=str(PTB), cache_dir=str(tmp_path), tokenizer="char",
                                    char_ptb=True))
    train = corpus.splits["train"]
    assert train.n_words == 929_589  # same words as the word-level corpus
    assert train.n_tokens == train.n_chars  # one token per character (incl. `_` and newline)
    assert corpus.vocab[:3] == ["<eos>", "<unk>", "_"]
