"""Progress of a long loop that would otherwise be silent (scoring a split): a tqdm bar on a
terminal, and elsewhere (a log file, a pipe, a job scheduler) one line every few seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Callable, Optional, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def shown_progress(items: Iterable[T], total: int, desc: str, enabled: bool = True,
                   stream: Optional[TextIO] = None, every_s: float = 10.0,
                   clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """``items`` passed through unchanged while their progress is shown on ``stream``
    (default stderr): a bar that vanishes when done on a terminal, else a line such as
    ``scoring test: 1,200/8,000 batches (15%), 42 s`` every ``every_s`` seconds."""
    stream = stream or sys.stderr
    if not enabled:
        yield from items
        return
    if stream.isatty():
        yield from tqdm(items, total=total, desc=desc, leave=False, file=stream,
                        dynamic_ncols=True, mininterval=0.5)
        return
    started = last = clock()
    for done, item in enumerate(items, 1):
        yield item
        now = clock()
        if now - last >= every_s:
            last = now
            share = f" ({done / total:.0%})" if total else ""
            print(f"{desc}: {done:,}/{total:,} batches{share}, {now - started:.0f} s",
                  file=stream, flush=True)
