"""``data.source=synthetic``: a corpus sampled from the hidden Markov model of
`lm_flipout.data.hmm`, written once into the cache folder (``data.cache_dir``, default under
the cache root) and then read as local files.

``meta.json`` beside the splits is written last and marks a complete corpus; it also holds
the Bayes-optimal perplexity of each split, the floor no model can beat."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lm_flipout.atomic import atomic_write
from lm_flipout.data.config import DataConfig
from lm_flipout.data.hmm import HMMSpec
from lm_flipout.data.hmm_corpus import write_corpus
from lm_flipout.data.local_files import read_local_splits
from lm_flipout.data.raw import RawSplit

META = "meta.json"


def synthetic_dir(cfg: DataConfig) -> Path:
    """Where the corpus of ``data.synthetic_seed`` is written."""
    return Path(cfg.cache_folder()) / f"synthetic-hmm-seed{cfg.synthetic_seed}"


def ensure_synthetic_corpus(cfg: DataConfig) -> dict:
    """Generate the corpus if it is not complete yet; return its metadata."""
    directory = synthetic_dir(cfg)
    meta_path = directory / META
    if meta_path.is_file():
        try:
            return json.loads(meta_path.read_text())
        except (OSError, ValueError):
            pass  # unreadable marker: regenerate below
    meta = write_corpus(HMMSpec(seed=cfg.synthetic_seed), directory)
    with atomic_write(meta_path) as handle:
        handle.write(json.dumps(meta, indent=2).encode())
    return meta


def read_synthetic_splits(cfg: DataConfig) -> dict[str, RawSplit]:
    """The corpus's splits (generated on first use), read as local files."""
    ensure_synthetic_corpus(cfg)
    # absolute: a relative data.path would name a folder under the data root
    as_files = dataclasses.replace(cfg, source="files", path=str(synthetic_dir(cfg).absolute()),
                                   train_file=None, valid_file=None, test_file=None)
    return read_local_splits(as_files)
