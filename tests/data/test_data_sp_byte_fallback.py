"""SentencePiece with byte fallback (the default): a character the training split lacks is
spelled in UTF-8 bytes, not <unk>, so the test split is encoded whole and bits per character
are defined on it; the option is part of the token cache's key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lm_flipout.data import DataConfig, load_corpus, undefined_char_metrics_note
from lm_flipout.data.corpus import cache_paths
from lm_flipout.data.sources import read_splits
from lm_flipout.data.tokenizers import sentencepiece_text
from lm_flipout.errors import DataError
from lm_flipout.evaluation import split_metrics

pytest.importorskip("sentencepiece")

TRAIN = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20
TEST = "the café sat on a zebra ✓"  # é, z, b, ✓ never occur in the training split


def corpus_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join(TRAIN) + "\n", encoding="utf-8")
    (root / "valid.txt").write_text("the dog ran\n", encoding="utf-8")
    (root / "test.txt").write_text(TEST + "\n", encoding="utf-8")
    return root


def config(tmp_path: Path, **data) -> DataConfig:
    data = {"sp_model_type": "bpe", "sp_vocab_size": 290, **data}
    return DataConfig(path=str(corpus_dir(tmp_path / "corpus")), tokenizer="sentencepiece",
                      cache_dir=str(tmp_path / "cache"), **data)


def test_unseen_characters_are_spelled_in_bytes(tmp_path: Path) -> None:
    corpus = load_corpus(config(tmp_path))
    test = corpus.splits["test"]
    assert test.unk_tokens == 0 and test.covers_text
    pieces = [corpus.vocab[i] for i in test.tokens.tolist()]
    spelled = [p for p in pieces if p.startswith("<0x")]
    # é is two UTF-8 bytes and ✓ three, each its own byte piece; z and b one each
    assert len(spelled) >= sum(len(c.encode("utf-8")) for c in "éz✓b")
    assert corpus.decode(test.tokens) == TEST + "\n"
    assert test.n_chars == len(TEST) + 1  # the newline counts as a character
    assert undefined_char_metrics_note(corpus) is None
    scored = split_metrics(3.0 * test.n_tokens, test.n_tokens, test, "test")
    assert scored["test_bpc"] == pytest.approx(3.0 * test.n_tokens / (test.n_chars * math.log(2)))


def test_without_byte_fallback_they_become_unk_and_the_cache_key_differs(tmp_path: Path) -> None:
    spelled = load_corpus(config(tmp_path))
    unknown = load_corpus(config(tmp_path, sp_byte_fallback=False, sp_vocab_size=40))
    assert unknown.splits["test"].unk_tokens >= 1 and not unknown.splits["test"].covers_text
    assert "data.sp_byte_fallback: true" in undefined_char_metrics_note(unknown)
    raw = read_splits(config(tmp_path))
    keys = [cache_paths(config(tmp_path, sp_byte_fallback=on), raw) for on in (True, False)]
    assert keys[0][1] == spelled.cache_path and keys[0][2] == spelled.sp_model_path
    assert keys[1][1] != keys[0][1] and keys[1][2] != keys[0][2]  # only the option differs


def test_a_vocabulary_too_small_for_the_byte_pieces_says_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_corpus(config(tmp_path, sp_vocab_size=100))
    message = str(caught.value)
    assert "data.sp_vocab_size=100 is too small" in message and "256 byte pieces" in message
    assert "data.sp_byte_fallback: false" in message


def test_sentencepiece_text_joins_byte_pieces_into_characters() -> None:
    pieces = ["\u2581caf", "<0xC3>", "<0xA9>", "\u2581ok"]
    assert sentencepiece_text(pieces) == "café ok"
