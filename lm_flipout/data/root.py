"""The data root: where public corpora live, so that recipes can name them by a bare name
(``data.path: ptb``) instead of a path on one machine.

Rule for ``data.path``: a bare relative name (``ptb``, ``corpora/wiki``) is a folder under
the data root; a path that starts with ``/``, ``~``, ``./`` or ``../`` is taken as it is
(relative ones from the current folder). The data root is ``$LM_FLIPOUT_DATA`` when set, else
``~/.cache/lm_flipout/data``: one copy per user that every project folder and the installed
command find, next to where downloads of other tools (PyTorch Hub, Hugging Face) go."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

DATA_ROOT_ENV = "LM_FLIPOUT_DATA"
DEFAULT_DATA_ROOT = "~/.cache/lm_flipout/data"


def data_root(environ: Optional[Mapping[str, str]] = None) -> Path:
    """``$LM_FLIPOUT_DATA``, else the default data root, with ``~`` expanded."""
    environ = os.environ if environ is None else environ
    return Path(os.path.expanduser(environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT))


def is_bare_name(path: str) -> bool:
    """True when ``path`` names a folder under the data root (see the module docstring)."""
    first = path.replace(os.sep, "/").split("/")[0]
    return not (os.path.isabs(path) or path.startswith("~") or first in (".", ".."))


def resolve_data_path(path: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """The folder that ``data.path`` names: under the data root for a bare name, else as is."""
    if is_bare_name(path):
        return str(data_root(environ) / path)
    return os.path.expanduser(path)
