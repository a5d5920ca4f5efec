"""Generating text from a tiny trained run: seeds, greedy decoding against an argmax written
here, unknown prompt words, one held noise sample, streaming, and `lm-flipout generate`."""

from __future__ import annotations

import pytest
import torch

from lm_flipout.cli.main import main
from lm_flipout.cli.trained_model import from_checkpoint
from lm_flipout.nn.noise import WeightNoise


@pytest.fixture(scope="module")
def lm(tiny_trained_run):
    """The tiny character model (flipout noise, locked dropout) with its tokenizer."""
    return from_checkpoint(str(tiny_trained_run("char") / "best.pt"))


def test_the_same_seed_writes_the_same_text_and_another_seed_other_text(lm) -> None:
    first = lm.generate("the cat", tokens=40, seed=5, temperature=50.0)
    assert lm.generate("the cat", tokens=40, seed=5, temperature=50.0) == first
    # near-uniform over 18 characters: 40 equal draws from another seed are all but impossible
    assert lm.generate("the cat", tokens=40, seed=6, temperature=50.0) != first
    assert first.startswith("the cat") and len(lm.tokenizer.encode(first).ids) >= 40


def test_top_k_one_is_greedy_decoding(lm) -> None:
    prompt = lm.tokenizer.encode("the d", end_line=False).ids
    ids = [lm.tokenizer.eos_id] + prompt
    with torch.no_grad():
        for _ in range(25):  # the whole sequence each time, no state carried
            logits, _ = lm.model.eval()(torch.tensor(ids).view(-1, 1))
            ids.append(int(logits[-1, 0].argmax()))
    expected = lm.tokenizer.decode(ids[1:])
    assert lm.generate("the d", tokens=25, seed=1, top_k=1) == expected
    assert lm.generate("the d", tokens=25, seed=2, top_k=1, temperature=3.0) == expected


def test_a_prompt_outside_the_vocabulary_warns_and_reads_unk(lm) -> None:
    with pytest.warns(UserWarning, match=r"read as <unk>: 'Q', '%'") as caught:
        text = lm.generate("the Qa%", tokens=3, seed=0)
    assert len(caught) == 1 and text.startswith("the <unk>a<unk>")


def test_the_text_streams_piece_by_piece(lm) -> None:
    pieces: list[str] = []
    text = lm.generate("a", tokens=30, seed=3, on_text=pieces.append)
    assert "".join(pieces) == text and pieces[0] == "a" and len(pieces) >= 25


def test_sample_weights_holds_one_noise_sample_for_the_whole_text(lm, monkeypatch) -> None:
    drawn = []
    sample = WeightNoise.sample

    def record(self, weight, batch_size, generator=None):
        drawn.append(sample(self, weight, batch_size, generator))
        return drawn[-1]

    monkeypatch.setattr(WeightNoise, "sample", record)
    mean = lm.generate("the", tokens=20, seed=4)
    assert drawn == []  # mean weights draw nothing
    text = lm.generate("the", tokens=20, seed=4, sample_weights=True)
    assert len(drawn) >= 20 and drawn[0].unit.abs().sum() > 0
    for other in drawn[1:]:
        assert torch.equal(other.unit, drawn[0].unit)
        assert torch.equal(other.out_signs, drawn[0].out_signs)
        assert torch.equal(other.in_signs, drawn[0].in_signs)
    drawn.clear()
    assert lm.generate("the", tokens=20, seed=4, sample_weights=True) == text
    assert lm.model.training is False and isinstance(mean, str)


def test_the_command_streams_the_text_the_library_writes(lm, tiny_trained_run, capsys) -> None:
    checkpoint = str(tiny_trained_run("char") / "best.pt")
    assert main(["generate", checkpoint, "--prompt", "the cat", "--tokens", "30", "--seed", "9",
                 "--top-p", "0.9", "--temperature", "0.8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    expected = lm.generate("the cat", tokens=30, seed=9, top_p=0.9, temperature=0.8)
    assert out == expected + ("" if expected.endswith("\n") else "\n")


def test_the_command_warns_once_about_an_unknown_prompt_word(tiny_trained_run, capsys) -> None:
    checkpoint = str(tiny_trained_run("char") / "best.pt")
    assert main(["generate", checkpoint, "--prompt", "Zed", "--tokens", "2", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: not in the model's vocabulary, read as <unk>: 'Z'"]
    assert captured.out.startswith("<unk>ed")


@pytest.mark.parametrize("option, message", [
    (["--top-p", "0"], "--top-p must be a probability in (0, 1], got 0.0"),
    (["--top-p", "1.2"], "--top-p must be a probability in (0, 1], got 1.2"),
    (["--top-k", "0"], "--top-k must be a positive integer, got 0"),
    (["--temperature", "0"], "--temperature must be a number above 0, got 0.0"),
    (["--temperature", "nan"], "--temperature must be a number above 0, got nan"),
    (["--tokens", "-1"], "--tokens must be 0 or more, got -1"),
    (["--tokens", "ten"], "argument --tokens: invalid int value: 'ten'"),
])
def test_bad_options_are_one_line_errors(option, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "best.pt", *option])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_a_bad_checkpoint_is_a_one_paragraph_error(tmp_path, capsys) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["generate", str(bad), "--seed", "1"]) == 2
    assert main(["generate", str(tmp_path / "missing.pt")]) == 2
    assert main(["generate", str(tmp_path)]) == 2  # a folder without config.json
    err = capsys.readouterr().err
    assert err.count("error: ") == 3 and "Traceback" not in err
    err = " ".join(err.split())
    assert "truncated or corrupted" in err and "does not exist" in err
    assert "neither an exported model (it has no config.json) nor a checkpoint" in err


def test_a_checkpoint_changed_on_disk_is_refused_by_generate_and_export(
        tiny_trained_run, tmp_path, capsys) -> None:
    from helpers import flip_tensor_byte

    damaged = tmp_path / "best.pt"
    damaged.write_bytes((tiny_trained_run("char") / "best.pt").read_bytes())
    flip_tensor_byte(damaged)
    assert main(["generate", str(damaged), "--tokens", "3", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "Traceback" not in err
    assert main(["export", str(damaged), str(tmp_path / "out")]) == 2
    assert str(damaged) in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()
