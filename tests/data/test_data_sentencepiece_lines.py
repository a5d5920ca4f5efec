"""SentencePiece on a corpus whose lines exceed its sentence limit: such lines are cut at
spaces for training the pieces, and every line is still encoded whole."""

from __future__ import annotations

import random

import pytest

from lm_flipout.data import DataConfig, load_corpus
from lm_flipout.data.sp_tokenizer import MAX_SENTENCE_BYTES, training_sentences

pytest.importorskip("sentencepiece")


def test_training_sentences_cut_at_spaces_below_the_limit():
    assert training_sentences("ab cd ef gh".split(), 5) == ["ab cd", "ef gh"]
    assert training_sentences(["abcdefghij", "x"], 4) == ["abcd", "efgh", "ij x"]
    assert training_sentences(["\u00e9" * 3], 4) == ["\u00e9\u00e9", "\u00e9"]  # 2 bytes each
    words = [random.Random(0).choice(["a", "bb", "ccc"]) for _ in range(2000)]
    parts = training_sentences(words, 100)
    assert " ".join(parts) == " ".join(words)
    assert all(len(p.encode()) <= 100 for p in parts)


def test_a_corpus_of_only_overlong_lines_trains_and_encodes_every_line(tmp_path):
    rng = random.Random(0)
    words = "the cat sat on a mat and dog ran to big red box".split()
    long_lines = [" ".join(rng.choice(words) for _ in range(20000)) for _ in range(3)]
    assert all(len(line) > MAX_SENTENCE_BYTES for line in long_lines)
    (tmp_path / "train.txt").write_text("\n".join(long_lines) + "\n")
    (tmp_path / "valid.txt").write_text("the cat sat\n")
    (tmp_path / "test.txt").write_text("a dog ran\n")
    cfg = DataConfig(source="files", path=str(tmp_path), tokenizer="sentencepiece",
                     sp_vocab_size=25, sp_byte_fallback=False, cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg)
    eos = corpus.vocab.index("<eos>")
    assert corpus.splits["train"].tokens.tolist().count(eos) == 3  # each line whole
    assert corpus.decode(corpus.splits["train"].tokens).splitlines() == long_lines


def test_a_long_single_line_trains_on_a_bounded_sample_of_short_sentences(
        tmp_path, monkeypatch, capsys):
    """A training file without line breaks: the trainer sees short sentences, no more text
    than the sample bound, drawn from the whole file; progress is reported."""
    import sentencepiece

    from lm_flipout.data import sp_tokenizer

    rng = random.Random(1)
    words = "the cat sat on a mat and dog ran to big red box".split()
    line = " ".join(rng.choice(words) + str(i // 5000) for i in range(40_000))  # ~200 kB
    (tmp_path / "train.txt").write_text(line)
    (tmp_path / "valid.txt").write_text("the0 cat0\n")
    (tmp_path / "test.txt").write_text("a0 dog0\n")
    seen: list[str] = []
    real_train = sentencepiece.SentencePieceTrainer.train

    def train(**kwargs):
        seen.extend(kwargs.pop("sentence_iterator"))
        return real_train(sentence_iterator=iter(seen), **kwargs)

    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", train)
    monkeypatch.setattr(sp_tokenizer, "SAMPLE_BYTES", 50_000)
    cfg = DataConfig(source="files", path=str(tmp_path), tokenizer="sentencepiece",
                     sp_vocab_size=30, sp_byte_fallback=False, cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg)
    sizes = [len(s.encode()) for s in seen]
    assert max(sizes) <= sp_tokenizer.TRAINING_SENTENCE_BYTES and 40_000 < sum(sizes) <= 50_000
    assert any(s.split()[-1].endswith("7") for s in seen)  # from the end of the line too
    err = capsys.readouterr().err
    assert f"from {len(seen):,} sentences" in err and "an even sample of the 0.2 MiB" in err
    assert corpus.decode(corpus.splits["train"].tokens).splitlines() == [line]
