"""The toolkit's one cache root, for what it can rebuild: tokenized corpora, SentencePiece
models, the synthetic corpus (`<root>/tokens`, unless `data.cache_dir` names a folder) and
the compiled step kernels (`<root>/kernels`). It is ``$LM_FLIPOUT_CACHE`` when set, else
`lm_flipout` in the user's cache folder (``$XDG_CACHE_HOME``, default ``~/.cache``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

CACHE_ENV = "LM_FLIPOUT_CACHE"


def cache_root(environ: Optional[Mapping[str, str]] = None) -> Path:
    """``$LM_FLIPOUT_CACHE``, else ``$XDG_CACHE_HOME/lm_flipout``, else
    ``~/.cache/lm_flipout``; ``~`` expanded."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return Path(os.path.expanduser(environ[CACHE_ENV]))
    base = environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expanduser(base)) / "lm_flipout"
