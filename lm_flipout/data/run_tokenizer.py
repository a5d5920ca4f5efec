"""A trained run's tokenizer on its own, without its corpus: raw text to token ids as the
corpus tokenizes a split (word, char or sentencepiece), and ids back to text.

It is rebuilt from the run's vocabulary and, for SentencePiece, the serialized model. A
character run in PTB form (`data.char_ptb`) reads text already in that form symbol by symbol
and converts word text to it, judged per text (the corpus judges by its training split)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence

from lm_flipout.data import sp_tokenizer
from lm_flipout.data.config import DataConfig
from lm_flipout.data.corpus import load_corpus, sp_model_path
from lm_flipout.data.text import is_char_ptb_form, split_lines
from lm_flipout.data.tokenizers import EOS, UNK, char_tokens, decode_ids
from lm_flipout.errors import DataError

KINDS = ("word", "char", "sentencepiece")


class Encoded(NamedTuple):
    """Token ids of a text and the pieces of it that became `<unk>`."""

    ids: list[int]
    unknown: list[str]


@dataclass
class RunTokenizer:
    """Text <-> token ids with a run's vocabulary (index -> token).

    ``kind`` is the run's data.tokenizer; ``char_ptb`` its data.char_ptb; ``sp_model`` the
    serialized SentencePiece model for kind sentencepiece (its pieces are the vocabulary)."""

    kind: str
    vocab: list[str]
    char_ptb: bool = False
    sp_model: Optional[bytes] = None
    _index: dict[str, int] = field(init=False, repr=False)
    _processor: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"tokenizer {self.kind!r} is not one of {', '.join(KINDS)}.")
        if self.kind == "sentencepiece":
            if not self.sp_model:
                raise DataError("A sentencepiece tokenizer needs its model; none was given.")
            self._processor = sp_tokenizer.processor_from_bytes(self.sp_model)
            self.vocab = sp_tokenizer.vocab_of(self._processor)
        self._index = {token: i for i, token in enumerate(self.vocab)}
        if EOS not in self._index or UNK not in self._index:
            raise DataError(f"The vocabulary lacks {EOS} or {UNK}, so it is not a vocabulary "
                            "written by lm_flipout.")

    @property
    def eos_id(self) -> int:
        """The id of `<eos>`, the token that ends every line."""
        return self._index[EOS]

    def encode(self, text: str, end_line: bool = True) -> Encoded:
        """Token ids of ``text``, every line ended by `<eos>` as in a corpus split; with
        ``end_line=False`` a last line without a final newline stays open (a prompt)."""
        lines = split_lines(text)
        closed = [True] * len(lines)
        if lines and not end_line and not text.endswith("\n"):
            closed[-1] = False
        ids: list[int] = []
        unknown: list[str] = []
        for words, ends in zip(lines, closed):
            if self.kind == "sentencepiece":
                self._encode_pieces(" ".join(words), ids, unknown)
            else:
                for token in self._tokens(words):
                    i = self._index.get(token)
                    if i is None:
                        unknown.append(token)
                        i = self._index[UNK]
                    ids.append(i)
            if ends:
                ids.append(self.eos_id)
        return Encoded(ids, unknown)

    def _tokens(self, words: list[str]) -> list[str]:
        if self.kind == "word":
            return list(words)
        mode = "plain"
        if self.char_ptb:
            mode = "ptb_form" if is_char_ptb_form([words]) else "ptb_convert"
        return list(char_tokens([words], mode))[:-1]  # without the line's <eos>

    def _encode_pieces(self, line: str, ids: list[int], unknown: list[str]) -> None:
        piece_ids = self._processor.encode(line)
        ids.extend(piece_ids)
        if sp_tokenizer.UNK_ID in piece_ids:
            surfaces = self._processor.encode(line, out_type=str)
            unknown.extend(s.replace("\u2581", " ").strip()
                           for i, s in zip(piece_ids, surfaces) if i == sp_tokenizer.UNK_ID)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; `<eos>` becomes a newline."""
        return decode_ids(ids, self.vocab, self.kind, self.char_ptb)


def tokenizer_of_run(cfg: DataConfig, vocab: Sequence[str], train_digest: Optional[str],
                     where: str) -> RunTokenizer:
    """The tokenizer of a run with data settings ``cfg`` and vocabulary ``vocab`` (as its
    checkpoint stores them). A SentencePiece model is read from the data cache where the
    checkpoint's training-split digest finds it, else rebuilt from the corpus."""
    if cfg.tokenizer != "sentencepiece":
        return RunTokenizer(cfg.tokenizer, list(vocab), bool(cfg.char_ptb))
    path = sp_model_path(cfg, train_digest) if train_digest else None
    if path is None or not os.path.isfile(path):
        try:
            path = load_corpus(cfg).sp_model_path
        except DataError as err:
            raise DataError(
                f"{where} uses a SentencePiece tokenizer whose model is neither in the data cache "
                f"(data.cache_dir={cfg.cache_dir}) nor can be rebuilt from the corpus: {err}"
            ) from None
    try:
        with open(path, "rb") as handle:
            tokenizer = RunTokenizer("sentencepiece", [], sp_model=handle.read())
    except OSError as err:
        raise DataError(f"The SentencePiece model {path} of {where} cannot be read "
                        f"({err.strerror or err}). Check its permissions.") from None
    if tokenizer.vocab != list(vocab):
        raise DataError(
            f"The SentencePiece model {path} does not match the vocabulary stored in {where} "
            "(the cache or the training data changed). Use the data settings and files the run "
            "was trained with."
        )
    return tokenizer
