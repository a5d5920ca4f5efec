"""Tokens mapped to <unk>: counted per split (tokens and the characters inside them) for
word, char and SentencePiece tokenizers, a literal <unk> of the text counted as text; the
counts survive the cache, and bits per character is defined only where nothing became <unk>."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lm_flipout.data import DataConfig, load_corpus, undefined_char_metrics_note
from lm_flipout.data.cache import atomic_torch_save
from lm_flipout.evaluation import split_metrics

TRAIN = ["the cat sat on the mat <unk>", "the dog sat on the log", "a cat and a dog"]
VALID = ["the cat sat on a zebra <unk>", "the dog ran"]


def write(directory: Path, train: list[str], valid: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train), ("valid", valid), ("test", valid)):
        (directory / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return directory


def corpus(tmp_path: Path, **data):
    path = write(tmp_path / "corpus", TRAIN, VALID)
    return load_corpus(DataConfig(path=str(path), cache_dir=str(tmp_path / "cache"), **data))


def expected_unknowns(kept: set[str], lines: list[str]) -> tuple[int, int]:
    words = [w for line in lines for w in line.split()]
    missing = [w for w in words if w not in kept and w != "<unk>"]
    return len(missing), sum(len(w) for w in missing)


def test_literal_unk_is_text_and_unseen_words_count(tmp_path: Path) -> None:
    full = corpus(tmp_path)
    assert full.splits["train"].covers_text and full.splits["train"].unk_tokens == 0
    # "zebra" and "ran" never occur in train; the literal <unk> is in every vocabulary
    assert (full.splits["valid"].unk_tokens, full.splits["valid"].unk_chars) == (2, 8)
    assert not full.splits["valid"].covers_text


@pytest.mark.parametrize("data", [{"vocab_size": 6}, {"min_freq": 2}])
def test_vocabulary_cuts_count_every_cut_word(tmp_path: Path, data: dict) -> None:
    cut = corpus(tmp_path, **data)
    counts = Counter(w for line in TRAIN for w in line.split() if w != "<unk>")
    if "min_freq" in data:
        kept = {w for w, n in counts.items() if n >= 2}
    else:
        kept = {w for w in cut.vocab}
        assert len(kept) == 6 and kept < set(counts) | {"<eos>", "<unk>"}
    for name, lines in (("train", TRAIN), ("valid", VALID)):
        split = cut.splits[name]
        assert (split.unk_tokens, split.unk_chars) == expected_unknowns(kept, lines)
        assert split.unk_tokens > 0 and not split.covers_text


def test_char_tokenizer_counts_unseen_characters(tmp_path: Path) -> None:
    chars = corpus(tmp_path, tokenizer="char")
    seen = set("".join(TRAIN))
    unseen = [c for line in VALID for c in line if c not in seen]  # z, b, r, r ("zebra", "ran")
    assert chars.splits["valid"].unk_tokens == len(unseen) == chars.splits["valid"].unk_chars
    assert chars.splits["train"].covers_text


def test_sentencepiece_counts_characters_it_does_not_cover(tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    train = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20
    path = write(tmp_path / "sp", train, ["the cat sat on a zq mat", "the dog"])
    sp = load_corpus(DataConfig(path=str(path), cache_dir=str(tmp_path / "cache"),
                                tokenizer="sentencepiece", sp_vocab_size=18,
                                sp_byte_fallback=False))
    valid = sp.splits["valid"]
    assert valid.unk_tokens >= 1 and valid.unk_chars == 2  # "z" and "q" are not covered
    assert sp.splits["train"].covers_text


def test_counts_survive_the_cache_and_old_entries_are_rebuilt(tmp_path: Path) -> None:
    import torch

    first = corpus(tmp_path, vocab_size=6)
    again = corpus(tmp_path, vocab_size=6)
    assert again.cache_path == first.cache_path
    assert again.splits["valid"].unk_chars == first.splits["valid"].unk_chars > 0
    stale = torch.load(first.cache_path, weights_only=True)["content"]
    for entry in stale["splits"].values():  # an entry written before the counts existed
        del entry["unk_tokens"], entry["unk_chars"]
    atomic_torch_save(first.cache_path, stale)  # with a valid checksum: only the keys are old
    rebuilt = corpus(tmp_path, vocab_size=6)
    assert rebuilt.cache_path == first.cache_path
    assert rebuilt.splits["valid"].unk_chars == first.splits["valid"].unk_chars


def test_bpc_and_word_ppl_only_where_defined(tmp_path: Path) -> None:
    cut = corpus(tmp_path, vocab_size=6)
    metrics = split_metrics(10.0, 5, cut.splits["valid"], "valid")
    assert set(metrics) == {"valid_loss", "valid_ppl"}
    note = undefined_char_metrics_note(cut)
    valid = cut.splits["valid"]
    test = cut.splits["test"]
    assert note.startswith(f"Note: {valid.unk_tokens} of {valid.n_tokens} valid and "
                           f"{test.unk_tokens} of {test.n_tokens} test tokens are <unk>")
    assert "data.vocab_size" in note and "\n" not in note
    chars = corpus(tmp_path / "c", tokenizer="char")
    train = chars.splits["train"]
    assert set(split_metrics(10.0, 5, train, "train")) == {
        "train_loss", "train_ppl", "train_bpc", "train_word_ppl"}
    assert undefined_char_metrics_note(chars, ("train",)) is None
