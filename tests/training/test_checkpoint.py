"""Checkpoints: atomic writes, safe and well-explained loading, RNG capture and restore."""

from __future__ import annotations

import os
import pathlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_flipout.errors import CheckpointError
from lm_flipout.training import checkpoint
from lm_flipout.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def small_state() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "best_valid": float("inf"),
        "config": {"model": {"hidden_size": 650}, "wandb": {"tags": ["a"]}},
    }


def test_round_trip_keeps_tensors_and_plain_data(tmp_path: Path) -> None:
    state = small_state()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert set(loaded) == set(state)  # the format marker is checked and removed
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert loaded["epoch"] == 3 and loaded["best_valid"] == float("inf")
    assert loaded["config"] == state["config"]
    # what save wrote loads with plain weights_only torch.load
    assert torch.load(path, weights_only=True)["format"] == checkpoint.FORMAT


def test_save_refuses_objects_that_weights_only_loading_would_reject(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['extra'\]\['rng'\] is a numpy.ndarray"):
        save_checkpoint({"extra": {"rng": np.zeros(3)}}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_failed_rename_keeps_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_crash_while_writing_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def half_write(obj: object, handle) -> None:  # writes part of the bytes, then dies
        real_save(obj, handle)
        handle.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"best\.pt does not exist"):
        load_checkpoint(tmp_path / "best.pt")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_truncated_file_is_explained_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(small_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "truncated or corrupted" in message
    assert "\n" not in message and "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        load_checkpoint(path)


def test_text_file_renamed_to_pt(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hidden_size: 650\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt is not a PyTorch checkpoint file"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this would create a file: the load must refuse instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_with_arbitrary_objects_is_refused_and_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    marker = tmp_path / "code_ran"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "contains Python objects" in str(info.value) and str(path) in str(info.value)
    assert "Weights only load failed" not in str(info.value)
    assert not marker.exists()


def test_loadable_but_foreign_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"no 'format' marker.*bare state_dict"):
        load_checkpoint(path)


def test_other_format_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": "lm_flipout/99", "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"format 'lm_flipout/99'"):
        load_checkpoint(path)


def draw_all() -> tuple:
    """A few numbers from every generator, including the cached second Gaussian draws."""
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1) for _ in range(3)],
        np.random.rand(3).tolist() + np.random.standard_normal(3).tolist(),
        torch.rand(3).tolist() + torch.randn(3).tolist(),
    )


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # odd number of draws: the cached Gaussians are part of the state
    np.random.standard_normal(1)
    save_checkpoint({"rng": rng_state()}, tmp_path / "last.pt")
    expected = draw_all()

    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    assert draw_all() != expected
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert draw_all() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_round_trips(tmp_path: Path) -> None:
    save_checkpoint({"rng": rng_state()}, tmp_path / "last.pt")
    expected = torch.rand(4, device="cuda").tolist()
    torch.rand(4, device="cuda")
    set_rng_state(load_checkpoint(tmp_path / "last.pt", map_location="cuda")["rng"])
    assert torch.rand(4, device="cuda").tolist() == expected


def test_set_rng_state_rejects_incomplete_state() -> None:
    state = rng_state()
    del state["numpy"]
    with pytest.raises(CheckpointError, match="lacks numpy"):
        set_rng_state(state)


def test_truncated_multi_tensor_checkpoint_is_reported_as_truncated(tmp_path):
    from lm_flipout.errors import CheckpointError
    from lm_flipout.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({f"w{i}": torch.randn(64, 64) for i in range(8)}, path)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(path)


def test_a_flipped_byte_in_tensor_data_is_refused_naming_the_intact_other_checkpoint(
        tmp_path: Path) -> None:
    from helpers import flip_tensor_byte

    state = small_state()
    save_checkpoint(state, tmp_path / "best.pt")
    save_checkpoint(state, tmp_path / "last.pt")
    flip_tensor_byte(tmp_path / "best.pt")
    raw = torch.load(tmp_path / "best.pt", weights_only=True)  # torch itself notices nothing
    tensors = [*state["model"].values(),
               *(s["momentum_buffer"] for s in state["optimizer"]["state"].values())]
    loaded = [*raw["model"].values(),
              *(s["momentum_buffer"] for s in raw["optimizer"]["state"].values())]
    assert sum(not torch.equal(a, b) for a, b in zip(tensors, loaded)) == 1
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "best.pt")
    text = str(caught.value)
    assert f"Checkpoint {tmp_path / 'best.pt'} changed on disk" in text
    assert f"{tmp_path / 'last.pt'} is intact" in text and "--allow-corrupt-checkpoint" in text
    assert checkpoint.CORRUPT_KEY not in load_checkpoint(tmp_path / "last.pt")


def test_a_changed_plain_value_is_refused_and_both_damaged_is_said(tmp_path: Path) -> None:
    for name in ("best.pt", "last.pt"):
        save_checkpoint(small_state(), tmp_path / name)
        edited = torch.load(tmp_path / name, weights_only=True)
        edited["epoch"] = 4  # the stored digest still describes epoch 3
        torch.save(edited, tmp_path / name)
    with pytest.raises(CheckpointError, match="is damaged too"):
        load_checkpoint(tmp_path / "last.pt")


def test_allow_corrupt_loads_with_a_warning_and_marks_the_state(tmp_path: Path, capsys) -> None:
    from helpers import flip_tensor_byte

    save_checkpoint(small_state(), tmp_path / "last.pt")
    flip_tensor_byte(tmp_path / "last.pt")
    state = load_checkpoint(tmp_path / "last.pt", allow_corrupt=True)
    assert state[checkpoint.CORRUPT_KEY] is True and "model" in state
    assert "warning:" in capsys.readouterr().err
    assert "No other checkpoint of the run" in checkpoint.corrupt_message(tmp_path / "last.pt")


def test_checkpoints_from_before_the_checksum_still_load(tmp_path: Path) -> None:
    state = small_state()
    torch.save({**state, checkpoint.FORMAT_KEY: checkpoint.FORMAT}, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert set(loaded) == set(state) and torch.equal(loaded["model"]["weight"],
                                                     state["model"]["weight"])


def test_the_digest_sees_every_kind_of_value_and_ignores_storage_layout() -> None:
    base = {"w": torch.arange(6.0).reshape(2, 3), "n": 1, "f": 0.1, "s": "a", "t": (1, 2),
            "b": True, "x": None, "raw": b"\x00"}
    digest = checkpoint.content_digest(base)
    assert checkpoint.content_digest({**base, "w": base["w"].t().contiguous().t()}) == digest
    for change in ({"w": base["w"].reshape(3, 2)}, {"w": base["w"].double()}, {"n": True},
                   {"f": 0.1 + 2 ** -56}, {"s": "b"}, {"t": (1, 3)}, {"x": 0}, {"raw": b"\x01"}):
        assert checkpoint.content_digest({**base, **change}) != digest, change
