"""Tokenized corpora from tiny local files, checked against hand-computed ids and counts."""

import math
from pathlib import Path

import pytest
import torch

from lm_flipout.data import (
    DataConfig,
    Split,
    bits_per_char,
    check_vocab,
    load_corpus,
    word_perplexity,
)
from lm_flipout.errors import DataError

TRAIN = "the cat sat\nthe dog\n\nthe cat ran\n"
VALID = "the bird sat\n"
TEST = "dog  cat\r\nran"  # extra space, CRLF, no final newline


def write_corpus(root: Path, train: str = TRAIN, valid: str = VALID, test: str = TEST) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{name}.txt").write_text(text, encoding="utf-8", newline="")
    return root


def cfg_for(tmp_path: Path, **kw) -> DataConfig:
    kw.setdefault("path", str(write_corpus(tmp_path / "corpus")))
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def ids(corpus, split):
    return corpus.splits[split].tokens.tolist()


def test_word_tokenizer_vocab_ids_and_counts(tmp_path):
    c = load_corpus(cfg_for(tmp_path))
    # counts in train: <eos> 4, the 3, cat 2, then sat/dog/ran once each in order of appearance
    assert c.vocab == ["<eos>", "<unk>", "the", "cat", "sat", "dog", "ran"]
    assert c.vocab_size == 7
    assert ids(c, "train") == [2, 3, 4, 0, 2, 5, 0, 0, 2, 3, 6, 0]
    assert ids(c, "valid") == [2, 1, 4, 0]  # "bird" is unseen -> <unk>
    assert ids(c, "test") == [5, 3, 0, 6, 0]
    assert c.splits["train"].tokens.dtype == torch.long
    # words = words + one <eos> per line (the empty line counts); chars = normalized line + newline
    assert (c.splits["train"].n_words, c.splits["train"].n_chars) == (12, 12 + 8 + 1 + 12)
    assert (c.splits["valid"].n_words, c.splits["valid"].n_chars) == (4, 13)
    assert (c.splits["test"].n_words, c.splits["test"].n_chars) == (5, 8 + 4)
    assert c.decode(c.splits["train"].tokens) == "the cat sat\nthe dog\n\nthe cat ran\n"
    assert c.decode([5, 3]) == "dog cat"


def test_word_vocab_cap_and_min_freq(tmp_path):
    capped = load_corpus(cfg_for(tmp_path, vocab_size=4))
    assert capped.vocab == ["<eos>", "<unk>", "the", "cat"]
    assert ids(capped, "train") == [2, 3, 1, 0, 2, 1, 0, 0, 2, 3, 1, 0]
    frequent = load_corpus(cfg_for(tmp_path, min_freq=2))
    assert frequent.vocab == ["<eos>", "<unk>", "the", "cat"]


def test_existing_unk_token_is_reused(tmp_path):
    path = write_corpus(tmp_path / "c", train="a <unk> a\n", valid="b\n", test="a\n")
    c = load_corpus(cfg_for(tmp_path, path=str(path)))
    assert c.vocab == ["<eos>", "<unk>", "a"]
    assert ids(c, "train") == [2, 1, 2, 0]
    assert ids(c, "valid") == [1, 0]


def test_char_tokenizer(tmp_path):
    path = write_corpus(tmp_path / "c", train="ab a\n", valid="ba  c\n", test="a\n")
    c = load_corpus(cfg_for(tmp_path, path=str(path), tokenizer="char"))
    # counts: a 2, then b, ' ', <eos> once
    assert c.vocab == ["<eos>", "<unk>", "a", "b", " "]
    assert ids(c, "train") == [2, 3, 4, 2, 0]
    assert ids(c, "valid") == [3, 2, 4, 1, 0]  # whitespace normalized, 'c' unseen
    tr = c.splits["train"]
    assert (tr.n_tokens, tr.n_chars, tr.n_words) == (5, 5, 3)
    assert c.decode(c.splits["train"].tokens) == "ab a\n"


def test_char_ptb_converts_words_and_reads_char_form(tmp_path):
    words = write_corpus(tmp_path / "w", train="ab a\nb\n", valid="a b\n", test="ba\n")
    chars = write_corpus(tmp_path / "ch", train="a b _ a\nb\n", valid="a _ b\n", test="b a\n")
    from_words = load_corpus(cfg_for(tmp_path, path=str(words), tokenizer="char", char_ptb=True))
    from_chars = load_corpus(cfg_for(tmp_path, path=str(chars), tokenizer="char", char_ptb=True))
    assert from_words.vocab == ["<eos>", "<unk>", "a", "b", "_"]
    assert ids(from_words, "train") == [2, 3, 4, 2, 0, 3, 0]
    assert ids(from_words, "valid") == [2, 4, 3, 0]
    for name in ("train", "valid", "test"):
        a, b = from_words.splits[name], from_chars.splits[name]
        assert a.tokens.tolist() == b.tokens.tolist()
        assert (a.n_chars, a.n_words) == (b.n_chars, b.n_words)
    # train: "ab a" = 4 chars + newline, "b" = 1 + newline; words: 2+1 and 1+1
    assert (from_chars.splits["train"].n_chars, from_chars.splits["train"].n_words) == (7, 5)
    assert from_words.decode(from_words.splits["train"].tokens) == "ab a\nb\n"


