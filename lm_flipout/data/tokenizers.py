"""Word and character tokenizers and the vocabulary they share.

Vocabulary order: `<eos>` (index 0), `<unk>` (index 1), then the training split's tokens by
decreasing count, ties in order of first appearance. A corpus that already writes `<unk>`
(PTB) shares that token and stays text. Tokens cut by `data.vocab_size` or `data.min_freq`,
and tokens of valid/test never seen in train, become `<unk>`: `unknown_counts` counts them."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Iterator, Literal, Optional

import torch

from lm_flipout.data.text import WORD_BOUNDARY

EOS = "<eos>"
UNK = "<unk>"
SPECIALS = (EOS, UNK)

CharMode = Literal["plain", "ptb_convert", "ptb_form"]


def word_tokens(lines: list[list[str]]) -> Iterator[str]:
    """Each line's words followed by `<eos>`."""
    for words in lines:
        yield from words
        yield EOS


def char_tokens(lines: list[list[str]], mode: CharMode = "plain") -> Iterator[str]:
    """Each line's characters followed by `<eos>` (the newline).

    plain: characters of the normalized line (a space between words);
    ptb_convert: characters of each word with `_` between words (PTB character form);
    ptb_form: the line is already in PTB character form, its symbols are the tokens."""
    for words in lines:
        if mode == "ptb_form":
            yield from words
        else:
            sep = WORD_BOUNDARY if mode == "ptb_convert" else " "
            yield from sep.join(words)
        yield EOS


def build_vocab(
    tokens: Iterable[str], max_size: Optional[int] = None, min_freq: int = 1
) -> list[str]:
    """Vocabulary (index -> token) from training tokens; `max_size` includes the specials."""
    counts = Counter(tokens)
    ranked = sorted(
        (tok for tok, n in counts.items() if tok not in SPECIALS and n >= min_freq),
        key=lambda tok: -counts[tok],
    )
    if max_size is not None:
        ranked = ranked[: max(max_size - len(SPECIALS), 0)]
    return list(SPECIALS) + ranked


def encode(tokens: Iterable[str], vocab: list[str]) -> torch.Tensor:
    """Token ids as a 1-D LongTensor; tokens outside `vocab` map to `<unk>`."""
    index = {tok: i for i, tok in enumerate(vocab)}
    unk = index[UNK]
    return torch.tensor([index.get(tok, unk) for tok in tokens], dtype=torch.long)


BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


def sentencepiece_text(pieces: list[str]) -> str:
    """The text of a line's SentencePiece pieces: byte pieces (`<0xE2>`, from byte fallback)
    joined into their UTF-8 characters, the word-start mark `\u2581` as a space."""
    data = bytearray()
    for piece in pieces:
        byte = BYTE_PIECE.fullmatch(piece)
        data += bytes([int(byte.group(1), 16)]) if byte else piece.encode("utf-8")
    return data.decode("utf-8", errors="replace").replace("\u2581", " ").lstrip(" ")


def decode_ids(ids: Iterable[int], vocab: list[str], tokenizer: str, char_ptb: bool = False
               ) -> str:
    """Text of token ids under ``tokenizer`` (word, char or sentencepiece): `<eos>` becomes a
    newline, words are joined by spaces, SentencePiece's `\u2581` marks a space, and in PTB
    character form `_` is the space between words."""
    lines: list[str] = []
    current: list[str] = []

    def render(pieces: list[str]) -> str:
        if tokenizer == "word":
            return " ".join(pieces)
        if tokenizer == "sentencepiece":
            return sentencepiece_text(pieces)
        if char_ptb:
            return "".join(" " if p == WORD_BOUNDARY else p for p in pieces)
        return "".join(pieces)

    for i in ids:
        token = vocab[i]
        if token == EOS:
            lines.append(render(current) + "\n")
            current = []
        else:
            current.append(token)
    return "".join(lines) + render(current)


def unknown_counts(tokens: Iterable[str], vocab: list[str]) -> tuple[int, int]:
    """(tokens, characters) that `encode` maps to `<unk>` because `vocab` lacks them; a
    literal `<unk>` of the text is in every vocabulary and so is not counted."""
    known = set(vocab)
    missing = [tok for tok in tokens if tok not in known]
    return len(missing), sum(len(tok) for tok in missing)
