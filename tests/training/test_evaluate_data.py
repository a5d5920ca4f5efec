"""evaluate.py when the data moved (--data-path, data.* overrides) or changed (refused, or
scored with a loud warning), and old-format or raw-pickle checkpoints."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

import evaluate
from helpers import train_tiny_run
from lm_flipout.data.raw import digest_of
from lm_flipout.errors import CheckpointError
from lm_flipout.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for one epoch; returns (root, best.pt)."""
    root = tmp_path_factory.mktemp("evaluate_data")
    return root, train_tiny_run(root, train={"epochs": 1}) / "best.pt"


def scored(capsys, *args: str) -> tuple[int, dict, str]:
    status = evaluate.main(list(args))
    out, err = capsys.readouterr()
    return status, (json.loads(out) if status == 0 else {}), " ".join(err.split())


def test_checkpoints_record_the_digest_of_each_split(trained) -> None:
    root, best = trained
    digests = load_checkpoint(best)["data_digests"]
    for split in ("train", "valid", "test"):
        assert digests[split] == digest_of((root / "corpus" / f"{split}.txt").read_bytes())
    assert load_checkpoint(best.parent / "last.pt")["data_digests"] == digests


def test_moved_data_is_found_with_data_path_or_an_override(trained, tmp_path, capsys) -> None:
    root, best = trained
    status, where_trained, _ = scored(capsys, str(best))
    assert status == 0
    moved = tmp_path / "moved"
    shutil.copytree(root / "corpus", moved)
    (root / "corpus").rename(root / "corpus.away")
    try:
        status, _, err = scored(capsys, str(best))
        assert status == 2 and "--data-path DIR" in err and "Traceback" not in err
        status, result, _ = scored(capsys, str(best), "--data-path", str(moved))
        assert status == 0 and result["ppl"] == where_trained["ppl"]
        status, result, _ = scored(capsys, str(best), f"data.path={moved}", "--split", "valid")
        assert status == 0 and result["split"] == "valid"
        status, _, err = scored(capsys, str(best), f"data.path={moved}", "model.hidden_size=8")
        assert status == 2 and "model.hidden_size cannot be overridden" in err
    finally:
        (root / "corpus.away").rename(root / "corpus")


def test_a_changed_split_is_refused_or_scored_with_a_loud_warning(trained, tmp_path, capsys):
    root, best = trained
    changed = tmp_path / "changed"
    shutil.copytree(root / "corpus", changed)
    test_file = changed / "test.txt"
    test_file.write_text(test_file.read_text() + test_file.read_text())
    status, _, err = scored(capsys, str(best), "--data-path", str(changed))
    assert status == 2 and "Traceback" not in err
    assert "The test split is not the text" in err and "--allow-changed-data" in err
    status, result, err = scored(capsys, str(best), "--data-path", str(changed),
                                 "--allow-changed-data")
    assert status == 0 and result["data_changed"] is True
    assert err.startswith("WARNING: The test split is not the text")
    status, result, _ = scored(capsys, str(best), "--data-path", str(changed), "--split", "valid")
    assert status == 0 and "data_changed" not in result  # the valid split is unchanged


@pytest.mark.parametrize("kind", ["raw_pickle", "old_torch_format"])
def test_raw_pickle_and_old_format_checkpoints_get_our_own_message(tmp_path, kind) -> None:
    path = tmp_path / "old.pt"
    if kind == "raw_pickle":
        path.write_bytes(pickle.dumps({"model": {}}))
    else:
        torch.save({"model": {"w": torch.zeros(2)}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    text = str(caught.value)
    assert str(path) in text and "old format" in text and "weights_only" not in text
