"""Exported model folders: `lm-flipout export`, `load_pretrained` (no pickle), perplexity of
raw text equal to `evaluate`'s, and the word, char and SentencePiece tokenizers rebuilt
without the corpus."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import lm_flipout
from lm_flipout.cli.main import main
from lm_flipout.cli.trained_model import from_checkpoint
from lm_flipout.config import recipe_from_dict
from lm_flipout.data import load_corpus
from lm_flipout.data import run_tokenizer as run_tokenizer_module
from lm_flipout.errors import UserError
from lm_flipout.training import evaluate_checkpoint
from lm_flipout.training.checkpoint import load_checkpoint

TOKENIZERS = ["word", "char", "sentencepiece"]


def forbid_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an exported model must load without torch.load or pickle")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"),
                        (pickle, "Unpickler")):
        monkeypatch.setattr(owner, name, refuse)


@pytest.fixture
def exported(tiny_trained_run, tmp_path):
    """``make(tokenizer)``: (run directory, export folder) of a tiny trained run."""
    def make(tokenizer: str) -> tuple[Path, Path]:
        run = tiny_trained_run(tokenizer)
        folder = tmp_path / f"model-{tokenizer}"
        assert main(["export", str(run / "best.pt"), str(folder)]) == 0
        return run, folder
    return make


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_perplexity_of_a_split_equals_evaluate_at_batch_size_one(exported, tokenizer,
                                                                 monkeypatch) -> None:
    run, folder = exported(tokenizer)
    expected = {split: evaluate_checkpoint(str(run / "best.pt"), split, batch_size=1,
                                           device="cpu")["ppl"] for split in ("valid", "test")}
    forbid_pickle(monkeypatch)
    lm = lm_flipout.load_pretrained(folder)
    assert isinstance(lm.model, torch.nn.Module) and not lm.model.training
    corpus_dir = run.parents[1] / "corpus"
    for split, ppl in expected.items():
        assert lm.perplexity((corpus_dir / f"{split}.txt").read_text()) == pytest.approx(
            ppl, rel=1e-12)
    assert 1 < lm.perplexity("the cat sat on a mat\n") < 1e6  # short text: shorter windows


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_tokenizers_round_trip_as_the_corpus_tokenizes(exported, tokenizer, monkeypatch) -> None:
    run, folder = exported(tokenizer)
    state = load_checkpoint(run / "best.pt")
    corpus = load_corpus(recipe_from_dict(state["config"], "test").data)
    # neither the checkpoint's tokenizer nor the folder's reads the corpus
    monkeypatch.setattr(run_tokenizer_module, "load_corpus",
                        lambda cfg: pytest.fail("the corpus was read"))
    for tok in (from_checkpoint(str(run / "best.pt")).tokenizer,
                lm_flipout.load_pretrained(folder).tokenizer):
        assert tok.kind == tokenizer and tok.vocab == corpus.vocab
        for split in ("train", "valid", "test"):
            text = (run.parents[1] / "corpus" / f"{split}.txt").read_text()
            encoded = tok.encode(text)
            assert encoded.ids == corpus.splits[split].tokens.tolist()
            assert tok.decode(encoded.ids) == corpus.decode(corpus.splits[split].tokens)
            assert tok.decode(encoded.ids) == text  # the tiny corpus is normalized text
    files = {"word": "vocab.json", "char": "vocab.json", "sentencepiece": "tokenizer.model"}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "model.safetensors", files[tokenizer]])


def test_a_folder_writes_what_its_checkpoint_writes(exported) -> None:
    run, folder = exported("word")
    from_folder = lm_flipout.load_pretrained(folder)
    from_run = from_checkpoint(str(run / "best.pt"))
    for seed in (1, 2):
        text = from_folder.generate("the cat", tokens=12, seed=seed, top_k=5)
        assert text == from_run.generate("the cat", tokens=12, seed=seed, top_k=5)
        assert text.startswith("the cat") and len(text.split()) > 2
    with pytest.warns(UserWarning, match="'zebra'"):
        assert from_folder.generate("the zebra", tokens=1, seed=0).startswith("the <unk>")
    state = from_run.model.state_dict()
    for key, value in from_folder.model.state_dict().items():
        assert torch.equal(value, state[key])
    assert from_folder.model.decoder.weight is from_folder.model.embedding.weight  # still tied


def test_export_refuses_a_non_empty_folder_unless_forced(tiny_trained_run, tmp_path,
                                                         capsys) -> None:
    checkpoint = str(tiny_trained_run("char") / "best.pt")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["export", checkpoint, str(folder)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert main(["export", checkpoint, str(folder), "--force"]) == 0
    (folder / "tokenizer.model").write_bytes(b"an older export's")  # replaced by vocab.json
    assert main(["export", checkpoint, str(folder), "--force"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "notes.txt", "vocab.json"]
    assert (folder / "notes.txt").read_text() == "mine"
    assert main(["export", checkpoint, str(folder / "notes.txt")]) == 2
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "new")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is a file" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text("{not json"), "cannot be read as JSON"),
    (lambda d: (d / "config.json").write_text('{"format": "other/9"}'), "has format 'other/9'"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 20), "cannot be loaded"),
    (lambda d: (d / "vocab.json").unlink(), "lacks its tokenizer file vocab.json"),
    (lambda d: (d / "vocab.json").write_text('["<eos>", "<unk>"]'),
     "has 2 tokens but its config.json describes a model of 18"),
    (lambda d: _edit_config(d, embedding_size=8, hidden_size=8), "cannot be loaded"),
    (lambda d: _edit_config(d, dropout_input=2.0), "model.dropout_input"),
])
def test_a_damaged_folder_is_a_clear_error(exported, damage, message) -> None:
    _, folder = exported("char")
    damage(folder)
    with pytest.raises(UserError, match=message) as error:
        lm_flipout.load_pretrained(folder)
    assert str(folder) in str(error.value)


def _edit_config(folder: Path, **model: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("train", ["the cat sat\na dog ran\n", "t h e _ c a t\na _ d o g\n"])
def test_ptb_character_form_is_read_as_the_corpus_reads_it(tmp_path, train) -> None:
    from lm_flipout.data import DataConfig
    from lm_flipout.data.run_tokenizer import tokenizer_of_run

    for name, text in (("train", train), ("valid", train), ("test", train[::-1].strip() + "\n")):
        (tmp_path / f"{name}.txt").write_text(text)
    cfg = DataConfig(path=str(tmp_path), tokenizer="char", char_ptb=True,
                     cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg)
    tok = tokenizer_of_run(cfg, corpus.vocab, None, "test")
    assert tok.encode(train).ids == corpus.splits["train"].tokens.tolist()
    assert tok.decode(tok.encode(train).ids) == corpus.decode(corpus.splits["train"].tokens)


def test_the_readme_example_runs_on_an_exported_folder(exported) -> None:
    import re

    from helpers import REPO

    run, folder = exported("word")
    readme = (REPO / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                if "load_pretrained" in block)
    test_text = run.parents[1] / "corpus" / "test.txt"
    code = code.replace("models/<run>", str(folder)).replace("test.txt", str(test_text))
    scope: dict = {}
    with pytest.warns(UserWarning, match="'stock'"):  # a word the tiny corpus lacks
        exec(code, scope)
    assert scope["lm"].perplexity(test_text.read_text()) > 1


def test_a_last_checkpoint_taken_while_averaging_exports_the_averaged_weights(
        tmp_path, monkeypatch) -> None:
    from helpers import train_tiny_run
    from lm_flipout.training.schedules import Schedule

    monkeypatch.setattr(Schedule, "stalled", lambda self, loss: True)  # average from epoch 2
    run = train_tiny_run(tmp_path, optim={"name": "nt_asgd", "lr": 2.0, "clip": 0.5},
                         train={"epochs": 2})
    assert main(["export", str(run / "last.pt"), str(tmp_path / "model")]) == 0
    lm = lm_flipout.load_pretrained(tmp_path / "model")
    expected = evaluate_checkpoint(str(run / "last.pt"), "test", batch_size=1, device="cpu")
    text = (tmp_path / "corpus" / "test.txt").read_text()
    assert lm.perplexity(text) == pytest.approx(expected["ppl"], rel=1e-12)
    iterate = load_checkpoint(run / "last.pt")["model"]
    exported = lm.model.state_dict()
    assert any(not torch.equal(exported[key], value) for key, value in iterate.items())


def test_a_damaged_sentencepiece_model_is_a_clear_error(exported) -> None:
    _, folder = exported("sentencepiece")
    (folder / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="tokenizer.model cannot be read") as error:
        lm_flipout.load_pretrained(folder)
    assert str(folder) in str(error.value)
