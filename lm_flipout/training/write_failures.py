"""Failed writes to the run directory (a full disk, a read-only or vanished folder): one
paragraph that says which file, which checkpoints are intact and that ``--resume`` continues.

Every run file is written atomically (`lm_flipout.atomic`), so a failed write leaves the
previous version of the file in place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

from ..errors import TrainingError


class RunWriteError(TrainingError):
    """Writing a run file failed; the checkpoints written before are intact. Command-line
    entry points add the command that resumes the run."""


def os_error_in(err: BaseException) -> Optional[OSError]:
    """The OSError behind ``err``: itself, or one it was raised from (``torch.save`` wraps a
    failed write in a RuntimeError)."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def kept_checkpoints(last_path: Path, saved_step: Optional[int], best_path: Path) -> str:
    """A sentence (without its full stop) naming the checkpoints a failure leaves intact."""
    if saved_step is None:
        kept = "No last.pt had been written yet (a resume starts the run from the beginning)"
    else:
        kept = f"The last good checkpoint {last_path} (from step {saved_step}) is kept intact"
    if best_path.exists():
        kept += f", and so is {best_path}"
    return kept


@contextlib.contextmanager
def guarded_write(target: Path, kept: Callable[[], str]) -> Iterator[None]:
    """Turn a failed write inside the block into a `RunWriteError` naming ``target`` (or the
    file the OSError names) and what ``kept()`` says is intact; other errors pass."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        cause = os_error_in(err)
        if cause is None:
            raise
        where = cause.filename or target
        reason = cause.strerror or str(cause) or type(cause).__name__
        raise RunWriteError(
            f"Writing {where} failed: {reason}. {kept()}. Free disk space or fix the "
            "folder's permissions, then continue the run with --resume."
        ) from None
