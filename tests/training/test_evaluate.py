"""evaluate.py / evaluate_checkpoint: perplexity, bpc and word perplexity against a
computation written here from scratch, MC averaging, and unusable checkpoint files."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch

import evaluate
from helpers import train_tiny_run
from lm_flipout.config import Recipe, recipe_from_dict
from lm_flipout.data import load_corpus, make_batches
from lm_flipout.errors import UserError
from lm_flipout.evaluation import total_nll
from lm_flipout.model import LanguageModel
from lm_flipout.training import evaluate_checkpoint, threads, trained_run
from lm_flipout.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny noisy model trained for two epochs; returns (root, run directory)."""
    root = tmp_path_factory.mktemp("evaluate")
    return root, train_tiny_run(root, train={"epochs": 2})


def model_from(checkpoint: Path, **model_changes) -> tuple[LanguageModel, Recipe]:
    state = load_checkpoint(checkpoint)
    recipe = recipe_from_dict(state["config"], "test")
    for key, value in model_changes.items():
        setattr(recipe.model, key, value)
    model = LanguageModel(recipe.model)
    model.load_state_dict(state["model"])
    return model.eval(), recipe


def test_perplexity_bpc_and_word_ppl_match_a_direct_computation(trained) -> None:
    root, run = trained
    model, recipe = model_from(run / "best.pt")
    tokens = load_corpus(recipe.data).splits["valid"].tokens
    # Stream layout written out by hand: 3 columns of consecutive tokens; each column is
    # one sequence, scored in a single forward pass (no windows, no carried state).
    columns = 3
    rows = tokens.numel() // columns
    nll, scored = 0.0, 0
    with torch.no_grad():
        for b in range(columns):
            seq = tokens[b * rows:(b + 1) * rows]
            logits, _ = model(seq[:-1].unsqueeze(1))
            log_probs = torch.log_softmax(logits.double(), -1)[:, 0]
            nll -= log_probs[torch.arange(rows - 1), seq[1:]].sum().item()
            scored += rows - 1
    result = evaluate_checkpoint(str(run / "best.pt"), "valid", batch_size=columns, device="cpu")
    assert result["tokens"] == scored
    assert result["ppl"] == pytest.approx(math.exp(nll / scored), rel=1e-5)
    # bpc and word ppl from the raw text: characters (one newline per line) and words (+1
    # end of line each); the NLL is scaled from the scored tokens to all of the split's.
    lines = (root / "corpus" / "valid.txt").read_text().splitlines()
    n_chars = sum(len(line) + 1 for line in lines)
    n_words = sum(len(line.split()) + 1 for line in lines)
    total = nll / scored * tokens.numel()
    assert tokens.numel() == n_chars  # char tokenizer: one token per character
    assert result["bpc"] == pytest.approx(total / (n_chars * math.log(2)), rel=1e-5)
    assert result["word_ppl"] == pytest.approx(math.exp(total / n_words), rel=1e-5)
    assert result["split"] == "valid" and result["batch_size"] == columns


def test_test_split_defaults_to_batch_size_one(trained) -> None:
    _, run = trained
    result = evaluate_checkpoint(str(run / "best.pt"), device="cpu")
    assert (result["split"], result["batch_size"]) == ("test", 1)
    tokens = load_corpus(model_from(run / "best.pt")[1].data).splits["test"].tokens
    assert result["tokens"] == tokens.numel() - 1  # one stream: every token but the first


def test_auto_threads_score_like_one_thread_and_are_reported(trained, monkeypatch,
                                                             one_thread) -> None:
    """The timed windows change nothing; the result says what was chosen and how long the
    scoring took, and the process keeps its own thread count."""
    _, run = trained
    best = str(run / "best.pt")
    given = evaluate_checkpoint(best, device="cpu", threads=1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "machine_cores", lambda: 2)
    clock = iter(range(10**6))  # every reading one second later: all counts tie, 1 wins
    monkeypatch.setattr(trained_run, "ThreadChooser", functools.partial(
        threads.ThreadChooser, timer=lambda: float(next(clock))))
    timed = evaluate_checkpoint(best, device="cpu")
    assert timed["ppl"] == given["ppl"] and timed["tokens"] == given["tokens"]
    assert given["threads"] == {"threads": 1, "how": "--threads", "timings_ms": {}}
    assert timed["threads"]["how"] == "timed" and set(timed["threads"]["timings_ms"]) == {
        "1", "2"}
    assert timed["threads"]["threads"] == 1 and timed["seconds"] > 0
    assert torch.get_num_threads() == 1
    with pytest.raises(UserError, match="threads=0 must be auto"):
        evaluate_checkpoint(best, device="cpu", threads=0)


