"""Resuming in-process: crashes at every awkward point of an epoch's end give exactly the
results of an uninterrupted run; max_steps and resume; what a resume may and may not change;
unusable last.pt files; the deterministic option."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import train
from helpers import snapshot, tiny_recipe, write_recipe
from lm_flipout.config import Recipe, from_dict
from lm_flipout.errors import DataError, TrainingError
from lm_flipout.tracking import read_metrics
from lm_flipout.training import AlreadyFinished, Trainer, loop
from lm_flipout.training.checkpoint import load_checkpoint, save_checkpoint

COMPARED = ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc", "valid_word_ppl", "steps",
            "epochs", "best_epoch")


class Crash(Exception):
    """Stands for the process dying at this point."""


def make_recipe(root: Path, **sections) -> Recipe:
    return from_dict(Recipe, tiny_recipe(root, **sections), "test recipe")


def train_run(root: Path, run: str, resume: bool = False, messages=None, **sections) -> dict:
    recipe = make_recipe(root, **sections)
    echo = messages.append if messages is not None else (lambda _: None)
    return Trainer(recipe, root / "runs" / run, resume=resume, echo=echo).run()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its directory (under a root shared with the tests' runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("resume")
    results = train_run(root, "reference", train={"checkpoint_every_steps": 1})
    yield root, results
    torch.set_num_threads(before)


def same_results(a: dict, b: dict) -> None:
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


def crash_when(monkeypatch, method: str, condition) -> None:
    """Make ``Trainer.<method>`` raise Crash the first time ``condition(trainer)`` holds."""
    original = getattr(Trainer, method)
    fired = []

    def wrapper(self, *args, **kwargs):
        if not fired and condition(self, *args):
            fired.append(True)
            raise Crash(method)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, method, wrapper)


@pytest.mark.parametrize("dies_in", ["_save_best", "_save_last"])
def test_crash_while_saving_at_an_epoch_end_resumes_exactly(reference, monkeypatch,
                                                            dies_in) -> None:
    """The process dies at the end of epoch 2 in the middle of writing best.pt or last.pt
    (whichever is written second is then missing, whichever first is already new)."""
    root, expected = reference
    run = f"crash{dies_in}"
    crash_when(monkeypatch, dies_in,
               lambda t: t.progress.epoch == 3 and t.progress.position == 0)
    with pytest.raises(Crash):
        train_run(root, run, train={"checkpoint_every_steps": 1})
    run_dir = root / "runs" / run
    assert load_checkpoint(run_dir / "last.pt")["progress"]["epoch"] == 2
    monkeypatch.undo()
    messages: list[str] = []
    resumed = train_run(root, run, resume=True, messages=messages,
                        train={"checkpoint_every_steps": 1})
    same_results(resumed, expected)
    assert any("Resuming" in m and "epoch 2" in m for m in messages)
    # metrics.jsonl was cut back to last.pt and continued: one valid event per epoch.
    valid = [e["epoch"] for e in read_metrics(run_dir) if e["event"] == "valid"]
    assert valid == [1, 2, 3]


def test_crash_during_validation_after_the_last_step_resumes_exactly(reference,
                                                                       monkeypatch) -> None:
    root, expected = reference
    # last.pt holds the end-of-epoch position (checkpoint every step); validation then dies.
    crash_when(monkeypatch, "_evaluate",
               lambda t, split, *rest: split == "valid" and t.progress.epoch == 2)
    with pytest.raises(Crash):
        train_run(root, "eval_crash", train={"checkpoint_every_steps": 1})
    last = load_checkpoint(root / "runs" / "eval_crash" / "last.pt")["progress"]
    assert last["epoch"] == 2 and last["position"] > 0
    monkeypatch.undo()
    same_results(train_run(root, "eval_crash", resume=True,
                           train={"checkpoint_every_steps": 1}), expected)


def test_crash_before_the_final_evaluation_resumes_exactly(reference, monkeypatch) -> None:
    root, expected = reference
    crash_when(monkeypatch, "_final_results", lambda t: True)
    with pytest.raises(Crash):
        train_run(root, "final_crash", train={"checkpoint_every_steps": 1})
    assert not (root / "runs" / "final_crash" / "results.json").exists()
    monkeypatch.undo()
    messages: list[str] = []
    resumed = train_run(root, "final_crash", resume=True, messages=messages,
                        train={"checkpoint_every_steps": 1})
    same_results(resumed, expected)
    assert not any(m.startswith("epoch ") for m in messages)  # nothing was retrained


def test_results_record_the_revision_the_finishing_process_started_from(reference,
                                                                        monkeypatch) -> None:
    """The checkout may change while a run trains (a commit, an edit): results.json names the
    code the finishing process loaded when it started, not what the tree holds at its end."""
    root, _ = reference
    monkeypatch.setattr(loop, "git_revision", lambda: "aaaaaaa")
    crash_when(monkeypatch, "_final_results", lambda t: True)
    with pytest.raises(Crash):
        train_run(root, "revision", train={"checkpoint_every_steps": 1})
    monkeypatch.undo()
    revisions = iter(["bbbbbbb", "ccccccc-dirty"])  # at the resume's start, then later
    monkeypatch.setattr(loop, "git_revision", lambda: next(revisions))
    results = train_run(root, "revision", resume=True, train={"checkpoint_every_steps": 1})
    assert results["git_rev"] == "bbbbbbb"
    recorded = json.loads((root / "runs" / "revision" / "results.json").read_text())
    assert recorded["git_rev"] == "bbbbbbb"


def test_resume_without_a_checkpoint_starts_from_the_beginning(reference) -> None:
    root, expected = reference
    messages: list[str] = []
    results = train_run(root, "fresh_resume", resume=True, messages=messages,
                        train={"checkpoint_every_steps": 1})
    same_results(results, expected)
    assert any("no checkpoint" in m and "from the beginning" in m for m in messages)


def test_max_steps_stops_mid_epoch_and_resumes_to_the_same_results(reference,
                                                                     monkeypatch) -> None:
    root, full = reference
    max_steps = full["steps"] // 3 + 5  # inside epoch 2
    settings = {"checkpoint_every_steps": 1, "max_steps": max_steps}
    expected = train_run(root, "max_steps", train=settings)
    assert expected["steps"] == max_steps and expected["epochs"] == 2
    # Killed right after the checkpoint of the last allowed step, before the epoch's end.
    crash_when(monkeypatch, "_end_epoch", lambda t: t.progress.step == max_steps)
    with pytest.raises(Crash):
        train_run(root, "max_steps_crash", train=settings)
    last = load_checkpoint(root / "runs" / "max_steps_crash" / "last.pt")
    assert last["progress"]["step"] == max_steps
    monkeypatch.undo()
    same_results(train_run(root, "max_steps_crash", resume=True, train=settings), expected)


def test_resume_of_a_run_written_before_a_setting_existed(reference) -> None:
    """A last.pt whose stored recipe lacks keys added to the schema since (here the
    evaluation protocol's) resumes: the missing keys count as their defaults."""
    root, _ = reference
    run_dir = root / "runs" / "older"
    shutil.copytree(root / "runs" / "reference", run_dir)
    (run_dir / "results.json").unlink()
    last = load_checkpoint(run_dir / "last.pt")
    del last["config"]["data"]["eval_protocol"], last["config"]["data"]["test_batch_size"]
    save_checkpoint(last, run_dir / "last.pt")
    messages: list[str] = []
    Trainer(make_recipe(root), run_dir, resume=True, echo=messages.append)
    assert not [m for m in messages if "eval_protocol" in m or "test_batch_size" in m]
    last["config"]["data"]["bptt"] = 5  # a key the run did record still has to match
    save_checkpoint(last, run_dir / "last.pt")
    with pytest.raises(TrainingError, match=r"data\.bptt: run 5, now 8"):
        Trainer(make_recipe(root), run_dir, resume=True)


def test_resume_refuses_changes_to_the_experiment_and_accepts_lr(reference) -> None:
    root, _ = reference
    source = root / "runs" / "reference"
    run_dir = root / "runs" / "changes"
    shutil.copytree(source, run_dir)
    (run_dir / "results.json").unlink()  # unfinished again, last.pt at the end of training
    before = snapshot(run_dir)
    with pytest.raises(TrainingError) as caught:
        Trainer(make_recipe(root, model={"hidden_size": 32, "embedding_size": 32}), run_dir,
                resume=True)
    text = str(caught.value)
    assert "model.hidden_size: run 16, now 32" in text and "config.yaml" in text
    with pytest.raises(TrainingError, match=r"train\.seed: run 7, now 8"):
        Trainer(make_recipe(root, train={"seed": 8}), run_dir, resume=True)
    assert snapshot(run_dir) == before
    messages: list[str] = []
    trainer = Trainer(make_recipe(root, optim={"lr": 0.005}, train={"epochs": 4}), run_dir,
                      resume=True, echo=messages.append)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert "--resume: optim.lr changed from 0.01 to 0.005." in messages
    assert "--resume: train.epochs changed from 3 to 4." in messages
    # Nothing is rewritten before training goes on (metrics.jsonl is cut back to last.pt);
    # the trainer holds the run's lock file.
    after = snapshot(run_dir)
    assert after.pop("run.lock").startswith(b"pid ")
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == {
        k: v for k, v in before.items() if k != "metrics.jsonl"}
    assert before["metrics.jsonl"].startswith(after["metrics.jsonl"])
    results = trainer.run()
    assert results["epochs"] == 4
    config = (run_dir / "config.yaml").read_text()  # config.yaml: what ran last
    assert "lr: 0.005" in config and "epochs: 4" in config


def test_finished_run_is_reported_and_a_new_start_is_refused(reference) -> None:
    root, _ = reference
    run_dir = root / "runs" / "reference"
    before = snapshot(run_dir)
    with pytest.raises(AlreadyFinished) as done:
        Trainer(make_recipe(root), run_dir, resume=True)
    assert done.value.results == json.loads((run_dir / "results.json").read_text())
    with pytest.raises(TrainingError, match="already holds a run .*Nothing was changed"):
        Trainer(make_recipe(root), run_dir)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "best_pt", "wrong_shapes"])
