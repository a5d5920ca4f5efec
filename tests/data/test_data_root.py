"""The data root: how data.path is resolved, and the error when a named corpus is missing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from helpers import REPO
from lm_flipout.cli import train
from lm_flipout.data import DataConfig, load_corpus
from lm_flipout.data.root import data_root, resolve_data_path
from lm_flipout.data.synthetic_source import read_synthetic_splits, synthetic_dir
from lm_flipout.errors import DataError


def test_a_bare_name_is_under_the_data_root_and_paths_are_taken_as_they_are() -> None:
    env = {"LM_FLIPOUT_DATA": "/corpora"}
    assert resolve_data_path("ptb", env) == "/corpora/ptb"
    assert resolve_data_path("wiki/103", env) == "/corpora/wiki/103"
    assert resolve_data_path("/abs/ptb", env) == "/abs/ptb"
    assert resolve_data_path("./ptb", env) == "./ptb"
    assert resolve_data_path("../shared/ptb", env) == "../shared/ptb"
    assert resolve_data_path("~/ptb", env) == os.path.expanduser("~/ptb")


def test_the_default_data_root_is_in_the_users_cache() -> None:
    assert data_root({}) == Path.home() / ".cache" / "lm_flipout" / "data"
    assert data_root({"LM_FLIPOUT_DATA": ""}) == data_root({})


def test_a_missing_named_corpus_says_how_to_get_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LM_FLIPOUT_DATA", str(tmp_path))
    with pytest.raises(DataError) as error:
        load_corpus(DataConfig(path="ptb", cache_dir=str(tmp_path / "cache")))
    message = str(error.value)
    assert f"{tmp_path / 'ptb' / 'train.txt'} does not exist" in message
    assert "`lm-flipout data fetch ptb`" in message and "data.path" in message
    with pytest.raises(DataError) as error:
        load_corpus(DataConfig(path="wiki", cache_dir=str(tmp_path / "cache")))
    assert "fetch" not in str(error.value) and "Copy train.txt" in str(error.value)


def test_a_ptb_recipe_without_the_corpus_stops_with_one_paragraph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LM_FLIPOUT_DATA", str(tmp_path / "empty"))
    recipe = REPO / "recipes" / "ptb" / "word_cpu_wd_flipout.yaml"
    status = train.main([str(recipe), f"train.out_dir={tmp_path / 'runs'}",
                         "wandb.mode=disabled"])
    out, err = capsys.readouterr()
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err
    assert err.count("error:") == 1 and "\n\n" not in err
    message = " ".join(err.split())
    assert "lm-flipout data fetch ptb" in message and "data.path" in message
    assert not (tmp_path / "runs").exists()


def test_the_synthetic_corpus_in_a_relative_cache_dir_is_not_looked_for_in_the_data_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LM_FLIPOUT_DATA", str(tmp_path / "elsewhere"))
    cfg = DataConfig(source="synthetic", cache_dir=".cache/lm_flipout")
    folder = synthetic_dir(cfg)  # a finished corpus (meta.json marks it), written by hand
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_text("1 2 3\n")
    digest = hashlib.sha256(b"1 2 3\n").hexdigest()
    (folder / "meta.json").write_text(json.dumps(
        {"sha256": {split: digest for split in ("train", "valid", "test")}}))
    splits = read_synthetic_splits(cfg)
    assert splits["train"].origin == str(tmp_path / folder / "train.txt")
