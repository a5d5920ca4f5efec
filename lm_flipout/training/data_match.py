"""Scoring a checkpoint on the data it was trained with: where the data lives may be given
anew (the data moved), but the text of a split must be what training saw.

Checkpoints record the sha256 of each split's text ("data_digests"); `changed_splits` finds
the splits whose text changed since (a resume refuses them too). Scoring refuses such a
split, or scores it with a loud warning when asked to."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Callable

from ..config import apply_overrides, parse_overrides
from ..data.corpus import Corpus
from ..errors import ConfigError, DataError

# The keys that say where the data lives (the same ones a --resume may change).
DATA_LOCATION_KEYS = frozenset({
    "data.path", "data.train_file", "data.valid_file", "data.test_file", "data.hf_data_files",
    "data.hf_cache_dir", "data.cache_dir",
})

MOVED_HINT = ("The data settings come from the checkpoint's stored recipe: if the data moved, "
              "give its folder with --data-path DIR (or overrides such as data.test_file=FILE).")


def relocate_data(config: dict[str, Any], overrides: Iterable[str], path: str) -> dict[str, Any]:
    """The checkpoint's stored recipe (plain data) with ``key=value`` overrides of
    `DATA_LOCATION_KEYS` set; ConfigError for any other key."""
    parsed = parse_overrides(overrides)
    other = sorted(key for key in parsed if key not in DATA_LOCATION_KEYS)
    if other:
        raise ConfigError(
            f"{', '.join(other)} cannot be overridden when scoring {path}: the model was trained "
            "with the settings stored in it. Only where the data lives may change: "
            f"{', '.join(sorted(DATA_LOCATION_KEYS))}."
        )
    return apply_overrides(config, parsed) if parsed else config


def changed_splits(state: dict[str, Any], corpus: Corpus) -> dict[str, tuple[str, str]]:
    """The splits whose text is not what the checkpoint recorded, each with its (recorded,
    current) sha256. Splits either side lacks, and checkpoints from before the digests were
    recorded, count as unchanged."""
    recorded = state.get("data_digests")
    if not isinstance(recorded, dict):
        return {}
    return {split: (digest, corpus.digests[split]) for split, digest in recorded.items()
            if corpus.digests.get(split) not in (None, digest)}


def check_split_unchanged(state: dict[str, Any], corpus: Corpus, split: str, path: str,
                          allow_changed: bool,
                          warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                          ) -> bool:
    """Compare the split's text with the digest the checkpoint recorded. A change raises
    DataError, or with ``allow_changed`` warns and returns True."""
    if split not in (changed := changed_splits(state, corpus)):
        return False
    stored, now = changed[split]
    what = (f"The {split} split is not the text {path} was trained with: its content changed "
            f"since (sha256 {now[:12]}..., training recorded {stored[:12]}...)")
    if not allow_changed:
        raise DataError(
            f"{what}. Scores on other text are not comparable with the run's. Point at the "
            "original data (--data-path DIR), or pass --allow-changed-data to score it anyway."
        )
    warn(f"WARNING: {what}. Scoring it anyway (--allow-changed-data); the result is marked "
         "\"data_changed\": true and is not comparable with the run's own scores.")
    return True
