"""SentencePiece subwords: a unigram or BPE model trained on the training split with
sentencepiece's Python trainer, saved as `<cache_dir>/sp-<key>.model` and reused while the
training text and SentencePiece settings are unchanged.

Piece 0 is `<unk>` and piece 1 is `<eos>`, which ends every line (as for the other
tokenizers); there is no BOS or padding piece. With byte fallback (`data.sp_byte_fallback`,
the default) a character the pieces do not cover is spelled as its UTF-8 bytes, one piece
`<0xHH>` each, so no text becomes `<unk>`.

The trainer learns its pieces from a bounded sample, so that any training file trains its
tokenizer in bounded time: lines are cut at spaces into training sentences of at most
`TRAINING_SENTENCE_BYTES` (SentencePiece is made for sentences; a file without line breaks
would otherwise be a few huge ones), and from a split larger than `SAMPLE_BYTES` every k-th
sentence is taken, evenly over the whole split and the same on every run. This only changes
which text the trainer learns its pieces from, never the encoded tokens, as every line is
still encoded whole."""

from __future__ import annotations

import io
import math
import os
import re
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from lm_flipout.data.cache import atomic_write_bytes
from lm_flipout.data.config import DataConfig
from lm_flipout.data.tokenizers import EOS, UNK
from lm_flipout.errors import DataError

UNK_ID = 0
EOS_ID = 1
MAX_SENTENCE_BYTES = 1 << 16  # the longest sentence the trainer is told to accept
TRAINING_SENTENCE_BYTES = 1 << 12  # lines are cut into training sentences of at most this
SAMPLE_BYTES = 64 << 20  # the most training text the pieces are learnt from


def _import_sentencepiece() -> Any:
    try:
        import sentencepiece
    except ImportError:
        raise DataError(
            "data.tokenizer=sentencepiece needs the `sentencepiece` package, which is not "
            "installed. Install it (pip install sentencepiece) or use data.tokenizer=word or char."
        ) from None
    return sentencepiece


def train_model(lines: list[list[str]], cfg: DataConfig, origin: str) -> bytes:
    """Train on the normalized training lines and return the serialized model."""
    spm = _import_sentencepiece()
    sample, total = training_sample(lines, SAMPLE_BYTES, TRAINING_SENTENCE_BYTES)
    size = sum(len(s.encode("utf-8")) for s in sample)
    share = "all of it" if size == total else f"an even sample of the {_mib(total)}"
    print(f"SentencePiece: learning {cfg.sp_vocab_size} {cfg.sp_model_type} pieces from "
          f"{len(sample):,} sentences ({_mib(size)}, {share}) of {origin} ...", file=sys.stderr)
    sentences = iter(tqdm(sample, desc="SentencePiece: reading", unit=" sentences",
                          leave=False, mininterval=1.0, disable=None))
    started = time.monotonic()
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=buffer,
            model_type=cfg.sp_model_type,
            vocab_size=cfg.sp_vocab_size,
            character_coverage=cfg.sp_character_coverage,
            byte_fallback=cfg.sp_byte_fallback,
            unk_id=UNK_ID,
            unk_piece=UNK,
            eos_id=EOS_ID,
            eos_piece=EOS,
            bos_id=-1,
            pad_id=-1,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as err:
        needed = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(err))
        if needed:
            bytes_part = (" and the 256 byte pieces of data.sp_byte_fallback: true"
                          if cfg.sp_byte_fallback else "")
            raise DataError(
                f"data.sp_vocab_size={cfg.sp_vocab_size} is too small for the training split "
                f"{origin}: SentencePiece needs {needed.group(2)} pieces for its characters, "
                f"<unk> and <eos>{bytes_part}. Raise data.sp_vocab_size to at least "
                f"{needed.group(2)}"
                + (", or set data.sp_byte_fallback: false (unseen characters then become "
                   "<unk>)." if cfg.sp_byte_fallback else ".")
            ) from None
        limit = re.search(r"<=\s*(\d+)", str(err))
        if "Vocabulary size" in str(err) or limit:
            most = f" (at most {limit.group(1)} here)" if limit else ""
            raise DataError(
                f"data.sp_vocab_size={cfg.sp_vocab_size} is larger than the training split "
                f"{origin} allows{most}: SentencePiece ({cfg.sp_model_type}) cannot find that many "
                f"pieces. Lower data.sp_vocab_size or use a larger training split."
            ) from None
        raise DataError(
            f"SentencePiece training on {origin} failed: {err}. Check data.sp_model_type, "
            "data.sp_vocab_size and data.sp_character_coverage."
        ) from None
    print(f"SentencePiece: done in {time.monotonic() - started:.0f} s.", file=sys.stderr)
    return buffer.getvalue()


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def training_sample(lines: list[list[str]], limit: int,
                    sentence_bytes: int) -> tuple[list[str], int]:
    """The training sentences the pieces are learnt from: ``lines`` cut into sentences of at
    most ``sentence_bytes``, every k-th of them when they hold more than ``limit`` bytes; and
    the UTF-8 size of all of them before sampling."""
    sentences = [part for words in lines if words
                 for part in training_sentences(words, sentence_bytes)]
    total = sum(len(s.encode("utf-8")) for s in sentences)
    if total <= limit:
        return sentences, total
    step = math.ceil(total / limit)
    sample, size = [], 0
    for sentence in sentences[::step]:
        size += len(sentence.encode("utf-8"))
        if size > limit:
            break
        sample.append(sentence)
    return sample, total


