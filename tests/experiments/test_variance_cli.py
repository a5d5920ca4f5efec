"""`python -m lm_flipout variance`: argument parsing, the command end to end on a
tiny trained checkpoint (CSV, figure, slopes.json) and its error messages."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import train_tiny_run
from lm_flipout.cli.variance import main, parse_batch_sizes, parse_estimators
from lm_flipout.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_argument_parsing():
    assert parse_batch_sizes("1,2,4,...,64") == (1, 2, 4, 8, 16, 32, 64)
    assert parse_batch_sizes("1,2,...,100") == (1, 2, 4, 8, 16, 32, 64, 100)
    assert parse_batch_sizes("3, 10") == (3, 10)
    assert parse_batch_sizes("1,3,...,30") == (1, 3, 9, 27, 30)
    assert parse_estimators("independent,shared") == ("shared", "independent")
    for bad in ("4,2", "1", "0,1", "a,b", "1,...,8", "2,3,...,8", "1,2,...,", "1,2,...,8,16"):
        with pytest.raises(UserError, match="--batch-sizes"):
            parse_batch_sizes(bad)
    with pytest.raises(UserError, match="unknown estimator 'dropout'"):
        parse_estimators("shared,dropout")


def test_module_runs_as_a_command():
    done = subprocess.run([sys.executable, "-m", "lm_flipout", "variance", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m lm_flipout variance")
    assert "--max-independent" in done.stdout and "--wandb-mode" in done.stdout


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """best.pt of a two-layer character model trained for one epoch on the tiny corpus."""
    root = tmp_path_factory.mktemp("variance")
    run = train_tiny_run(root, model={"num_layers": 2, "tie_weights": False},
                         train={"epochs": 1})
    return run / "best.pt"


def test_command_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(tiny_checkpoint), "--batch-sizes", "1,2,4,8", "--repeats", "4",
                          "--sub-batch", "4", "--max-independent", "4", "--out", str(out),
                          "--wandb-mode", "disabled", "--no-progress", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    with (out / "variance.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["estimator", "batch_size", "gate", "variance", "ci_low", "ci_high"]
    keys = {(r["estimator"], int(r["batch_size"]), r["gate"]) for r in rows}
    expected = {(e, n, g) for e in ("shared", "flipout") for n in (1, 2, 4, 8)
                for g in ("input", "forget", "cell", "output")}
    expected |= {("independent", n, g) for n in (1, 2, 4)
                 for g in ("input", "forget", "cell", "output")}
    assert keys == expected and len(rows) == len(expected)
    for row in rows:
        assert 0 <= float(row["ci_low"]) <= float(row["variance"]) <= float(row["ci_high"])
    assert (out / "variance.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "slopes.json").read_text())
    assert set(summary["slope"]) == {"shared", "flipout", "independent"}
    assert set(summary["slope"]["flipout"]) == {"input", "forget", "cell", "output"}
    assert summary["slope_top_batch_sizes"]["shared"] == [1, 2, 4, 8]
    assert set(summary["flipout_over_independent"]["input"]) == {"1", "2", "4"}
    assert not (out / "wandb").exists()


@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "does not exist"),
    (["{ckpt}", "--batch-sizes", "8,4"], "strictly increasing"),
    (["{ckpt}", "--estimators", "shared,magic"], "unknown estimator 'magic'"),
    (["{ckpt}", "--repeats", "2"], "--repeats=2 must be at least 3"),
])
def test_user_errors_are_one_line_messages(args, message, tiny_checkpoint, tmp_path, capsys):
    args = [a.replace("{ckpt}", str(tiny_checkpoint)) for a in args]
    assert main([*args, "--out", str(tmp_path), "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_corrupt_checkpoint_is_a_user_error(tmp_path, capsys):
    broken = tmp_path / "best.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert main([str(broken), "--wandb-mode", "disabled", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "best.pt" in err
