"""The tokenized corpus: vocabulary plus train/valid/test token ids and counts, loaded from
the cache when the split contents and tokenizer settings are unchanged.

Cache file: `<data.cache_dir>/corpus-<tokenizer>-<key>.pt`, where key = sha256 over the
sha256 of each split's content and the tokenizer settings (batching settings are not part
of it). It holds plain tensors, lists, str and int and is read with weights_only=True."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch

import lm_flipout.data.sp_tokenizer as sp_tokenizer
from lm_flipout.data.cache import atomic_torch_save, cache_key, load_torch
from lm_flipout.data.config import DataConfig
from lm_flipout.data.raw import SPLITS, RawSplit
from lm_flipout.data.sources import read_splits
from lm_flipout.data.text import (
    count_chars,
    count_words,
    has_words,
    is_char_ptb_form,
    split_lines,
)
from lm_flipout.data.tokenizers import (
    build_vocab,
    char_tokens,
    decode_ids,
    encode,
    unknown_counts,
    word_tokens,
)
from lm_flipout.errors import DataError

CACHE_FORMAT = 1


@dataclass
class Split:
    """One split: token ids plus the counts that bpc and word perplexity divide by
    (see lm_flipout.data.text for their definition)."""

    name: str
    tokens: torch.Tensor  # 1-D LongTensor of token ids
    n_chars: int  # characters of the normalized text, one newline per line
    n_words: int  # whitespace words plus one <eos> per line
    unk_tokens: int = 0  # tokens the tokenizer mapped to <unk> (a literal <unk> is text)
    unk_chars: int = 0  # characters of the text inside them

    @property
    def covers_text(self) -> bool:
        """Whether the tokens account for every character (nothing became <unk>), so that
        bits per character and word-level perplexity are defined."""
        return self.unk_tokens == 0

    @property
    def n_tokens(self) -> int:
        """Number of tokens (model predictions over the whole split)."""
        return int(self.tokens.numel())


@dataclass
class Corpus:
    """Vocabulary (index -> token) and the splits "train", "valid", "test"."""

    vocab: list[str]
    splits: dict[str, Split]
    tokenizer: str  # word, char or sentencepiece
    char_ptb: bool  # char tokens are PTB symbols (`_` = space between words)
    cache_path: str  # the .pt file this corpus was read from or written to
    sp_model_path: Optional[str] = None  # the SentencePiece model, for tokenizer=sentencepiece
    digests: dict[str, str] = field(default_factory=dict)  # split name -> sha256 of its text

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return len(self.vocab)

    def decode(self, ids: Union[torch.Tensor, Sequence[int]]) -> str:
        """Text of a sequence of ids; `<eos>` becomes a newline."""
        id_list = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return decode_ids(id_list, self.vocab, self.tokenizer, self.char_ptb)


def _tokenizer_settings(cfg: DataConfig) -> dict[str, Any]:
    if cfg.tokenizer == "sentencepiece":
        return {
            "tokenizer": "sentencepiece",
            "sp_model_type": cfg.sp_model_type,
            "sp_vocab_size": cfg.sp_vocab_size,
            "sp_character_coverage": float(cfg.sp_character_coverage),
            "sp_byte_fallback": bool(cfg.sp_byte_fallback),
        }
    settings: dict[str, Any] = {
        "tokenizer": cfg.tokenizer,
        "vocab_size": cfg.vocab_size,
        "min_freq": cfg.min_freq,
    }
    if cfg.tokenizer == "char":
        settings["char_ptb"] = bool(cfg.char_ptb)
    return settings


def cache_paths(cfg: DataConfig, raw: dict[str, RawSplit]) -> tuple[str, str, str]:
    """(key, corpus cache path, SentencePiece model path) for these split contents."""
    settings = _tokenizer_settings(cfg)
    digests = {n: raw[n].digest for n in SPLITS}
    key = cache_key({"format": CACHE_FORMAT, "settings": settings, "splits": digests})
    folder = cfg.cache_folder()
    corpus_path = os.path.join(folder, f"corpus-{cfg.tokenizer}-{key[:24]}.pt")
    return key, corpus_path, sp_model_path(cfg, raw["train"].digest)


def sp_model_path(cfg: DataConfig, train_digest: str) -> str:
    """Where the cache keeps the SentencePiece model trained on a training split whose text
    has sha256 ``train_digest`` with ``cfg``'s settings."""
    settings = _tokenizer_settings(cfg)
    sp_key = cache_key({"format": CACHE_FORMAT, "settings": settings, "train": train_digest})
    return os.path.join(cfg.cache_folder(), f"sp-{cfg.sp_model_type}-{sp_key[:24]}.model")


def _empty_split_error(cfg: DataConfig, split: RawSplit) -> DataError:
    if cfg.source == "huggingface":
        key = f"data.hf_splits.{split.name}"
    else:
        key = f"data.{split.name}_file or data.path"
    role = ""
    if split.name == "valid":
        role = (
            " The validation split drives early stopping and model selection, so it must hold "
            "text."
        )
    return DataError(
        f"The {split.name} split ({split.origin}) is empty: it holds no words, so it has no "
        f"tokens to train or evaluate on.{role} Point {key} at a file with text."
    )


