"""Splits from Hugging Face `datasets`: a Hub dataset (e.g. wikitext) or a packaged
builder (`text`, `parquet`, ...) over local files. `datasets` is imported lazily.

Without network a Hub load must fail fast: before a Hub load we probe the endpoint
(HF_ENDPOINT, 3 s); when it is unreachable, or the user set HF_HUB_OFFLINE /
HF_DATASETS_OFFLINE, the load runs in offline mode, so a cached copy still loads and a
missing one fails at once instead of waiting through retries."""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from contextlib import contextmanager
from typing import Any, Iterator

from lm_flipout.data.config import DataConfig, is_packaged_builder
from lm_flipout.data.raw import SPLITS, RawSplit, digest_of
from lm_flipout.errors import DataError

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}

_LOCAL_HINT = (
    "To train without network, point the recipe at local files: data.source=files "
    "data.path=<directory with train.txt, valid.txt, test.txt>, or data.hf_name=text "
    "data.hf_data_files={train: ..., validation: ..., test: ...}."
)


def hub_endpoint() -> str:
    """The Hub URL `datasets` talks to (HF_ENDPOINT, else huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_requested() -> bool:
    """True when the user asked `datasets`/`huggingface_hub` to stay offline."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").upper() in _TRUE for n in names)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds (DNS
    included: the probe runs in a daemon thread that is abandoned when it overruns)."""
    url = urllib.parse.urlsplit(hub_endpoint())
    host = url.hostname
    if not host:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


@contextmanager
def _forced_offline() -> Iterator[None]:
    """Offline mode for this load only (the libraries read their env flags at import)."""
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    saved = (
        getattr(ds_config, "HF_HUB_OFFLINE", False),
        getattr(hub_constants, "HF_HUB_OFFLINE", False),
    )
    ds_config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        ds_config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _describe(cfg: DataConfig) -> str:
    config = f" (data.hf_config={cfg.hf_config})" if cfg.hf_config else ""
    return f"data.hf_name={cfg.hf_name}{config}"


def _check_local_files(cfg: DataConfig) -> None:
    for split, path in (cfg.hf_data_files or {}).items():
        if not isinstance(path, str):
            raise DataError(f"data.hf_data_files.{split}={path!r} must be a file path (a string).")
        if any(c in path for c in "*?[") or "://" in path:
            continue  # globs and remote URLs are resolved by `datasets` itself
        if not os.path.isfile(os.path.expanduser(path)):
            raise DataError(
                f"data.hf_data_files.{split}={path} does not exist. Point it at an existing "
                f"{cfg.hf_name} file for the {split} split."
            )


def _load_dataset(cfg: DataConfig) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.source=huggingface needs the `datasets` package, which is not installed. "
            f"Install it (pip install datasets) or use local files: {_LOCAL_HINT}"
        ) from None
    kwargs: dict[str, Any] = {"cache_dir": cfg.hf_cache_dir}
    if cfg.hf_data_files:
        kwargs["data_files"] = {k: os.path.expanduser(v) for k, v in cfg.hf_data_files.items()}
    if is_packaged_builder(cfg.hf_name or ""):
        try:
            return datasets.load_dataset(cfg.hf_name, cfg.hf_config, **kwargs)
        except Exception as err:  # the library raises many types; all mean "cannot load"
            raise DataError(
                f"Could not load {_describe(cfg)} over data.hf_data_files={cfg.hf_data_files}: "
                f"{type(err).__name__}: {err}. Check that the files are valid {cfg.hf_name} files."
            ) from None
    if offline_requested():
        why = "offline mode is set (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and no cached copy was " \
            "found"
    elif hub_reachable():
        try:
            return datasets.load_dataset(cfg.hf_name, cfg.hf_config, **kwargs)
        except Exception as err:
            raise DataError(
                f"Could not load the Hugging Face dataset {_describe(cfg)}: {type(err).__name__}: "
                f"{err}. Check data.hf_name and data.hf_config. {_LOCAL_HINT}"
            ) from None
    else:
        why = f"the Hub at {hub_endpoint()} is unreachable (no network?) and no cached copy " \
            "was found"
    try:
        with _forced_offline():  # a cached copy still loads; a missing one fails at once
            return datasets.load_dataset(cfg.hf_name, cfg.hf_config, **kwargs)
    except Exception as err:
        raise DataError(
            f"Could not load the Hugging Face dataset {_describe(cfg)}: {why} "
            f"({type(err).__name__}: {err}). {_LOCAL_HINT}"
        ) from None


def _split_text(cfg: DataConfig, dataset: Any, ours: str, theirs: str) -> str:
    origin = f"{_describe(cfg)} split '{theirs}'"
    columns = list(dataset.column_names)
    if cfg.text_field not in columns:
        raise DataError(
            f"{origin} has no column data.text_field={cfg.text_field!r}; its columns are "
            f"{columns}. Set data.text_field to the column holding the text."
        )
    parts = []
    for i, row in enumerate(dataset[cfg.text_field]):
        if not isinstance(row, str):
            raise DataError(
                f"{origin} row {i}: column {cfg.text_field!r} holds {type(row).__name__}, "
                "not text. "
                "Set data.text_field to a string column."
            )
        parts.append(row if row.endswith("\n") else row + "\n")
    return "".join(parts)


def read_hf_splits(cfg: DataConfig) -> dict[str, RawSplit]:
    """Load the dataset and turn each split into text: one row = one line (a row with
    embedded newlines becomes several lines)."""
    if not cfg.hf_name:
        raise DataError(
            "data.source=huggingface but data.hf_name is not set. Set it to a Hub dataset (e.g. "
            "data.hf_name=wikitext data.hf_config=wikitext-2-raw-v1) or to a packaged builder "
            "with local files (data.hf_name=text data.hf_data_files={train: ..., ...})."
        )
    if is_packaged_builder(cfg.hf_name):
        if not cfg.hf_data_files:
            raise DataError(
                f"data.hf_name={cfg.hf_name} is a packaged builder that reads local files, but "
                "data.hf_data_files is not set. Give it as "
                "{train: ..., validation: ..., test: ...}."
            )
        _check_local_files(cfg)
    loaded = _load_dataset(cfg)
    available = list(loaded.keys()) if hasattr(loaded, "keys") else []
    out = {}
    for ours in SPLITS:
        theirs = cfg.hf_splits[ours]
        if theirs not in available:
            raise DataError(
                f"The Hugging Face dataset {_describe(cfg)} has no split '{theirs}' (asked for by "
                f"data.hf_splits.{ours}); its splits are {available}. Set data.hf_splits.{ours} "
                "to one of them."
            )
        text = _split_text(cfg, loaded[theirs], ours, theirs)
        origin = f"{_describe(cfg)} split '{theirs}'"
        out[ours] = RawSplit(name=ours, origin=origin, digest=digest_of(text), content=text)
    return out