def training_sentences(words: list[str], limit: int = MAX_SENTENCE_BYTES) -> list[str]:
    """A line as sentences of at most ``limit`` UTF-8 bytes, cut at spaces (a single longer
    word is cut into pieces too)."""
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for word in words:
        while len(word.encode("utf-8")) > limit:
            head = word.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
            parts.append(head)
            word = word[len(head):]
        extra = len(word.encode("utf-8")) + (1 if current else 0)
        if current and size + extra > limit:
            parts.append(" ".join(current))
            current, size, extra = [], 0, extra - 1
        current.append(word)
        size += extra
    if current:
        parts.append(" ".join(current))
    return parts


def load_or_train(lines: list[list[str]], cfg: DataConfig, model_path: str, origin: str) -> Any:
    """The processor for `model_path`, training and saving it first when absent or unreadable."""
    spm = _import_sentencepiece()
    if os.path.isfile(model_path):
        try:
            return spm.SentencePieceProcessor(model_file=model_path)
        except (OSError, RuntimeError):
            pass  # corrupt model file: train again below
    proto = train_model(lines, cfg, origin)
    atomic_write_bytes(model_path, proto)
    return spm.SentencePieceProcessor(model_proto=proto)


def processor_from_bytes(proto: bytes) -> Any:
    """The processor of a serialized model (DataError when it cannot be read)."""
    spm = _import_sentencepiece()
    try:
        return spm.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError) as err:
        raise DataError(f"A SentencePiece model cannot be read ({err}); the file is damaged. "
                        "Write it again (train or export the run again).") from None


def vocab_of(processor: Any) -> list[str]:
    """Index -> piece."""
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def encode_lines(processor: Any, lines: list[list[str]]) -> tuple[torch.Tensor, int, int]:
    """Piece ids of every normalized line followed by `<eos>`, as a 1-D LongTensor, and the
    number of `<unk>` pieces (characters the model does not cover) and of characters in them."""
    ids: list[int] = []
    texts = [" ".join(words) for words in lines]
    unk_pieces = unk_chars = 0
    for text, piece_ids in zip(texts, processor.encode(texts)):
        ids.extend(piece_ids)
        ids.append(EOS_ID)
        if UNK_ID in piece_ids:  # the surface of an unknown piece is the text it stands for
            surfaces = processor.encode(text, out_type=str)
            unknown = [p for i, p in zip(piece_ids, surfaces) if i == UNK_ID]
            unk_pieces += len(unknown)
            unk_chars += sum(len(p.replace("\u2581", " ")) for p in unknown)
    return torch.tensor(ids, dtype=torch.long), unk_pieces, unk_chars
