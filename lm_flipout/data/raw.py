"""Raw split text, whatever the source: the bytes or text of train/valid/test plus a
content digest that keys the tokenized-corpus cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Union

from lm_flipout.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class RawSplit:
    """One split before tokenization. `origin` names it in error messages (a file path or
    a dataset split); `digest` is the sha256 of its UTF-8 content."""

    name: str
    origin: str
    digest: str
    content: Union[bytes, str]

    def text(self) -> str:
        """The split's text; raises DataError naming the file and byte offset for non-UTF-8."""
        if isinstance(self.content, str):
            return self.content
        return decode_utf8(self.content, self.origin)


def digest_of(data: Union[bytes, str]) -> str:
    """sha256 hex digest of bytes, or of a string's UTF-8 encoding."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def decode_utf8(data: bytes, origin: str) -> str:
    """Decode UTF-8 (a leading byte-order mark is dropped) or raise DataError with the offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        bad = data[err.start : err.start + 1].hex()
        raise DataError(
            f"{origin} is not valid UTF-8: byte 0x{bad} at byte offset {err.start} (line {line}) "
            f"cannot be decoded ({err.reason}). Re-encode the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 in.txt > out.txt`, and point the recipe at the result."
        ) from None
    return text[1:] if text.startswith("\ufeff") else text

