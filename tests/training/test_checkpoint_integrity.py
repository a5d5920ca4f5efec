"""A checkpoint that changed on disk (a flipped byte in its tensor data) is refused by
evaluate and by --resume, naming the run's intact checkpoint; --allow-corrupt-checkpoint goes
on with a warning and marks what it computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import evaluate
import train
from helpers import flip_tensor_byte, tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny run trained through the command line, and its recipe file."""
    import torch

    root = tmp_path_factory.mktemp("integrity")
    recipe = write_recipe(root / "tiny.yaml", tiny_recipe(root, train={"epochs": 2}))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main([str(recipe)]) == 0
    finally:
        torch.set_num_threads(before)
    return root / "runs" / "run", recipe


def copy_run(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run under ``tmp_path``, and a recipe that trains there."""
    run, recipe = finished
    copy = tmp_path / "runs" / "run"
    shutil.copytree(run, copy)
    text = recipe.read_text().replace(str(run.parent), str(copy.parent))
    (tmp_path / "tiny.yaml").write_text(text)
    return copy, tmp_path / "tiny.yaml"


def test_evaluate_refuses_a_flipped_byte_and_names_the_intact_checkpoint(
        finished, tmp_path, capsys, one_thread) -> None:
    run, _ = copy_run(finished, tmp_path)
    assert evaluate.main([str(run / "best.pt"), "--split", "valid"]) == 0
    clean = json.loads(capsys.readouterr().out)
    flip_tensor_byte(run / "best.pt")
    assert evaluate.main([str(run / "best.pt"), "--split", "valid"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and err.startswith("error: Checkpoint ")
    assert f"{run / 'best.pt'} changed on disk" in err and f"{run / 'last.pt'} is intact" in err

    assert evaluate.main([str(run / "best.pt"), "--split", "valid",
                          "--allow-corrupt-checkpoint"]) == 0
    out, err = capsys.readouterr()
    forced = json.loads(out)
    assert forced["checkpoint_corrupt"] is True and "checkpoint_corrupt" not in clean
    assert "warning:" in err and "--allow-corrupt-checkpoint" in err
    written = json.loads((run / "best.valid.json").read_text())
    assert written["checkpoint_corrupt"] is True


def test_resume_refuses_a_flipped_last_pt_and_the_flag_marks_results(
        finished, tmp_path, capsys, one_thread) -> None:
    run, recipe = copy_run(finished, tmp_path)
    expected = json.loads((run / "results.json").read_text())
    (run / "results.json").unlink()  # training finished, scoring not: a resume only scores
    flip_tensor_byte(run / "last.pt")
    assert train.main([str(recipe), "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{run / 'last.pt'} changed on disk" in err and f"{run / 'best.pt'} is intact" in err
    assert not (run / "results.json").exists()

    assert train.main([str(recipe), "--resume", "--allow-corrupt-checkpoint"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["checkpoint_corrupt"] is True and "checkpoint_corrupt" not in expected
    assert results["test_ppl"] == expected["test_ppl"]  # best.pt was intact
