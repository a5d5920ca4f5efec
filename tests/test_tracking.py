"""Tracking: metrics.jsonl content, W&B offline runs that really hold what was logged, and a
disabled mode that never imports wandb."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm_flipout.config import Recipe, WandbConfig, to_dict
from lm_flipout.errors import UserError
from lm_flipout.tracking import Tracker, read_metrics

REPO = Path(__file__).resolve().parents[1]


def reject_constant(name: str) -> None:
    raise AssertionError(f"metrics.jsonl holds the non-JSON constant {name}")


def strict_lines(path: Path) -> list[dict]:
    """Parse JSON lines the way strict readers (browsers, jq) do: NaN/Infinity are invalid."""
    lines = path.read_text().splitlines()
    return [json.loads(line, parse_constant=reject_constant) for line in lines]


def disabled_recipe() -> Recipe:
    recipe = Recipe()
    recipe.wandb.mode = "disabled"
    return recipe


def test_metrics_jsonl_holds_one_valid_json_object_per_event(tmp_path: Path) -> None:
    shown: list[str] = []
    with Tracker(tmp_path, disabled_recipe(), echo=shown.append) as tracker:
        tracker.log({"event": "train", "loss": torch.tensor(4.5), "lr": 20}, step=50)
        tracker.log({"event": "valid", "loss": float("nan"), "ppl": float("inf")}, step=100)
        tracker.log({"event": "epoch", "epoch": 1, "grad_norm": -math.inf}, step=100)
    lines = strict_lines(tmp_path / "metrics.jsonl")
    assert lines == [
        {"event": "train", "step": 50, "loss": 4.5, "lr": 20},
        {"event": "valid", "step": 100, "loss": "NaN", "ppl": "Infinity"},
        {"event": "epoch", "step": 100, "epoch": 1, "grad_norm": "-Infinity"},
    ]
    assert list(lines[0]) == ["event", "step", "loss", "lr"]
    restored = read_metrics(tmp_path)
    assert math.isnan(restored[1]["loss"]) and restored[1]["ppl"] == math.inf
    assert shown[0] == "train | step 50 | loss 4.5 | lr 20"


def test_each_line_is_flushed_as_it_is_logged(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, disabled_recipe())
    tracker.log({"event": "train", "loss": 1.0}, step=1)
    assert strict_lines(tmp_path / "metrics.jsonl") == [{"event": "train", "step": 1, "loss": 1.0}]
    tracker.finish()


def test_resume_appends_and_a_fresh_run_starts_over(tmp_path: Path) -> None:
    for resume, step in [(False, 1), (True, 2)]:
        with Tracker(tmp_path, disabled_recipe(), resume=resume) as tracker:
            tracker.log({"event": "train"}, step=step)
    assert [line["step"] for line in strict_lines(tmp_path / "metrics.jsonl")] == [1, 2]
    with Tracker(tmp_path, disabled_recipe()) as tracker:
        tracker.log({"event": "train"}, step=3)
    assert [line["step"] for line in strict_lines(tmp_path / "metrics.jsonl")] == [3]


def test_metrics_bytes_marks_a_point_a_resume_can_cut_back_to(tmp_path: Path) -> None:
    with Tracker(tmp_path, disabled_recipe()) as tracker:
        tracker.log({"event": "train"}, step=1)
        mark = tracker.metrics_bytes()
        tracker.log({"event": "train"}, step=2)  # logged after the checkpoint, then a crash
    with open(tmp_path / "metrics.jsonl", "r+b") as handle:
        handle.truncate(mark)
    with Tracker(tmp_path, disabled_recipe(), resume=True) as tracker:
        tracker.log({"event": "train"}, step=2)
    assert [line["step"] for line in strict_lines(tmp_path / "metrics.jsonl")] == [1, 2]


def test_misuse_is_refused(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, to_dict(disabled_recipe()))  # a plain dict works too
    with pytest.raises(ValueError, match="step"):
        tracker.log({"step": 3}, step=3)
    with pytest.raises(TypeError, match="'model'"):
        tracker.log({"model": object()}, step=3)
    assert tracker.summary({"best_ppl": torch.tensor(90.5)}) == {"best_ppl": 90.5}
    tracker.finish()
    tracker.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        tracker.log({"loss": 1.0}, step=4)


def test_disabled_mode_never_imports_wandb(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from lm_flipout.config import Recipe\n"
        "from lm_flipout.tracking import Tracker\n"
        "recipe = Recipe()\n"
        "recipe.wandb.mode = 'disabled'\n"
        "with Tracker(sys.argv[1], recipe) as t:\n"
        "    t.log({'event': 'train', 'loss': 1.0}, step=1)\n"
        "    t.summary({'best': 1.0})\n"
        "print('wandb' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert not (tmp_path / "wandb").exists()


def test_missing_wandb_package_is_a_clear_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(UserError, match=r"pip install wandb.*wandb\.mode=disabled"):
        Tracker(tmp_path, Recipe())


# ------------------------------------------------------------------ W&B offline


def read_wandb_records(run_file: Path) -> list:
    """Decode an offline ``.wandb`` file: a 7-byte header, then LevelDB-log framed chunks
    (32 KiB blocks; each chunk: crc32, length, type) holding protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    block, pos, pending, records = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a chunk header: block padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk ends a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_offline_run_holds_config_history_and_summary(tmp_path: Path, wandb_env: None) -> None:
    import wandb

    recipe = Recipe()
    recipe.model.hidden_size = 650
    recipe.wandb = WandbConfig(mode="offline", project="proj", group="grp", tags=["ptb", "wd"])
    run_dir = tmp_path / "checkpoints" / "medium"
    with Tracker(run_dir, recipe) as tracker:
        tracker.log({"event": "train", "loss": 5.25}, step=10)
        tracker.log({"event": "valid", "ppl": 120.5}, step=20)
        assert tracker.summary({"best_valid_ppl": 120.5}) == {"best_valid_ppl": 120.5}
        run_id = tracker.wandb_run.id
    wandb.teardown()  # finish() returns before wandb-core has flushed the file; this waits

    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    [offline_dir] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    records = read_wandb_records(offline_dir / f"run-{run_id}.wandb")
    by_type: dict[str, list] = {}
    for record in records:
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)
    assert {"run", "history", "summary", "exit"} <= set(by_type), list(by_type)

    run = by_type["run"][0].run
    assert (run.project, run.run_group, run.display_name) == ("proj", "grp", "medium")
    assert list(run.tags) == ["ptb", "wd"]
    config = {item_key(item): json.loads(item.value_json) for item in run.config.update}
    assert config["model"]["hidden_size"] == 650 and config["wandb"]["mode"] == "offline"

    history = [
        {item_key(item): json.loads(item.value_json) for item in record.history.item}
        for record in by_type["history"]
    ]
    assert [(h["step"], h.get("train/loss"), h.get("valid/ppl")) for h in history] == [
        (10, 5.25, None),
        (20, None, 120.5),
    ]
    summary: dict = {}
    for record in by_type["summary"]:
        summary.update(
            {item_key(item): json.loads(item.value_json) for item in record.summary.update}
        )
    assert summary["best_valid_ppl"] == 120.5


def test_resume_continues_the_same_wandb_run(tmp_path: Path, wandb_env: None) -> None:
    recipe = Recipe()
    with Tracker(tmp_path / "run", recipe) as tracker:
        first_id = tracker.wandb_run.id
    with Tracker(tmp_path / "run", recipe, resume=True) as tracker:
        assert tracker.wandb_run.id == first_id
    with Tracker(tmp_path / "run", recipe) as tracker:  # a fresh start is a new W&B run
        assert tracker.wandb_run.id != first_id


def test_wandb_dir_setting_moves_the_offline_files(tmp_path: Path, wandb_env: None) -> None:
    recipe = Recipe()
    recipe.wandb.dir = str(tmp_path / "elsewhere")
    with Tracker(tmp_path / "run", recipe) as tracker:
        run_id = tracker.wandb_run.id
    assert list((tmp_path / "elsewhere" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert not (tmp_path / "run" / "wandb").exists()
