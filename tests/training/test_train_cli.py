"""train.py as a user runs it: the run directory and W&B offline run of a whole training,
SIGKILL mid-epoch then --resume, SIGTERM/SIGINT, divergence, and bad recipes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import evaluate
import train
from helpers import run_script, snapshot, start_script, tiny_recipe, write_recipe
from lm_flipout.config import load_recipe
from lm_flipout.tracking import read_metrics
from lm_flipout.training.checkpoint import load_checkpoint

FINAL_KEYS = {"valid_ppl", "test_ppl", "valid_bpc", "test_bpc", "params", "tokens_per_s",
              "wall_s", "git_rev", "valid_word_ppl", "test_word_ppl", "train_s", "valid_s",
              "test_s", "threads"}


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, timeout: float = 120):
    """Poll ``condition`` until it returns something true, while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"train.py ended (rc {proc.returncode}) before the condition "
                                 f"held:\n{out}\n{err}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out waiting for train.py")


def progress_of(path: Path):
    """last.pt's progress, or None while it does not exist yet."""
    return load_checkpoint(path)["progress"] if path.exists() else None


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def test_end_to_end_run_directory_metrics_and_wandb(tmp_path, capsys) -> None:
    pytest.importorskip("wandb")
    from test_tracking import item_key, read_wandb_records

    recipe = tiny_recipe(tmp_path, wandb={"mode": "offline", "group": "tests"})
    recipe_path = write_recipe(tmp_path / "tiny.yaml", recipe)
    done = run_script("train.py", [str(recipe_path)], tmp_path)
    assert done.returncode == 0, done.stderr
    no_traceback(done.stderr)
    run = tmp_path / "runs" / "run"
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "results.json"} <= {
        p.name for p in run.iterdir()}
    # One summary line per epoch on the console.
    assert len(re.findall(r"^epoch +\d+ \| step \d+ \| train ppl .* \| valid ppl ", done.stdout,
                          re.MULTILINE)) == 3

    results = json.loads((run / "results.json").read_text())
    assert FINAL_KEYS <= set(results) and results["epochs"] == 3
    config = yaml.safe_load((run / "config.yaml").read_text())
    vocab = config["model"]["vocab_size"]
    # tied embedding/decoder (V x 16) + decoder bias (V) + LSTM 4H x (E + H) + two 4H biases
    assert results["params"] == vocab * 16 + vocab + 64 * 32 + 2 * 64
    assert config["model"]["noise"]["estimator"] == "flipout"
    assert config["model"]["vocab_size"] == len(load_checkpoint(run / "best.pt")["vocab"])
    assert load_recipe(run / "config.yaml").data.bptt == 8  # the resolved recipe reloads

    events = read_metrics(run)
    valid = [e for e in events if e["event"] == "valid"]
    assert [e["epoch"] for e in valid] == [1, 2, 3]
    ppl = [e["valid_ppl"] for e in valid]
    assert ppl[0] > ppl[1] > ppl[2]  # it learns
    assert min(ppl) == pytest.approx(results["valid_ppl"])  # results come from best.pt
    train_events = [e for e in events if e["event"] == "train"]
    assert train_events and all(e["step"] % 5 == 0 for e in train_events)
    assert {"loss", "ppl", "lr", "grad_norm", "tokens_per_s"} <= set(train_events[0])
    last = load_checkpoint(run / "last.pt")["progress"]
    assert last["epoch"] == 4 and last["step"] == results["steps"]

    # evaluate.py with the training's eval batch size reproduces results.json.
    assert evaluate.main([str(run / "best.pt"), "--split", "valid", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ppl"] == pytest.approx(results["valid_ppl"], rel=1e-6)
    assert printed["bpc"] == pytest.approx(results["valid_bpc"], rel=1e-6)
    assert printed["word_ppl"] == pytest.approx(results["valid_word_ppl"], rel=1e-6)

    # The W&B offline run holds the config, the logged history and the summary.
    run_id = (run / "wandb_id.txt").read_text().strip()
    [offline] = (run / "wandb").glob(f"offline-run-*-{run_id}")
    records = read_wandb_records(offline / f"run-{run_id}.wandb")
    kinds: dict[str, list] = {}
    for record in records:
        kinds.setdefault(record.WhichOneof("record_type"), []).append(record)
    wandb_run = kinds["run"][0].run
    assert (wandb_run.run_group, wandb_run.display_name) == ("tests", "run")
    logged_config = {item_key(i): json.loads(i.value_json) for i in wandb_run.config.update}
    assert logged_config["model"]["noise"] == config["model"]["noise"]
    history_keys = set()
    for record in kinds["history"]:
        history_keys |= {item_key(i) for i in record.history.item}
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
            "valid/valid_ppl", "epoch/train_ppl", "test/test_ppl"} <= history_keys
    summary: dict = {}
    for record in kinds["summary"]:
        summary.update({item_key(i): json.loads(i.value_json) for i in record.summary.update})
    for key in ("best_valid_ppl", "test_ppl", "test_bpc", "valid_bpc"):
        expected = results["valid_ppl"] if key == "best_valid_ppl" else results[key]
        assert summary[key] == pytest.approx(expected)

    # A second start without --resume refuses and changes nothing; --resume reports the
    # finished run and exits 0 without training.
    before = snapshot(run)
    assert train.main([str(recipe_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already holds a run" in err and "Nothing was changed" in err and "--resume" in err
    assert train.main([str(recipe_path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "nothing was trained" in out
    assert snapshot(run) == before


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, train={"checkpoint_every_steps": 1})
    recipe_path = write_recipe(tmp_path / "tiny.yaml", recipe)
    whole = start_script("train.py", [str(recipe_path), "train.run_name=whole"], tmp_path)
    killed = start_script("train.py", [str(recipe_path), "train.run_name=killed"], tmp_path)
    killed_dir = tmp_path / "runs" / "killed"

    def mid_epoch_two():
        progress = progress_of(killed_dir / "last.pt")
        return progress if progress and progress["epoch"] == 2 and progress["position"] else None

    at = wait_for(mid_epoch_two, killed)
    killed.kill()
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and not (killed_dir / "results.json").exists()
    resumed = run_script("train.py", [str(recipe_path), "train.run_name=killed", "--resume"],
                         tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming .* at epoch 2, step \d+", resumed.stdout)
    assert whole.wait(timeout=120) == 0, whole.stderr.read()
    a = json.loads((tmp_path / "runs" / "whole" / "results.json").read_text())
    b = json.loads((killed_dir / "results.json").read_text())
    for key in ("valid_ppl", "test_ppl", "valid_bpc", "test_bpc", "steps"):
        assert a[key] == b[key], key
    assert at["step"] < b["steps"]
    # metrics.jsonl continues exactly where last.pt was: the same events with the same values.
    def trace(run: str):
        return [(e["event"], e["step"], e.get("loss"), e.get("valid_ppl"))
                for e in read_metrics(tmp_path / "runs" / run)]

    assert trace("killed") == trace("whole")


def test_sigterm_and_sigint_stop_after_a_step_then_divergence_keeps_checkpoints(
        tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, train={"epochs": 100})
    recipe_path = write_recipe(tmp_path / "long.yaml", recipe)
    runs = {signal.SIGTERM: "term", signal.SIGINT: "int"}
    procs = {sig: start_script("train.py", [str(recipe_path), f"train.run_name={name}"],
                               tmp_path) for sig, name in runs.items()}
    epoch_end = {}
    for sig, name in runs.items():  # last.pt is written at epoch ends only (no interval)
        last = tmp_path / "runs" / name / "last.pt"
        epoch_end[sig] = wait_for(lambda last=last: progress_of(last), procs[sig])
        procs[sig].send_signal(sig)
    for sig, name in runs.items():
        out, err = procs[sig].communicate(timeout=60)
        assert procs[sig].returncode == 128 + sig, err
        no_traceback(err)
        assert f"Stopped after writing {tmp_path / 'runs' / name / 'last.pt'}" in err
        assert f"train.run_name={name} --resume" in err
        assert f"{signal.Signals(sig).name} received" in out
        run = tmp_path / "runs" / name
        progress = progress_of(run / "last.pt")
        assert progress["step"] > epoch_end[sig]["step"]  # written when the signal came
        assert (run / "metrics.jsonl").stat().st_size == progress["metrics_bytes"]
        assert not (run / "results.json").exists()

    # Resume the SIGTERM run with a learning rate that blows up: a clear error naming the
    # step, and the checkpoints from before untouched.
    run = tmp_path / "runs" / "term"
    saved = progress_of(run / "last.pt")["step"]
    kept = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "config.yaml")}
    diverged = run_script("train.py", [str(recipe_path), "train.run_name=term", "optim.lr=1e37",
                                       "optim.clip=0", "--resume"], tmp_path)
    assert diverged.returncode == 2
    no_traceback(diverged.stderr)
    message = " ".join(diverged.stderr.split())
    step = int(re.search(r"at step (\d+)", message).group(1))
    assert saved < step <= saved + 3
    assert message.startswith("error: Training diverged:")
    assert f"{run / 'last.pt'} (from step {saved}) is kept" in message
    assert {name: (run / name).read_bytes() for name in kept} == kept
    best = load_checkpoint(run / "best.pt")["model"]
    assert all(bool(v.isfinite().all()) for v in best.values())


def test_bad_recipes_exit_2_naming_the_key_without_a_traceback(tmp_path, capsys) -> None:
    recipe_path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path))
    done = run_script("train.py", [str(recipe_path), "optim.lrr=1"], tmp_path)
    assert done.returncode == 2
    no_traceback(done.stderr)
    text = " ".join(done.stderr.split())
    assert "unknown key 'optim.lrr'" in text and "Did you mean 'optim.lr'?" in text
    cases = {
        "train.epochs=three": "'train.epochs' must be an integer",
        "model.dropout_output=1.5": "model.dropout_output=1.5 is out of range",
        "data.batch_size=0": "data.batch_size=0",
        "optim.name=adamw": "'optim.name' must be one of",
    }
    for override, expected in cases.items():
        assert train.main([str(recipe_path), override]) == 2, override
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith("error: ") and expected in err, err
    broken = tiny_recipe(tmp_path)
    broken["optim"]["nmae"] = "sgd"
    assert train.main([str(write_recipe(tmp_path / "typo.yaml", broken))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "typo.yaml" in err and "'optim.nmae'" in err and "Did you mean 'optim.name'?" in err
    assert not (tmp_path / "runs").exists()  # nothing was started