def test_mc_samples_average_noisy_predictions(trained) -> None:
    _, run = trained
    best = str(run / "best.pt")
    mean = evaluate_checkpoint(best, "valid", device="cpu")
    torch.manual_seed(0)
    mc = evaluate_checkpoint(best, "valid", mc_samples=4, device="cpu")
    torch.manual_seed(0)
    again = evaluate_checkpoint(best, "valid", mc_samples=4, device="cpu")
    assert mc["tokens"] == mean["tokens"] and mc["mc_samples"] == 4
    assert mc["ppl"] != mean["ppl"] and mc["ppl"] == again["ppl"]
    assert abs(math.log(mc["ppl"]) - math.log(mean["ppl"])) < 0.5  # same model, other draws


def test_one_mc_sample_without_noise_or_dropout_equals_mean_weights(trained) -> None:
    _, run = trained
    model, recipe = model_from(run / "best.pt", dropout_input=0.0, dropout_output=0.0)
    model.config.noise.family = "none"
    plain = LanguageModel(model.config)
    plain.load_state_dict(model.state_dict())
    corpus = load_corpus(recipe.data)
    batches = make_batches(corpus.splits["valid"].tokens, recipe.data, train=False)
    cpu = torch.device("cpu")
    assert total_nll(plain, batches, True, cpu, 1) == total_nll(plain, batches, True, cpu, 0)
    # ... while the noisy model's single sample is a different (random) prediction.
    noisy, _ = model_from(run / "best.pt")
    assert total_nll(noisy, batches, True, cpu, 1) != total_nll(noisy, batches, True, cpu, 0)


def test_evaluate_cli_prints_json_and_writes_it_beside_the_checkpoint(trained, capsys) -> None:
    _, run = trained
    assert evaluate.main([str(run / "best.pt"), "--split", "valid", "--batch-size", "3",
                          "--mc-samples", "2", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((run / "best.valid.bs3.mc2.json").read_text()) == printed
    assert {"split", "ppl", "bpc", "tokens", "word_ppl"} <= set(printed)
    assert (printed["split"], printed["batch_size"], printed["mc_samples"]) == ("valid", 3, 2)


def foreign_files(tmp_path: Path, run: Path) -> list[tuple[Path, str]]:
    good = (run / "best.pt").read_bytes()
    cases = []
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    cases.append((truncated, "Checkpoint"))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    cases.append((text, "not a PyTorch checkpoint"))
    bare = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, bare)
    cases.append((bare, "not an lm_flipout checkpoint"))
    partial = tmp_path / "partial.pt"
    save_checkpoint({"model": load_checkpoint(run / "best.pt")["model"]}, partial)
    cases.append((partial, "lacks config, vocab"))
    shapes = tmp_path / "shapes.pt"
    state = load_checkpoint(run / "best.pt")
    state["model"] = {k: v[:1] for k, v in state["model"].items()}
    save_checkpoint(state, shapes)
    cases.append((shapes, "does not fit the model"))
    cases.append((tmp_path / "missing.pt", "does not exist"))
    return cases


def test_unusable_checkpoints_are_clear_errors(trained, tmp_path, capsys) -> None:
    _, run = trained
    for path, expected in foreign_files(tmp_path, run):
        assert evaluate.main([str(path), "--device", "cpu"]) == 2, path
        captured = capsys.readouterr()
        err = captured.err.replace("\n", " ")
        assert captured.out == "" and "Traceback" not in err
        assert err.startswith("error: ") and str(path) in err and expected in err, err
    assert not list(tmp_path.glob("*.json"))  # nothing written for a failed evaluation


def test_bad_arguments_are_usage_errors(trained, capsys) -> None:
    _, run = trained
    for args in (["--batch-size", "0"], ["--mc-samples", "-1"], ["--split", "train"]):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main([str(run / "best.pt"), *args])
        assert exit_info.value.code == 2
        assert args[0] in capsys.readouterr().err
    assert evaluate.main([str(run / "best.pt"), "--device", "gpu0"]) == 2
    assert "'gpu0' is not a device" in capsys.readouterr().err
