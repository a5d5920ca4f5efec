"""What results.json, metrics.jsonl, the console and W&B report and how it was measured:
valid and test carry the state across the whole split whatever bptt_mode trained on (or
reset, on request), test at data.test_batch_size (1), and no bits per character where
tokens became <unk>. Scores are checked against a computation written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import tiny_recipe
from lm_flipout.config import Recipe, from_dict, recipe_from_dict
from lm_flipout.data import load_corpus
from lm_flipout.model import LanguageModel
from lm_flipout.tracking import read_metrics
from lm_flipout.training import Trainer
from lm_flipout.training.checkpoint import load_checkpoint

# Tiny models run faster on one thread than in contention for a loaded machine's cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def train(root: Path, echo=lambda _: None, **data) -> tuple[dict, Trainer]:
    values = {"bptt_mode": "sequences", "variable_bptt": False, **data}
    recipe = from_dict(Recipe, tiny_recipe(root, data=values, train={"epochs": 1}), "test")
    trainer = Trainer(recipe, root / "runs" / "run", echo=echo)
    return trainer.run(), trainer


def best_model(run: Path) -> tuple[LanguageModel, Recipe]:
    state = load_checkpoint(run / "best.pt")
    recipe = recipe_from_dict(state["config"], "test")
    model = LanguageModel(recipe.model)
    model.load_state_dict(state["model"])
    return model.eval(), recipe


@torch.no_grad()
def nll_of(model: LanguageModel, pieces: list[torch.Tensor]) -> tuple[float, int]:
    """Summed NLL of each piece's next tokens, each piece one forward pass from a zero state."""
    nll, scored = 0.0, 0
    for seq in pieces:
        logits, _ = model(seq[:-1].unsqueeze(1))
        log_probs = torch.log_softmax(logits.double(), -1)[:, 0]
        nll -= log_probs[torch.arange(seq.numel() - 1), seq[1:]].sum().item()
        scored += seq.numel() - 1
    return nll, scored


def columns(tokens: torch.Tensor, count: int) -> list[torch.Tensor]:
    rows = tokens.numel() // count
    return [tokens[b * rows:(b + 1) * rows] for b in range(count)]


def test_sequences_mode_is_scored_carrying_the_state_and_test_at_batch_one(tmp_path) -> None:
    results, _ = train(tmp_path)
    model, recipe = best_model(tmp_path / "runs" / "run")
    splits = load_corpus(recipe.data).splits
    # valid: eval_batch_size=2 streams, each scored in one pass (the state carried through)
    nll, scored = nll_of(model, columns(splits["valid"].tokens, 2))
    assert results["valid_ppl"] == pytest.approx(math.exp(nll / scored), rel=1e-5)
    # test: one stream over the whole split
    nll, scored = nll_of(model, [splits["test"].tokens])
    assert results["test_ppl"] == pytest.approx(math.exp(nll / scored), rel=1e-5)
    assert (results["eval_carries_state"], results["valid_batch_size"],
            results["test_batch_size"]) == (True, 2, 1)
    saved = json.loads((tmp_path / "runs" / "run" / "results.json").read_text())
    assert saved["eval_carries_state"] is True and saved["test_batch_size"] == 1


def test_reset_protocol_scores_independent_sequences(tmp_path) -> None:
    results, _ = train(tmp_path, eval_protocol="reset", test_batch_size=2)
    model, recipe = best_model(tmp_path / "runs" / "run")
    tokens = load_corpus(recipe.data).splits["test"].tokens
    bptt = recipe.data.bptt
    count = (tokens.numel() - 1) // bptt // 2 * 2  # whole batches of 2 sequences
    nll, scored = nll_of(model, [tokens[k * bptt:k * bptt + bptt + 1] for k in range(count)])
    assert results["eval_carries_state"] is False and results["test_batch_size"] == 2
    assert results["test_ppl"] == pytest.approx(math.exp(nll / scored), rel=1e-5)


class SpyTracker:
    """Records every dict the run sends to metrics.jsonl / W&B, then passes it on."""

    def __init__(self, tracker) -> None:
        self.tracker, self.sent = tracker, []

    def log(self, metrics, step):
        self.sent.append(dict(metrics))
        return self.tracker.log(metrics, step)

    def summary(self, values):
        self.sent.append(dict(values))
        return self.tracker.summary(values)

    def __getattr__(self, name):
        return getattr(self.tracker, name)


def test_no_bits_per_character_where_words_became_unk(tmp_path) -> None:
    said: list[str] = []
    values = {"tokenizer": "word", "vocab_size": 6, "bptt_mode": "stream", "variable_bptt": False}
    recipe = from_dict(Recipe, tiny_recipe(tmp_path, data=values, train={"epochs": 2}), "test")
    trainer = Trainer(recipe, tmp_path / "runs" / "run", echo=said.append)
    trainer.tracker = spy = SpyTracker(trainer.tracker)
    results = trainer.run()
    run = tmp_path / "runs" / "run"
    saved = json.loads((run / "results.json").read_text())
    events = read_metrics(run)
    undefined = ("_bpc", "_word_ppl")
    for record in [results, saved, *events, *spy.sent]:
        assert not [k for k in record if k.endswith(undefined)], record
    assert "valid_ppl" in saved and "test_ppl" in saved
    notes = [line for line in said if "bits per character" in line]
    assert len(notes) == 1 and " valid " in notes[0] and "data.vocab_size" in notes[0]
    assert not [line for line in said if "bpc" in line]


def test_bits_per_character_where_every_character_is_accounted_for(tmp_path) -> None:
    said: list[str] = []
    results, _ = train(tmp_path, echo=said.append)
    assert {"valid_bpc", "test_bpc", "valid_word_ppl", "test_word_ppl"} <= set(results)
    assert not [line for line in said if "Bits per character" in line]
    assert [line for line in said if line.startswith("done") and "test bpc" in line]