def test_unusable_last_pt_on_resume_is_a_clear_error(reference, tmp_path, capsys,
                                                       damage) -> None:
    root, _ = reference
    good = root / "runs" / "reference" / "last.pt"
    recipe = tiny_recipe(root, train={"out_dir": str(tmp_path), "run_name": "run"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    last = run_dir / "last.pt"
    if damage == "truncated":
        last.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        expected = "Checkpoint"  # (the wording is checkpoint.py's; see test_checkpoint.py)
    elif damage == "garbage":
        last.write_bytes(b"this is not a checkpoint\n" * 10)
        expected = "not a PyTorch checkpoint"
    elif damage == "best_pt":
        shutil.copy(root / "runs" / "reference" / "best.pt", last)
        expected = "lacks optimizer, schedule"
    else:
        state = load_checkpoint(good)
        state["model"] = {k: v[:1] for k, v in state["model"].items()}
        save_checkpoint(state, last)
        expected = "does not fit the model"
    before = snapshot(run_dir)
    code = train.main([str(write_recipe(tmp_path / "r.yaml", recipe)), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and str(last) in err.replace("\n", " ")
    assert expected in err.replace("\n", " ")
    assert snapshot(run_dir) == before  # nothing overwritten


def test_deterministic_option_trains_on_cpu_with_the_same_results(reference) -> None:
    root, expected = reference
    try:
        results = train_run(root, "deterministic",
                            train={"checkpoint_every_steps": 1, "deterministic": True})
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    same_results(results, expected)


def test_train_tokens_trains_on_the_first_tokens_only(tmp_path) -> None:
    recipe = from_dict(Recipe, tiny_recipe(tmp_path, data={"train_tokens": 123}), "test recipe")
    trainer = Trainer(recipe, tmp_path / "runs" / "cut", echo=lambda _: None)
    trainer.tracker.finish()
    tokens = trainer.corpus.splits["train"].tokens
    assert tokens.numel() > 200  # the cut is real
    streams = trainer.train_batches.streams  # (rows, batch): column b is one stretch of text
    assert streams.shape == (123 // 4, 4)
    assert torch.equal(streams.t().reshape(-1), tokens[:streams.numel()])
    assert trainer.eval_batches["valid"].streams.numel() > 0  # valid/test are not cut

    small = from_dict(Recipe, tiny_recipe(tmp_path, data={"train_tokens": 20}), "test recipe")
    with pytest.raises(DataError, match=r"train \(cut to data.train_tokens=20\) split has 20"):
        Trainer(small, tmp_path / "runs" / "too_small", echo=lambda _: None)
    assert not (tmp_path / "runs" / "too_small").exists()


def test_recurrent_dropout_zoneout_and_onehot_resume_exactly_after_a_crash_mid_epoch(
        reference, monkeypatch) -> None:
    """Their per-step masks come from the saved random state: a run killed mid-epoch and
    resumed gives the uninterrupted run's results (with one-hot input, which the
    checkpoints hold without an embedding matrix)."""
    root, _ = reference
    model = {"dropout_cell": 0.25, "zoneout_cell": 0.5, "zoneout_hidden": 0.05,
             "input_encoding": "onehot", "tie_weights": False}
    settings = {"checkpoint_every_steps": 1, "epochs": 2}
    expected = train_run(root, "cell_masks", model=model, train=settings)
    crash_at = expected["steps"] // 4 + 3  # inside epoch 1
    crash_when(monkeypatch, "_train_step", lambda t, *_: t.progress.step == crash_at)
    with pytest.raises(Crash):
        train_run(root, "cell_masks_crash", model=model, train=settings)
    monkeypatch.undo()
    same_results(train_run(root, "cell_masks_crash", resume=True, model=model,
                           train=settings), expected)


def test_resume_refuses_data_whose_text_changed(reference) -> None:
    """The vocabulary can stay the same while a split's text changes (here one validation
    character swapped for another): the run's digests catch it before anything is written."""
    root, _ = reference
    run_dir = root / "runs" / "changed_data"
    shutil.copytree(root / "runs" / "reference", run_dir)
    (run_dir / "results.json").unlink()
    moved = root / "moved_corpus"
    shutil.copytree(root / "corpus", moved)
    valid = (moved / "valid.txt").read_text()
    other = next(c for c in valid if c not in (valid[0], "\n"))  # vocabulary: from train
    (moved / "valid.txt").write_text(other + valid[1:])
    before = snapshot(run_dir)
    with pytest.raises(DataError) as caught:
        Trainer(make_recipe(root, data={"path": str(moved)}), run_dir, resume=True)
    text = " ".join(str(caught.value).split())
    assert text.startswith("--resume: the valid split is not the text")
    assert "train.run_name=NAME" in text
    assert snapshot(run_dir) == before
    (moved / "valid.txt").write_text(valid)  # the same text in another place resumes
    Trainer(make_recipe(root, data={"path": str(moved)}), run_dir, resume=True)
