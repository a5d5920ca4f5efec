"""Atomic cache files: keyed by content + settings, written to a temporary file in the same
directory and renamed into place, so a killed process never leaves a half-written file
under a name that is read. Unreadable or foreign cache files are treated as absent."""

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
    except OSError as err:
        raise DataError(
            f"Cannot write the data cache file {path}: {err}. Set data.cache_dir to a "
            "writable directory."
        ) from None


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(path: str, obj: Any) -> None:
    """torch.save `obj` (plain tensors, lists, dicts, str, int) to `path` atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str) -> Optional[Any]:
    """The object saved at `path`, or None when the file is absent or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign file: rebuild
        log.warning(
            "ignoring unreadable cache file %s (%s: %s); rebuilding", path, type(err).__name__, err
        )
        return None
