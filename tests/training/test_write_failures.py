"""Failed writes during a run (a full disk, at start or at a checkpoint) are one paragraph that
names the file, the checkpoint kept intact and the command that resumes; nothing is lost."""

from __future__ import annotations

import errno

import pytest
import torch

import train
from helpers import REPO, mounted_tmpfs, tiny_recipe, write_recipe
from lm_flipout.config import Recipe, from_dict
from lm_flipout.training import Trainer
from lm_flipout.training.checkpoint import load_checkpoint
from lm_flipout.training.write_failures import RunWriteError

REAL_SAVE = torch.save


def disk_full_after(monkeypatch, good_saves: int) -> None:
    """Let ``good_saves`` saves of last.pt through, then fail the next as torch does when the
    disk fills (a RuntimeError raised while handling the OSError)."""
    count = {"last.pt": 0}

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "carried_state" in obj:  # last.pt's content
            count["last.pt"] += 1
            if count["last.pt"] > good_saves:
                try:
                    raise OSError(errno.ENOSPC, "No space left on device")
                except OSError:
                    raise RuntimeError("[enforce fail at inline_container.cc:626] . "
                                       "unexpected pos 64 vs 0") from None
        return REAL_SAVE(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_disk_full_at_a_checkpoint_keeps_the_last_good_one_and_says_how_to_resume(
        tmp_path, monkeypatch, capsys, one_thread):
    recipe = tiny_recipe(tmp_path, train={"epochs": 2, "checkpoint_every_steps": 3})
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    run = tmp_path / "runs" / "run"
    disk_full_after(monkeypatch, good_saves=2)
    assert train.main([str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and err.startswith("error: Writing ")
    assert str(run / "last.pt") in err and "No space left on device" in err
    kept = load_checkpoint(run / "last.pt")["progress"]["step"]
    assert kept == 6
    assert f"The last good checkpoint {run / 'last.pt'} (from step 6) is kept intact" in err
    assert f"{REPO / 'train.py'} {path} --resume" in err
    assert not list(run.glob(".*.tmp"))  # no half-written file left behind
    monkeypatch.setattr(torch, "save", REAL_SAVE)
    assert train.main([str(path), "--resume"]) == 0  # and the run goes on from there


def test_disk_full_when_the_run_starts_names_the_file(tmp_path, monkeypatch):
    import lm_flipout.training.run_dir as run_dir_module

    def full(recipe, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_dir_module, "save_recipe", full)
    recipe = from_dict(Recipe, tiny_recipe(tmp_path), "test")
    with pytest.raises(RunWriteError) as caught:
        Trainer(recipe, tmp_path / "runs" / "run", echo=lambda _: None)
    text = str(caught.value)
    assert f"Writing {tmp_path / 'runs' / 'run' / 'config.yaml'} failed: No space left" in text
    assert "No last.pt had been written yet" in text and "--resume" in text


def test_a_really_full_disk_at_the_first_checkpoint(tmp_path, one_thread):
    with mounted_tmpfs(tmp_path / "small", "size=16k") as mount:
        recipe = tiny_recipe(tmp_path, train={"out_dir": str(mount), "checkpoint_every_steps": 2})
        trainer = Trainer(from_dict(Recipe, recipe, "test"), mount / "run", echo=lambda _: None)
        with pytest.raises(RunWriteError) as caught:
            trainer.run()
        text = str(caught.value)
        assert f"Writing {mount / 'run' / 'last.pt'} failed: No space left on device" in text
        assert not list((mount / "run").glob(".*.tmp")) and not (mount / "run" / "last.pt").exists()


class FillingFile:
    """metrics.jsonl on a disk that fills after ``lines`` lines: every later write and flush
    fails with ENOSPC, as a real full disk makes them, and so does closing the file."""

    def __init__(self, real, lines: int) -> None:
        self.real, self.lines, self.full = real, lines, lines == 0

    def write(self, text: str) -> int:
        if self.lines == 0:
            self.full = True
            raise OSError(errno.ENOSPC, "No space left on device")
        self.lines -= 1
        return self.real.write(text)

    def flush(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real.flush()

    def close(self) -> None:  # closing flushes, which fails on the full disk
        self.real.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    @property
    def closed(self) -> bool:
        return self.real.closed


@pytest.mark.parametrize("lines", [3, 10_000], ids=["while-logging", "only-at-close"])
def test_a_full_disk_in_metrics_jsonl_is_one_message_and_exit_2(tmp_path, monkeypatch, capsys,
                                                                 one_thread, lines):
    from lm_flipout import tracking

    real_init = tracking.Tracker.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._metrics = FillingFile(self._metrics, lines)

    monkeypatch.setattr(tracking.Tracker, "__init__", init)
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    assert train.main([str(recipe)]) == 2
    err = capsys.readouterr().err
    run = tmp_path / "runs" / "run"
    assert "Traceback" not in err and err.count("error:") == 1
    flat = " ".join(err.split())
    assert f"Writing {run / 'metrics.jsonl'} failed: No space left on device" in flat
    assert "--resume" in flat and not (run / "run.lock").exists()


def test_start_and_resume_remove_stale_temporary_files_unless_the_run_is_in_use(
        tmp_path, one_thread):
    from lm_flipout.training.run_lock import RunInUse, RunLock

    recipe = from_dict(Recipe, tiny_recipe(tmp_path, train={"epochs": 1}), "test")
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    stale = [run / ".last.pt.k2_x9abc.tmp", run / ".best.pt.0a1b2c3d.tmp",
             run / ".results.json.zz9_y8x7.tmp"]
    other = run / ".notes.txt.tmp"  # not a run file's: left alone
    for path in [*stale, other]:
        path.write_bytes(b"\0" * 4096)
    Trainer(recipe, run, echo=lambda _: None).run()
    assert not any(path.exists() for path in stale) and other.exists()

    (run / "results.json").unlink()
    stale[0].write_bytes(b"\0" * 4096)
    holder = RunLock(run)  # another training process, still writing
    holder.acquire()
    try:
        with pytest.raises(RunInUse):
            Trainer(recipe, run, resume=True, echo=lambda _: None)
        assert stale[0].exists()
    finally:
        holder.release()
    Trainer(recipe, run, resume=True, echo=lambda _: None).run()
    assert not stale[0].exists()


def test_a_full_disk_while_writing_the_data_cache_is_one_message_and_exit_2(
        tmp_path, monkeypatch, capsys):
    def full(obj, f, *args, **kwargs):  # as torch.save fails on a full disk
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:626]") from None

    monkeypatch.setattr(torch, "save", full)
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path))
    assert train.main([str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and err.startswith("error: Cannot write the data cache file")
    assert "No space left on device" in err


def test_a_full_disk_while_generating_the_synthetic_corpus_is_a_data_error(tmp_path,
                                                                          monkeypatch):
    from lm_flipout.data import DataConfig, synthetic_source
    from lm_flipout.errors import DataError

    def full(spec, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synthetic_source, "write_corpus", full)
    with pytest.raises(DataError, match="Cannot write the synthetic corpus .*No space left"):
        synthetic_source.ensure_synthetic_corpus(DataConfig(source="synthetic",
                                                            cache_dir=str(tmp_path)))
