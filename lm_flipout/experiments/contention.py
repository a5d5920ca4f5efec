"""A helper process that keeps one CPU core busy, as a browser, a second job or another
user does on a real machine; the contended benchmark runs beside it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

# Spins on one core; ends by itself when its parent (pid in argv[1]) is gone, as a parent
# killed outright never reaches its `finally`; checks every few milliseconds.
SPIN = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


@contextlib.contextmanager
def one_core_busy() -> Iterator[subprocess.Popen]:
    """A process spinning on one core for the duration of the block; it is stopped and
    waited for on the way out, however the block ends (Ctrl-C included)."""
    helper = subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())],
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield helper
    finally:
        helper.kill()
        helper.wait()