def test_sentencepiece_model_trained_cached_and_reused(tmp_path, monkeypatch):
    sentences = ["the cat sat on the mat", "a dog ran far away", "hello world", "the dog sat"]
    train = "\n".join(sentences * 20) + "\n"
    path = write_corpus(tmp_path / "c", train=train, valid="the cat ran\n", test="hello dog\n")
    cfg = cfg_for(
        tmp_path, path=str(path), tokenizer="sentencepiece", sp_model_type="bpe", sp_vocab_size=30,
        sp_byte_fallback=False,
    )
    c = load_corpus(cfg)
    assert c.vocab[:2] == ["<unk>", "<eos>"] and c.vocab_size == 30
    assert Path(c.sp_model_path).is_file() and Path(c.sp_model_path).parent == tmp_path / "cache"
    assert ids(c, "train").count(1) == 80  # one <eos> per line
    assert c.decode(c.splits["valid"].tokens) == "the cat ran\n"
    assert (c.splits["valid"].n_chars, c.splits["valid"].n_words) == (12, 4)

    # A changed validation file reuses the trained model: training must not run again.
    from lm_flipout.data import sp_tokenizer

    monkeypatch.setattr(sp_tokenizer, "train_model", lambda *a: pytest.fail("model retrained"))
    (path / "valid.txt").write_text("the mat\n")
    c2 = load_corpus(cfg)
    assert c2.sp_model_path == c.sp_model_path and c2.cache_path != c.cache_path
    assert c2.decode(c2.splits["valid"].tokens) == "the mat\n"


def test_sentencepiece_vocab_too_large(tmp_path):
    path = write_corpus(tmp_path / "c", train="ab ba\n" * 5, valid="ab\n", test="ba\n")
    with pytest.raises(DataError, match=r"data\.sp_vocab_size=500") as err:
        load_corpus(cfg_for(tmp_path, path=str(path), tokenizer="sentencepiece", sp_vocab_size=500))
    assert "train.txt" in str(err.value) and "Lower data.sp_vocab_size" in str(err.value)


def test_missing_split_file(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "test.txt").unlink()
    with pytest.raises(DataError, match="test split file .*test.txt does not exist") as err:
        load_corpus(cfg_for(tmp_path, path=str(root)))
    assert "data.path" in str(err.value)
    with pytest.raises(DataError, match=r"data\.train_file"):
        load_corpus(cfg_for(tmp_path, path=str(root), train_file=str(root / "nope.txt")))


def test_no_path_configured(tmp_path):
    with pytest.raises(DataError, match=r"neither data\.path nor data\.train_file"):
        load_corpus(DataConfig(cache_dir=str(tmp_path)))


def test_explicit_files_override_directory(tmp_path):
    root = write_corpus(tmp_path / "c")
    other = tmp_path / "other_valid.txt"
    other.write_text("cat cat\n")
    c = load_corpus(cfg_for(tmp_path, path=str(root), valid_file=str(other)))
    assert ids(c, "valid") == [3, 3, 0]


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split(tmp_path, split):
    texts = {"train": TRAIN, "valid": VALID, "test": TEST, split: " \n\n"}
    root = write_corpus(tmp_path / "c", **texts)
    with pytest.raises(DataError, match=f"{split} split .*{split}.txt.* is empty"):
        load_corpus(cfg_for(tmp_path, path=str(root)))


def test_non_utf8_names_file_and_offset(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "valid.txt").write_bytes(b"the cat\nsat \xe9t\xe9\n")
    msg = r"valid\.txt is not valid UTF-8: byte 0xe9 at byte offset 12 \(line 2\)"
    with pytest.raises(DataError, match=msg):
        load_corpus(cfg_for(tmp_path, path=str(root)))


def test_utf8_text_and_bom(tmp_path):
    root = write_corpus(tmp_path / "c", train="\ufeffcafé é\n", valid="é\n", test="café\n")
    c = load_corpus(cfg_for(tmp_path, path=str(root)))
    assert c.vocab == ["<eos>", "<unk>", "café", "é"]
    assert c.splits["train"].n_chars == len("café é") + 1


def test_check_vocab(tmp_path):
    c = load_corpus(cfg_for(tmp_path))
    check_vocab(c, list(c.vocab), "ck.pt")  # same vocabulary: no error
    other = list(c.vocab[:-1]) + ["zebra", "extra"]
    msg = r"ck\.pt was trained with a vocabulary of 8 tokens.* has 7 tokens; 2 entries differ"
    with pytest.raises(DataError, match=msg) as err:
        check_vocab(c, other, "ck.pt")
    assert "index 6: checkpoint 'zebra', corpus 'ran'" in str(err.value)
    assert "same data settings" in str(err.value)
    with pytest.raises(DataError, match="no valid vocabulary"):
        check_vocab(c, None, "ck.pt")


def test_bits_per_char_and_word_perplexity():
    split = Split("valid", torch.zeros(8, dtype=torch.long), n_chars=10, n_words=4)
    assert bits_per_char(10 * math.log(2) * 1.5, split) == pytest.approx(1.5)
    assert word_perplexity(4 * math.log(3.0), split) == pytest.approx(3.0)
    # NLL summed over 4 of the 8 tokens is scaled to the whole split (x2)
    assert bits_per_char(5 * math.log(2) * 1.5, split, n_scored=4) == pytest.approx(1.5)
    assert word_perplexity(2 * math.log(3.0), split, n_scored=4) == pytest.approx(3.0)
