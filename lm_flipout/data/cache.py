"""Atomic cache files: keyed by content + settings, written to a temporary file in the same
directory and renamed into place, so a killed process never leaves a half-written file
under a name that is read. A torch cache file stores the sha256 of its content beside it
(torch's archive reader checks no CRCs, so a flipped byte would load silently); unreadable,
foreign or corrupted cache files are treated as absent and rebuilt."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Optional

import torch

from lm_flipout.atomic import atomic_write
from lm_flipout.errors import DataError

log = logging.getLogger(__name__)

def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of a JSON rendering of `parts` (sorted keys): equal settings, equal key."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    try:
        with atomic_write(path) as handle:
            write(handle)
    except (OSError, RuntimeError) as err:  # torch.save wraps a failed write in RuntimeError
        cause = err if isinstance(err, OSError) else err.__cause__ or err.__context__
        if not isinstance(cause, OSError):
            raise
        raise DataError(
            f"Cannot write the data cache file {path}: {cause.strerror or cause}. Free disk "
            "space, or set data.cache_dir (or $LM_FLIPOUT_CACHE) to a writable directory with "
            "room."
        ) from None


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    _atomic_write(path, lambda f: f.write(data))


def content_digest(obj: Any) -> str:
    """sha256 over plain data: tensors (dtype, shape and bytes), dicts, lists, str, numbers."""
    digest = hashlib.sha256()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            data = item.detach().cpu().contiguous()
            digest.update(f"T{data.dtype}{tuple(data.shape)}".encode())
            digest.update(data.view(-1).view(torch.uint8).numpy())
        elif isinstance(item, dict):
            keys = sorted(item, key=repr)
            digest.update(f"D{len(keys)}".encode())
            stack.extend(x for key in reversed(keys) for x in (item[key], key))
        elif isinstance(item, (list, tuple)):
            digest.update(f"L{len(item)}".encode())
            stack.extend(reversed(item))
        else:
            digest.update(f"V{item!r}".encode())
    return digest.hexdigest()


def atomic_torch_save(path: str, obj: Any) -> None:
    """torch.save `obj` (plain tensors, lists, dicts, str, int) with its `content_digest` to
    `path` atomically."""
    stored = {"sha256": content_digest(obj), "content": obj}
    _atomic_write(path, lambda f: torch.save(stored, f))


def load_torch(path: str) -> Optional[Any]:
    """The object saved at `path`, or None (with a one-line notice) when the file is absent,
    unreadable, or its content no longer matches its checksum."""
    if not os.path.isfile(path):
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign file: rebuild
        log.warning(
            "ignoring unreadable cache file %s (%s: %s); rebuilding", path, type(err).__name__, err
        )
        return None
    if not isinstance(stored, dict) or stored.get("sha256") != content_digest(
            stored.get("content")):
        log.warning("cache file %s does not match its checksum (corrupted or from an older "
                    "version); rebuilding it", path)
        return None
    return stored["content"]
