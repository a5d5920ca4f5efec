"""The tokenized-corpus cache: keyed by content and tokenizer settings, atomic, self-healing."""

import os
from pathlib import Path

import pytest
import torch

from lm_flipout.data import DataConfig, load_corpus
from lm_flipout.data import cache as cache_mod
from lm_flipout.data import corpus as corpus_mod
from lm_flipout.data.cache import atomic_torch_save, load_torch


def make_cfg(tmp_path: Path, **kw) -> DataConfig:
    root = tmp_path / "corpus"
    if not root.exists():
        root.mkdir()
        (root / "train.txt").write_text("a b a\nc\n")
        (root / "valid.txt").write_text("a c\n")
        (root / "test.txt").write_text("b\n")
    return DataConfig(path=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def no_build(*args, **kwargs):
    pytest.fail("corpus was rebuilt instead of read from the cache")


def test_second_load_reads_cache(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    first = load_corpus(cfg)
    assert Path(first.cache_path).is_file()
    assert Path(first.cache_path).parent == tmp_path / "cache"
    monkeypatch.setattr(corpus_mod, "_build", no_build)
    second = load_corpus(cfg)
    assert second.vocab == first.vocab == ["<eos>", "<unk>", "a", "b", "c"]
    assert second.splits["train"].tokens.tolist() == [2, 3, 2, 0, 4, 0]
    assert (second.splits["train"].n_chars, second.splits["train"].n_words) == (8, 6)


def test_changed_file_is_rebuilt(tmp_path):
    cfg = make_cfg(tmp_path)
    first = load_corpus(cfg)
    (tmp_path / "corpus" / "valid.txt").write_text("b b\n")
    second = load_corpus(cfg)
    assert second.cache_path != first.cache_path
    assert second.splits["valid"].tokens.tolist() == [3, 3, 0]


def test_tokenizer_settings_change_key_batching_settings_do_not(tmp_path):
    base = load_corpus(make_cfg(tmp_path)).cache_path
    assert load_corpus(make_cfg(tmp_path, min_freq=2)).cache_path != base
    assert load_corpus(make_cfg(tmp_path, vocab_size=3)).cache_path != base
    assert load_corpus(make_cfg(tmp_path, tokenizer="char")).cache_path != base
    cfg = make_cfg(tmp_path, bptt=7, batch_size=3, variable_bptt=True)
    assert load_corpus(cfg).cache_path == base


def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path):
    cfg = make_cfg(tmp_path)
    path = load_corpus(cfg).cache_path
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # truncated
    again = load_corpus(cfg)
    assert again.splits["train"].tokens.tolist() == [2, 3, 2, 0, 4, 0]
    assert load_torch(path)["splits"]["train"]["tokens"].tolist() == [2, 3, 2, 0, 4, 0]


def test_one_flipped_byte_in_the_cached_tokens_is_caught_and_rebuilt(tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    good = load_corpus(cfg)
    path = Path(good.cache_path)
    data = bytearray(path.read_bytes())
    tokens = good.splits["train"].tokens.numpy().tobytes()  # stored raw inside the archive
    at = data.find(tokens)
    assert at > 0 and data.find(tokens, at + 1) == -1
    data[at] ^= 0x01  # token 2 becomes token 3: still a valid id, so nothing else notices
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = load_corpus(cfg)
    assert again.splits["train"].tokens.tolist() == good.splits["train"].tokens.tolist()
    notices = [r.getMessage() for r in caplog.records if "checksum" in r.getMessage()]
    assert len(notices) == 1 and str(path) in notices[0] and "\n" not in notices[0]
    assert load_torch(str(path))["splits"]["train"]["tokens"].tolist() == [2, 3, 2, 0, 4, 0]


def test_cache_with_other_key_is_ignored(tmp_path):
    cfg = make_cfg(tmp_path)
    path = load_corpus(cfg).cache_path
    payload = load_torch(path)
    payload["key"] = "0" * 64
    payload["splits"]["train"]["tokens"] = torch.tensor([4, 4, 4])
    atomic_torch_save(path, payload)  # a valid checksum: the key alone makes it foreign
    assert load_corpus(cfg).splits["train"].tokens.tolist() == [2, 3, 2, 0, 4, 0]


def test_half_written_tmp_file_is_never_read(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    good = load_corpus(cfg)
    os.unlink(good.cache_path)
    # A process killed before the rename leaves only a temporary file, here one that even
    # holds a complete (but wrong) payload: it must not be read.
    payload = corpus_mod._payload(good, corpus_mod.cache_paths(cfg, corpus_mod.read_splits(cfg))[0])
    payload["splits"]["train"]["tokens"] = torch.tensor([4, 4, 4, 4])
    torch.save(payload, Path(good.cache_path).parent / f".{Path(good.cache_path).name}.abc.tmp")
    assert load_corpus(cfg).splits["train"].tokens.tolist() == [2, 3, 2, 0, 4, 0]


def test_interrupted_write_leaves_no_cache_file(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)

    def killed(obj, f):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        load_corpus(cfg)
    assert os.listdir(tmp_path / "cache") == []  # no final file, temporary removed
    monkeypatch.undo()
    assert load_corpus(cfg).splits["valid"].tokens.tolist() == [2, 4, 0]
