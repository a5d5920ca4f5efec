"""The configured source's raw splits: ``data.source`` picks the reader (local files, the
synthetic HMM corpus or Hugging Face `datasets`)."""

from __future__ import annotations

from lm_flipout.data.config import DataConfig
from lm_flipout.data.hf_source import read_hf_splits
from lm_flipout.data.local_files import read_local_splits
from lm_flipout.data.raw import RawSplit
from lm_flipout.data.synthetic_source import read_synthetic_splits


def read_splits(cfg: DataConfig) -> dict[str, RawSplit]:
    """Read train/valid/test from the configured source."""
    if cfg.source == "files":
        return read_local_splits(cfg)
    if cfg.source == "synthetic":
        return read_synthetic_splits(cfg)
    return read_hf_splits(cfg)
