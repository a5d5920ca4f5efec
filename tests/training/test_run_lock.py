"""One process per run directory: the lock refuses a second train.py at once, naming the
holder, and a lock left by a killed process does not block --resume. Ctrl-C at start-up."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from helpers import REPO, mounted_tmpfs, run_script, start_script, tiny_recipe, write_recipe
from lm_flipout.config import Recipe, from_dict
from lm_flipout.errors import TrainingError
from lm_flipout.training import Trainer
from lm_flipout.training.checkpoint import load_checkpoint
from lm_flipout.training.run_lock import LOCK_FILE, RunInUse, RunLock


def test_a_second_lock_on_a_run_is_refused_naming_the_holder_and_released_cleanly(tmp_path):
    run_dir = tmp_path / "out" / "runs" / "run"
    first = RunLock(run_dir)
    first.acquire()
    holder = f"pid {os.getpid()} on host {socket.gethostname()}\n"
    assert (run_dir / LOCK_FILE).read_text() == holder
    with pytest.raises(RunInUse) as caught:
        RunLock(run_dir).acquire()  # flock conflicts between two opens, even in one process
    text = str(caught.value)
    assert str(run_dir) in text and f"pid {os.getpid()}" in text and "in use" in text
    first.release()
    assert not (tmp_path / "out").exists()  # nothing else was written: the folders go too
    second = RunLock(run_dir)
    second.acquire()
    second.release()


def test_a_run_directory_that_is_a_file_is_refused_before_the_data_is_read(tmp_path):
    recipe = tiny_recipe(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    done = run_script("train.py", [str(path)], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    text = " ".join(done.stderr.split())
    assert f"Cannot use the run directory {tmp_path / 'runs' / 'run'}" in text
    assert "is a file, not a folder" in text and "train.out_dir=DIR" in text
    assert not (tmp_path / "cache").exists()  # refused before the corpus was tokenized


def test_second_train_py_on_a_run_in_use_is_refused_and_a_killed_run_resumes(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"epochs": 200, "checkpoint_every_steps": 5})
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    run = tmp_path / "runs" / "run"
    first = start_script("train.py", [str(path)], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = run_script("train.py", [str(path), "--resume"], tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        text = " ".join(second.stderr.split())
        assert f"The run {run} is in use by another training process (pid {first.pid} " in text
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    saved = load_checkpoint(run / "last.pt")["progress"]["step"]
    assert (run / LOCK_FILE).exists()  # left by the killed process, but its lock is gone
    resumed = run_script("train.py", [str(path), "train.epochs=1", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "last.pt")["progress"]["step"] >= saved
    assert not (run / LOCK_FILE).exists()  # released at the end of the run


def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path):
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path))
    proc = start_script("train.py", [str(path)], tmp_path)
    time.sleep(0.5)  # torch is still loading
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_while_the_corpus_loads_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    import lm_flipout.training.loop as loop
    import train

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "load_corpus", interrupted)
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path))
    assert train.main([str(path)]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Start again with: cd " in err
    assert f"{sys.executable} {REPO / 'train.py'} {path} --resume" in err
    assert not (tmp_path / "runs").exists()


def test_unwritable_run_directory_is_refused_on_a_read_only_mount(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        recipe = tiny_recipe(tmp_path, train={"out_dir": str(mount)})
        with pytest.raises(TrainingError, match="not writable") as caught:
            Trainer(from_dict(Recipe, recipe, "test"), mount / "run", echo=lambda _: None)
        assert "Read-only file system" in str(caught.value)
    assert not (tmp_path / "cache").exists()

