"""One training process per run directory: an exclusive lock on ``<run_dir>/run.lock``.

The lock is ``fcntl.flock`` on the open file, so the operating system releases it when the
process ends in any way (a SIGKILL or a crash included) and a later ``--resume`` is never
blocked by a dead process. The file names its holder (pid and host) and is removed when the
lock is released; a start that fails also removes the folders it created.
``flock`` exists on Linux, macOS and the BSDs. Where ``fcntl`` is missing (Windows) no lock
is taken and nothing stops two processes from sharing a run directory. Data parallel, only
rank 0 takes it, as only rank 0 writes the directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import IO, Optional

from ..errors import TrainingError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "run.lock"


class RunInUse(TrainingError):
    """Another process holds the run directory's lock."""


def unwritable_message(run_dir: Path, err: OSError) -> str:
    """Why ``run_dir`` cannot be used, and what to do, in one paragraph."""
    if isinstance(err, (NotADirectoryError, FileExistsError)) or err.errno in (
            errno.ENOTDIR, errno.EEXIST):
        what = "it (or a folder above it) is a file, not a folder"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = f"the location is not writable ({os.strerror(err.errno)})"
    elif err.errno == errno.ENOSPC:
        what = "the disk is full"
    else:
        what = err.strerror or str(err)
    return (f"Cannot use the run directory {run_dir}: {what}. Nothing was written. Choose a "
            "writable folder with train.out_dir=DIR (or another train.run_name=NAME), or free "
            "space or fix the permissions there.")


class RunLock:
    """Holds ``<run_dir>/run.lock`` from `acquire` until `release` or the process's end."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._handle: Optional[IO[str]] = None
        self._created: list[Path] = []  # folders acquire made, deepest first

    def acquire(self) -> None:
        """Create the run directory if needed and take the lock, at once or not at all.

        Raises `RunInUse` naming the holder when another process has it, TrainingError when
        the directory cannot be created or written (checked here, before any slow work)."""
        self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while self._handle is None:
                self._handle = self._try_lock()
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
            self._handle.flush()
        except OSError as err:
            self.release()
            raise TrainingError(unwritable_message(self.run_dir, err)) from None

    def _try_lock(self) -> Optional[IO[str]]:
        """The locked file, or None when it was replaced between opening and locking."""
        handle = open(self.path, "a+", encoding="utf-8")
        if fcntl is None:
            return handle
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(handle)
            handle.close()
            raise RunInUse(
                f"The run {self.run_dir} is in use by another training process ({holder}; "
                f"lock file {self.path}). Nothing was changed. Wait for it to end or stop "
                "it, or train under another name with train.run_name=NAME."
            ) from None
        if not _same_file(handle, self.path):  # its holder removed it as we opened it
            handle.close()
            return None
        return handle

    def release(self) -> None:
        """Remove the lock file and let go of the lock (safe to call twice), then remove the
        folders `acquire` created if they are still empty."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # before closing, so no one locks the old file after us
            self._handle.close()
            self._handle = None
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []


def lock_holder(run_dir: Path) -> Optional[str]:
    """Who holds ``run_dir``'s lock ("pid N on host H"), or None when no process does.

    Checks with a shared lock taken and dropped at once; it creates nothing."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None:
        return None
    try:
        handle = open(path, encoding="utf-8")
    except OSError:  # no lock file: nobody holds it
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder(handle)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def _holder(handle: IO[str]) -> str:
    """Who a lock file names as its holder ("pid N on host H")."""
    handle.seek(0)
    return handle.read().strip() or "another process"


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
