"""A stop signal during the final scoring stops at once (143 / 130), leaves the run
resumable, and --resume scores only the splits left, to the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import pytest

import train
from helpers import tiny_recipe, write_recipe
from lm_flipout.training import loop
from lm_flipout.training.run_dir import PARTIAL_FILE


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_scoring_stops_at_once_and_resume_scores_the_rest(
        tmp_path, monkeypatch, capsys, one_thread, signum) -> None:
    reference = write_recipe(tmp_path / "reference.yaml", tiny_recipe(
        tmp_path, train={"epochs": 2, "run_name": "reference"}))
    assert train.main([str(reference)]) == 0
    expected = json.loads((tmp_path / "runs" / "reference" / "results.json").read_text())
    recipe = write_recipe(tmp_path / "stopped.yaml", tiny_recipe(
        tmp_path, train={"epochs": 2, "run_name": "stopped"}))

    real_evaluate = loop.Trainer._evaluate
    scored: list[str] = []

    def evaluate(self, split, mc_samples=0):
        scored.append(split)
        if split == "test" and signals is not None:  # only the final scoring scores test
            signals_sent.append(signals)
            os.kill(os.getpid(), signals)  # the handler runs before the next line would
        return real_evaluate(self, split, mc_samples)

    signals, signals_sent = signum, []
    monkeypatch.setattr(loop.Trainer, "_evaluate", evaluate)
    assert train.main([str(recipe)]) == 128 + signum
    err = capsys.readouterr().err
    run = tmp_path / "runs" / "stopped"
    assert signals_sent == [signum] and "Traceback" not in err
    assert "Stopped during the final scoring" in err and "--resume" in err
    assert not (run / "results.json").exists() and not (run / "run.lock").exists()
    assert set(json.loads((run / PARTIAL_FILE).read_text())["scores"]) == {"valid"}

    signals, scored[:] = None, []
    assert train.main([str(recipe), "--resume"]) == 0
    assert scored == ["test"]  # training had finished and valid was scored before the stop
    results = json.loads((run / "results.json").read_text())
    for key in ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc", "steps", "best_epoch"):
        assert results[key] == expected[key], key
    assert not (run / PARTIAL_FILE).exists()
