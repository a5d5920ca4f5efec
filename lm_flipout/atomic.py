"""Atomic file writes: a temporary file beside the target, flushed, fsynced and renamed
over it, so a killed process leaves either the old file or the new one, never half of one.
The new file gets the permissions any new file gets (0666 less the umask)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Union


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success flush, fsync and
    rename it over ``path``. On any error the temporary file is removed and ``path`` is left
    as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # mkstemp makes it 0600, private to its owner
                os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
