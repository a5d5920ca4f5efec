"""The `data:` section of a recipe: where the corpus comes from, how it is tokenized and
how it is cut into batches. Every default lives here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from lm_flipout.errors import DataError
from lm_flipout.user_cache import cache_root

_PACKAGED_BUILDERS = ("text", "parquet", "csv", "json", "arrow")


def _default_hf_splits() -> dict[str, str]:
    return {"train": "train", "valid": "validation", "test": "test"}


@dataclass
class DataConfig:
    """Corpus source, tokenizer and batching settings (the recipe's `data:` section)."""

    # Where the text comes from: local UTF-8 files, a Hugging Face `datasets` dataset, or
    # "synthetic": a corpus sampled from a small hidden Markov model (lm_flipout.data.hmm)
    # whose best achievable perplexity is known; generated once into cache_dir, no network.
    source: Literal["files", "huggingface", "synthetic"] = "files"
    # Directory holding train.txt, valid.txt and test.txt (source=files). A bare name such as
    # `ptb` is a folder under the data root ($LM_FLIPOUT_DATA, default ~/.cache/lm_flipout/data;
    # `lm-flipout data fetch ptb` fills it); a path starting with /, ~, ./ or ../ is used as is.
    path: Optional[str] = None
    # Explicit path of the training split; overrides `path` for this split.
    train_file: Optional[str] = None
    # Explicit path of the validation split; overrides `path` for this split.
    valid_file: Optional[str] = None
    # Explicit path of the test split; overrides `path` for this split.
    test_file: Optional[str] = None

    # Dataset name for `datasets.load_dataset`: a Hub name (e.g. "wikitext") or a packaged
    # builder ("text", "parquet", ...) used together with `hf_data_files`.
    hf_name: Optional[str] = None
    # Dataset configuration name (e.g. "wikitext-2-raw-v1").
    hf_config: Optional[str] = None
    # Local files for packaged builders, keyed by the dataset's split name.
    hf_data_files: Optional[dict[str, str]] = None
    # Column holding the text; each row is one or more lines of the corpus.
    text_field: str = "text"
    # Our split name (train/valid/test) -> the dataset's split name.
    hf_splits: dict[str, str] = field(default_factory=_default_hf_splits)
    # Where `datasets` keeps downloads and Arrow files; None = its own default cache.
    hf_cache_dir: Optional[str] = None

    # How text becomes tokens: whitespace words, characters, or a trained SentencePiece model.
    tokenizer: Literal["word", "char", "sentencepiece"] = "word"
    # Cap on the word/char vocabulary, `<eos>` and `<unk>` included; None = no cap.
    vocab_size: Optional[int] = None
    # Word/char tokens seen fewer times than this in train become `<unk>`.
    min_freq: int = 1
    # Char tokenizer only: PTB character convention (symbols space separated, `_` between
    # words). Word text is converted to that form; text already in it is read symbol-wise.
    char_ptb: bool = False
    # SentencePiece algorithm.
    sp_model_type: Literal["unigram", "bpe"] = "unigram"
    # SentencePiece vocabulary size, `<unk>` and `<eos>` included.
    sp_vocab_size: int = 8000
    # Fraction of characters SentencePiece must cover (1.0 = all); rarer ones are spelled in
    # bytes (with sp_byte_fallback) or become `<unk>`.
    sp_character_coverage: float = 1.0
    # Spell a character the pieces do not cover (one unseen in training) as its UTF-8 bytes,
    # one piece each, instead of `<unk>`, so that every text is encoded whole and bits per
    # character are defined on it. The 256 byte pieces count toward sp_vocab_size.
    sp_byte_fallback: bool = True

    # Seed of the synthetic hidden Markov model (source=synthetic).
    synthetic_seed: int = 0

    # Directory for the tokenized-corpus cache, SentencePiece models and the synthetic corpus;
    # None = `tokens/` under the toolkit's cache root ($LM_FLIPOUT_CACHE, default
    # ~/.cache/lm_flipout, shown by `lm-flipout data stats`).
    cache_dir: Optional[str] = None

    # Training batch size (global: summed over data-parallel ranks).
    batch_size: int = 20
    # Validation batch size (global: summed over data-parallel ranks).
    eval_batch_size: int = 10
    # Batch size of the test score in results.json; 1 (the usual protocol since Zaremba et
    # al. 2014) scores the split as one stream. Every process scores the whole test split.
    test_batch_size: int = 1
    # Truncated-BPTT window length (stream mode) or sequence length (sequences mode).
    bptt: int = 35
    # AWD-LSTM random window lengths around `bptt` during training (stream mode only).
    variable_bptt: bool = False
    # stream: B parallel streams with state carried across windows; sequences: independent
    # fixed-length sequences shuffled each epoch, no state carried.
    bptt_mode: Literal["stream", "sequences"] = "stream"
    # How valid/test are scored, whatever bptt_mode trains on. carry: the split as parallel
    # streams walked in windows of bptt, the state carried across the whole split (the usual
    # protocol); reset: independent bptt-token sequences, each from a zero state (to compare
    # with numbers measured that way).
    eval_protocol: Literal["carry", "reset"] = "carry"
    # Train on the first N tokens of the training split only (None = all of it), e.g. for
    # quick runs that overfit sooner; the vocabulary and the valid/test splits are unchanged.
    train_tokens: Optional[int] = None

    def cache_folder(self) -> str:
        """The folder of this corpus's cache files: data.cache_dir, else <cache root>/tokens."""
        if self.cache_dir is None:
            return str(cache_root() / "tokens")
        return os.path.expanduser(self.cache_dir)

    def validate(self) -> None:
        """Raise DataError naming `data.<key>` for the first setting that cannot work."""
        _check_choice("source", self.source, ("files", "huggingface", "synthetic"))
        _check_choice("tokenizer", self.tokenizer, ("word", "char", "sentencepiece"))
        _check_choice("sp_model_type", self.sp_model_type, ("unigram", "bpe"))
        _check_choice("bptt_mode", self.bptt_mode, ("stream", "sequences"))
        _check_choice("eval_protocol", self.eval_protocol, ("carry", "reset"))
        for key in ("batch_size", "eval_batch_size", "test_batch_size", "bptt", "min_freq"):
            _check_int(key, getattr(self, key), minimum=1)
        _check_int("synthetic_seed", self.synthetic_seed, minimum=0)
        if self.train_tokens is not None:
            _check_int("train_tokens", self.train_tokens, minimum=1)
        _check_int("sp_vocab_size", self.sp_vocab_size, minimum=3)
        if self.vocab_size is not None:
            _check_int("vocab_size", self.vocab_size, minimum=2)
        cov = self.sp_character_coverage
        if isinstance(cov, bool) or not isinstance(cov, (int, float)) or not 0.0 < cov <= 1.0:
            raise DataError(
                f"data.sp_character_coverage={cov!r} is not a number in (0, 1]. "
                "Use 1.0 to cover every character, or e.g. 0.9995 for large alphabets."
            )
        if self.tokenizer == "sentencepiece" and self.vocab_size is not None:
            raise DataError(
                f"data.vocab_size={self.vocab_size} has no effect with "
                "data.tokenizer=sentencepiece. "
                "Set data.sp_vocab_size instead and leave data.vocab_size unset (null)."
            )
        if self.char_ptb and self.tokenizer != "char":
            raise DataError(
                f"data.char_ptb=true only applies to data.tokenizer=char, but data.tokenizer="
                f"{self.tokenizer}. Set data.tokenizer=char or data.char_ptb=false."
            )
        if self.variable_bptt and self.bptt_mode != "stream":
            raise DataError(
                "data.variable_bptt=true needs data.bptt_mode=stream (sequences have a fixed "
                "length). Set data.variable_bptt=false or data.bptt_mode=stream."
            )
        if not isinstance(self.text_field, str) or not self.text_field:
            raise DataError(
                f"data.text_field={self.text_field!r} must name the dataset's text column."
            )
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str)
                                           or not self.cache_dir):
            raise DataError(f"data.cache_dir={self.cache_dir!r} must be a directory path, or "
                            "null for the toolkit's cache root ($LM_FLIPOUT_CACHE).")
        self._validate_source()

    def _validate_source(self) -> None:
        # Whether the source is complete (path set, files exist) is checked when loading, so
        # that DataConfig() with defaults stays constructible.
        splits = self.hf_splits
        if not isinstance(splits, dict) or set(splits) != {"train", "valid", "test"}:
            raise DataError(
                f"data.hf_splits={splits!r} must map exactly the keys train, valid and test to the "
                "dataset's split names, e.g. {train: train, valid: validation, test: test}."
            )


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DataError(
            f"data.{key}={value!r} is not one of {', '.join(choices)}. Pick one of these."
        )


def _check_int(key: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(
            f"data.{key}={value!r} must be an integer >= {minimum}. Set a larger value."
        )


def is_packaged_builder(name: str) -> bool:
    """True when `name` is a `datasets` packaged builder that reads local files."""
    return name in _PACKAGED_BUILDERS
