"""``data.source=synthetic``: a corpus sampled from the hidden Markov model of
`lm_flipout.data.hmm`, written once into the cache folder (``data.cache_dir``, default under
the cache root) and then read as local files.

``meta.json`` beside the splits is written last and marks a complete corpus; it also holds
the Bayes-optimal perplexity of each split, the floor no model can beat, and the sha256 of
each split file. A split whose file no longer matches (an edit, a damaged disk), or a corpus
from before the digests were recorded, is generated again: the optimal perplexities belong to
the generated text only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from lm_flipout.atomic import atomic_write
from lm_flipout.data.config import DataConfig
from lm_flipout.data.hmm import HMMSpec
from lm_flipout.data.hmm_corpus import write_corpus
from lm_flipout.data.local_files import read_local_splits
from lm_flipout.data.raw import RawSplit
from lm_flipout.errors import DataError

META = "meta.json"
log = logging.getLogger(__name__)


def synthetic_dir(cfg: DataConfig) -> Path:
    """Where the corpus of ``data.synthetic_seed`` is written."""
    return Path(cfg.cache_folder()) / f"synthetic-hmm-seed{cfg.synthetic_seed}"


def ensure_synthetic_corpus(cfg: DataConfig) -> dict:
    """Generate the corpus if it is not complete yet; return its metadata."""
    directory = synthetic_dir(cfg)
    meta_path = directory / META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None  # unreadable marker: regenerate below
        if isinstance(meta, dict):
            changed = changed_files(directory, meta)
            if not changed:
                return meta
            log.warning("the synthetic corpus in %s no longer matches what was generated "
                        "(%s); generating it again", directory, ", ".join(changed))
    try:
        meta = write_corpus(HMMSpec(seed=cfg.synthetic_seed), directory)
        meta["sha256"] = {split: file_digest(directory / f"{split}.txt")
                          for split in meta["splits"]}
        with atomic_write(meta_path) as handle:
            handle.write(json.dumps(meta, indent=2).encode())
    except OSError as err:
        raise DataError(
            f"Cannot write the synthetic corpus in {directory}: {err.strerror or err}. Free "
            "disk space, or set data.cache_dir to a writable directory with room."
        ) from None
    return meta


def file_digest(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def changed_files(directory: Path, meta: dict) -> list[str]:
    """Why the corpus in ``directory`` is not the one ``meta`` describes: the split files
    that are missing or differ from their recorded sha256 ("no checksums recorded" for a
    corpus written before they were)."""
    digests = meta.get("sha256")
    if not isinstance(digests, dict) or not digests:
        return ["no checksums recorded"]
    changed = []
    for split, recorded in digests.items():
        path = directory / f"{split}.txt"
        if not path.is_file():
            changed.append(f"{path.name} is missing")
        elif file_digest(path) != recorded:
            changed.append(f"{path.name} changed")
    return changed


def read_synthetic_splits(cfg: DataConfig) -> dict[str, RawSplit]:
    """The corpus's splits (generated on first use), read as local files."""
    ensure_synthetic_corpus(cfg)
    # absolute: a relative data.path would name a folder under the data root
    as_files = dataclasses.replace(cfg, source="files", path=str(synthetic_dir(cfg).absolute()),
                                   train_file=None, valid_file=None, test_file=None)
    return read_local_splits(as_files)