def _build(cfg: DataConfig, raw: dict[str, RawSplit], cache_path: str, sp_path: str) -> Corpus:
    lines = {}
    for name in SPLITS:
        lines[name] = split_lines(raw[name].text())
        if not has_words(lines[name]):
            raise _empty_split_error(cfg, raw[name])
    char_form = cfg.tokenizer == "char" and cfg.char_ptb and is_char_ptb_form(lines["train"])
    sp_model_path = None
    if cfg.tokenizer == "sentencepiece":
        processor = sp_tokenizer.load_or_train(lines["train"], cfg, sp_path, raw["train"].origin)
        vocab = sp_tokenizer.vocab_of(processor)
        encoded = {n: sp_tokenizer.encode_lines(processor, lines[n]) for n in SPLITS}
        sp_model_path = sp_path
    else:
        mode = "ptb_form" if char_form else ("ptb_convert" if cfg.char_ptb else "plain")

        def tokens(name: str) -> Iterator[str]:
            return word_tokens(lines[name]) if cfg.tokenizer == "word" else char_tokens(
                lines[name], mode)

        vocab = build_vocab(tokens("train"), cfg.vocab_size, cfg.min_freq)
        encoded = {n: (encode(tokens(n), vocab), *unknown_counts(tokens(n), vocab))
                   for n in SPLITS}
    splits = {
        n: Split(n, encoded[n][0], count_chars(lines[n], char_form),
                 count_words(lines[n], char_form), *encoded[n][1:])
        for n in SPLITS
    }
    return Corpus(vocab, splits, cfg.tokenizer, bool(cfg.char_ptb), cache_path, sp_model_path)


def _payload(corpus: Corpus, key: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "key": key,
        "tokenizer": corpus.tokenizer,
        "char_ptb": corpus.char_ptb,
        "sp_model_path": corpus.sp_model_path or "",
        "vocab": corpus.vocab,
        "splits": {
            s.name: {"tokens": s.tokens, "n_chars": s.n_chars, "n_words": s.n_words,
                     "unk_tokens": s.unk_tokens, "unk_chars": s.unk_chars}
            for s in corpus.splits.values()
        },
    }


def _from_payload(obj: Any, key: str, cache_path: str) -> Optional[Corpus]:
    """The cached corpus, or None when `obj` is not a complete cache entry for `key`."""
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT or obj.get("key") != key:
        return None
    vocab, stored = obj.get("vocab"), obj.get("splits")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
        return None
    if not isinstance(stored, dict) or set(stored) != set(SPLITS):
        return None
    splits = {}
    for name in SPLITS:
        entry = stored[name]
        if not isinstance(entry, dict):
            return None
        tokens, n_chars, n_words = entry.get("tokens"), entry.get("n_chars"), entry.get("n_words")
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 1:
            return None
        counts = [n_chars, n_words, entry.get("unk_tokens"), entry.get("unk_chars")]
        if not all(isinstance(c, int) for c in counts) or tokens.numel() == 0:
            return None  # also entries cached before unknown tokens were counted
        if int(tokens.min()) < 0 or int(tokens.max()) >= len(vocab):
            return None
        splits[name] = Split(name, tokens, *counts)
    sp_model_path = obj.get("sp_model_path") or None
    tokenizer, char_ptb = str(obj.get("tokenizer")), bool(obj.get("char_ptb"))
    return Corpus(vocab, splits, tokenizer, char_ptb, cache_path, sp_model_path)


def load_corpus(cfg: DataConfig) -> Corpus:
    """Read, tokenize and cache the corpus described by `cfg` (or read it from the cache)."""
    cfg.validate()
    raw = read_splits(cfg)
    key, cache_path, sp_path = cache_paths(cfg, raw)
    corpus = _from_payload(load_torch(cache_path), key, cache_path)
    if corpus is None:
        corpus = _build(cfg, raw, cache_path, sp_path)
        atomic_torch_save(cache_path, _payload(corpus, key))
    corpus.digests = {name: raw[name].digest for name in SPLITS}
    return corpus


def check_vocab(corpus: Corpus, checkpoint_vocab: Sequence[str], checkpoint_path: str) -> None:
    """Raise DataError unless the checkpoint's vocabulary equals the corpus's, entry for entry."""
    listed = isinstance(checkpoint_vocab, (list, tuple))
    if not listed or not all(isinstance(t, str) for t in checkpoint_vocab):
        raise DataError(
            f"The checkpoint {checkpoint_path} stores no valid vocabulary (a list of tokens), so "
            "it cannot be matched to the corpus. Use a checkpoint written by lm_flipout training."
        )
    ours, theirs = corpus.vocab, list(checkpoint_vocab)
    if ours == theirs:
        return
    differ = sum(a != b for a, b in zip(theirs, ours)) + abs(len(theirs) - len(ours))
    shorter = min(len(theirs), len(ours))
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), shorter)
    at = lambda v: repr(v[first]) if first < len(v) else "(none)"  # noqa: E731
    raise DataError(
        f"The checkpoint {checkpoint_path} was trained with a vocabulary of {len(theirs)} tokens, "
        f"but the corpus (cache {corpus.cache_path}) has {len(ours)} tokens; {differ} entries "
        "differ "
        f"(first at index {first}: checkpoint {at(theirs)}, corpus {at(ours)}). Use the same data "
        "settings as the run that wrote the checkpoint (data.path / data.hf_*, data.tokenizer, "
        "data.vocab_size, data.min_freq, data.char_ptb, data.sp_*)."
    )
