"""Files written atomically get the permissions of any new file: 0666 less the umask."""

from __future__ import annotations

import os

import pytest

from lm_flipout.atomic import atomic_write


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    before = os.umask(umask)
    try:
        with atomic_write(tmp_path / "file.txt") as handle:
            handle.write(b"x")
        (tmp_path / "plain.txt").write_bytes(b"x")  # what open() gives, for comparison
    finally:
        os.umask(before)
    mode = os.stat(tmp_path / "file.txt").st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "plain.txt").st_mode & 0o777
