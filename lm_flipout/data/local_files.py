"""Splits from local text files: a directory with train.txt/valid.txt/test.txt, or
explicit per-split paths that override it."""

from __future__ import annotations

import os

from lm_flipout.data.config import DataConfig
from lm_flipout.data.raw import SPLITS, RawSplit, digest_of
from lm_flipout.data.root import DATA_ROOT_ENV, data_root, is_bare_name, resolve_data_path
from lm_flipout.errors import DataError

# Corpora that `lm-flipout data fetch NAME` downloads into the data root.
FETCHABLE = ("ptb",)


def split_paths(cfg: DataConfig) -> dict[str, str]:
    """The file of each split: `data.<split>_file` when set, else `<data.path>/<split>.txt`
    (a bare `data.path` is a folder under the data root, see `lm_flipout.data.root`)."""
    paths = {}
    for name in SPLITS:
        explicit = getattr(cfg, f"{name}_file")
        if explicit is not None:
            paths[name] = os.path.expanduser(explicit)
        elif cfg.path is not None:
            paths[name] = os.path.join(resolve_data_path(cfg.path), f"{name}.txt")
        else:
            raise DataError(
                f"data.source=files but neither data.path nor data.{name}_file is set, so the "
                f"{name} split has no file. Set data.path to a directory holding train.txt, "
                "valid.txt and test.txt, or set data.train_file, data.valid_file and "
                "data.test_file."
            )
    return paths


def read_local_splits(cfg: DataConfig) -> dict[str, RawSplit]:
    """Read each split's bytes (decoding is deferred until the cache misses)."""
    out = {}
    for name, path in split_paths(cfg).items():
        key = f"data.{name}_file" if getattr(cfg, f"{name}_file") is not None else "data.path"
        if not os.path.isfile(path):
            if key == "data.path" and is_bare_name(cfg.path) and not os.path.exists(path):
                raise DataError(_missing_corpus(cfg.path, name, path))
            what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
            raise DataError(
                f"The {name} split file {path} {what}. Check {key} (currently "
                f"{getattr(cfg, key.split('.', 1)[1])!r}); a corpus directory must hold "
                "train.txt, valid.txt and test.txt."
            )
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise DataError(
                f"Cannot read the {name} split file {path}: {err}. Check {key}."
            ) from None
        out[name] = RawSplit(name=name, origin=path, digest=digest_of(data), content=data)
    return out


def _missing_corpus(name: str, split: str, path: str) -> str:
    """The error for a corpus named by a bare data.path that is not in the data root."""
    root = data_root()
    where = (f"the data root {root} (${DATA_ROOT_ENV}" + (")" if os.environ.get(DATA_ROOT_ENV)
             else ", unset, so the default)"))
    get = (f"Run `lm-flipout data fetch {name}` to download it there, or copy" if name in FETCHABLE
           else "Copy")
    return (f"The {split} split file {path} does not exist: data.path={name!r} names a corpus "
            f"folder under {where}. {get} train.txt, valid.txt and test.txt into {root / name}, "
            f"set {DATA_ROOT_ENV} to a data root that holds {name}/, or set data.path to the "
            "corpus folder itself (a path starting with /, ./ or ../ is used as it is).")
