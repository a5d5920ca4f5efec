"""Data-parallel training with torchrun on CPU (gloo, two processes): the same trajectory as
one process with the whole batch, per-rank noise, SIGTERM to one rank then --resume equal to
an uninterrupted run, and the errors for batch sizes and world sizes that do not fit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from helpers import REPO, run_script, script_env, tiny_recipe, write_recipe
from lm_flipout.config import Recipe, from_dict
from lm_flipout.errors import DataError, TrainingError, UserError
from lm_flipout.tracking import read_metrics
from lm_flipout.training import Trainer
from lm_flipout.training.checkpoint import load_checkpoint
from lm_flipout.training.distributed import DistContext, from_environment, rank_seed
from lm_flipout.training.state import join_columns, own_columns

NO_NOISE = {"dropout_input": 0.0, "dropout_output": 0.0, "noise": {"family": "none"}}
TIMEOUT = 120


def torchrun(args: list[str], root: Path, nproc: int = 2) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=N train.py ARGS`` as a user starts it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(REPO / "train.py"), *args]
    return subprocess.Popen(command, cwd=REPO, env=script_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out


def train_events(run_dir: Path) -> list[dict]:
    return [e for e in read_metrics(run_dir) if e["event"] == "train"]


def test_two_ranks_follow_the_single_process_trajectory(tmp_path: Path) -> None:
    """Noise and dropout off: two ranks with half the batch each take the same steps as one
    process with the whole batch (gradient averaging, clipping of the averaged gradient,
    AR/TAR, carried states and variable windows, evaluation sums)."""
    # Time-based checkpoints (rank 0's clock, agreed by all ranks) must not disturb anything.
    recipe = tiny_recipe(tmp_path, model=NO_NOISE,
                         train={"epochs": 2, "log_every": 1, "checkpoint_every_s": 0.05},
                         optim={"name": "sgd", "lr": 1.0, "clip": 0.2, "ar": 0.5, "tar": 0.5})
    path = write_recipe(tmp_path / "plain.yaml", recipe)
    two = torchrun([str(path), "train.run_name=two"], tmp_path)
    one = run_script("train.py", [str(path), "train.run_name=one"], tmp_path)
    rc, out = finish(two)
    assert one.returncode == 0, one.stderr
    assert rc == 0, out
    runs = tmp_path / "runs"
    single, parallel = train_events(runs / "one"), train_events(runs / "two")
    assert len(single) == len(parallel) > 40
    for a, b in zip(single, parallel):
        assert a["step"] == b["step"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-5)
    assert sum(e["grad_norm"] > 0.2 for e in single) > 10  # clipping was active
    results = [json.loads((runs / name / "results.json").read_text()) for name in ("one", "two")]
    for key in ("valid_ppl", "test_ppl", "valid_bpc"):
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-5)
    assert (results[0]["processes"], results[1]["processes"]) == (1, 2)
    assert results[1]["steps"] == results[0]["steps"]
    assert out.count("done | valid ppl") == 1  # only rank 0 reports


def progress_of(path: Path):
    try:
        return load_checkpoint(path)["progress"]
    except Exception:  # noqa: BLE001 (not written yet)
        return None


def rank_pids(proc: subprocess.Popen) -> dict[int, int]:
    """torchrun's worker processes by their RANK (from /proc)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == proc.pid:
            for item in environ:
                if item.startswith(b"RANK="):
                    pids[int(item[5:])] = int(entry.name)
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")
def test_flipout_sigterm_to_one_rank_then_resume_equals_an_uninterrupted_run(tmp_path,
                                                                               capsys) -> None:
    recipe = tiny_recipe(tmp_path, train={"epochs": 3, "log_every": 1,
                                          "checkpoint_every_steps": 1})
    path = write_recipe(tmp_path / "flip.yaml", recipe)
    runs = tmp_path / "runs"
    whole = torchrun([str(path), "train.run_name=whole"], tmp_path)
    killed = torchrun([str(path), "train.run_name=killed"], tmp_path)
    deadline = time.monotonic() + TIMEOUT
    while True:
        progress = progress_of(runs / "killed" / "last.pt")
        if progress and progress["epoch"] == 2 and progress["position"]:
            break
        assert killed.poll() is None and time.monotonic() < deadline, finish(killed)[1]
        time.sleep(0.01)
    os.kill(rank_pids(killed)[1], signal.SIGTERM)  # rank 1 only: rank 0 must stop with it
    rc, out = finish(killed)
    assert rc != 0 and "Stopped after writing" in out, out
    assert not (runs / "killed" / "results.json").exists()
    last = load_checkpoint(runs / "killed" / "last.pt")
    assert last["world_size"] == 2 and len(last["rng"]) == 2
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])
    assert last["progress"]["epoch"] >= 2  # stopped mid-run, after an epoch's end
    assert last["carried_state"]["h"][0].shape[0] == 4  # both ranks' columns: the global batch

    # A resume with another number of processes is refused, in one paragraph; nothing changes.
    before = (runs / "killed" / "last.pt").read_bytes()
    capsys.readouterr()
    assert train.main([str(path), "train.run_name=killed", "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "written by 2 data-parallel processes, but this resume has a single process" in err
    assert "under torchrun with 2 processes" in err
    assert (runs / "killed" / "last.pt").read_bytes() == before

    resumed = torchrun([str(path), "train.run_name=killed", "--resume"], tmp_path)
    rc, out = finish(resumed)
    assert rc == 0 and "Resuming" in out, out
    rc, out = finish(whole)
    assert rc == 0, out
    expected = json.loads((runs / "whole" / "results.json").read_text())
    got = json.loads((runs / "killed" / "results.json").read_text())
    for key in ("valid_ppl", "test_ppl", "valid_bpc", "steps", "epochs", "best_epoch"):
        assert got[key] == expected[key], key
    assert [(e["step"], e["loss"]) for e in train_events(runs / "killed")] == \
        [(e["step"], e["loss"]) for e in train_events(runs / "whole")]


# -- per-rank noise, in two processes spawned by torch.multiprocessing --------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _noise_worker(rank: int, root: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    from lm_flipout.nn.noise import WeightNoise
    from lm_flipout.training import distributed

    recipe = from_dict(Recipe, tiny_recipe(Path(root)), "test recipe")
    ctx = from_environment()
    ranks_end_together = False
    try:
        trainer = Trainer(recipe, Path(root) / "runs" / "spawned", dist=ctx, echo=lambda _: None)
        weights = [p.detach().clone() for p in trainer.model.parameters()]
        sample = WeightNoise("gaussian", sigma=0.2, estimator="flipout").sample(
            torch.ones(8, 4), batch_size=2)  # from the generators the LSTM draws from
        trainer.tracker.finish()
        try:  # rank 0 finds a run in the directory: every rank must fail with its message
            Trainer(recipe, Path(root) / "runs" / "taken", dist=ctx)
            refused = None
        except TrainingError as err:
            refused = (str(err), getattr(err, "raised_on_main", False))
        torch.save({"weights": weights, "unit": sample.unit, "out_signs": sample.out_signs,
                    "in_signs": sample.in_signs, "tracker": type(trainer.tracker).__name__,
                    "refused": refused}, Path(root) / f"rank{rank}.pt")
        ranks_end_together = True
    finally:
        distributed.shutdown(ranks_end_together)


def test_each_rank_draws_its_own_noise_from_identical_weights(tmp_path) -> None:
    tiny_recipe(tmp_path)  # writes the corpus
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "best.pt").write_bytes(b"")
    torch.multiprocessing.spawn(_noise_worker, args=(str(tmp_path), _free_port()), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"]))
    assert not torch.equal(r0["out_signs"], r1["out_signs"])
    assert not torch.equal(r0["in_signs"], r1["in_signs"])
    assert not torch.equal(r0["unit"], r1["unit"])  # the base perturbation is per rank too
    assert (r0["tracker"], r1["tracker"]) == ("Tracker", "NullTracker")
    assert sorted(p.name for p in (tmp_path / "runs" / "spawned").iterdir()) == [
        "config.yaml", "metrics.jsonl", "run.lock"]  # its lock ended with the process
    assert "already holds a run" in r0["refused"][0]
    assert r1["refused"] == r0["refused"]  # rank 1 got rank 0's error, both marked as such


# -- quick checks without a process group ------------------------------------------------


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
def test_batch_sizes_must_split_evenly(tmp_path, key) -> None:
    recipe = from_dict(Recipe, tiny_recipe(tmp_path, data={key: 3}), "test recipe")
    with pytest.raises(DataError, match=f"data.{key}=3 is not divisible by the 2 data-parallel"):
        Trainer(recipe, tmp_path / "runs" / "x", dist=DistContext(0, 2, 0, 2))
    assert not (tmp_path / "runs").exists()


def test_environment_and_seeds() -> None:
    assert from_environment({}) == DistContext()
    assert from_environment({"WORLD_SIZE": "1"}) == DistContext()
    ctx = from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
                            "LOCAL_WORLD_SIZE": "2"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.num_nodes, ctx.is_main) == (3, 4, 1, 2,
                                                                                       False)
    with pytest.raises(UserError, match="RANK is not"):
        from_environment({"WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="inconsistent"):
        from_environment({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    seeds = {rank_seed(7, r) for r in range(8)}
    assert len(seeds) == 8 and 7 not in seeds and rank_seed(7, 1) == rank_seed(7, 1)


def test_carried_state_columns_round_trip() -> None:
    full = {"h": [torch.arange(8.0).view(4, 2)], "c": [torch.arange(8.0, 16.0).view(4, 2)]}
    shards = [own_columns(full, DistContext(r, 2, r, 2)) for r in range(2)]
    assert torch.equal(shards[1]["h"][0], full["h"][0][2:])
    joined = join_columns(shards)
    assert all(torch.equal(joined[k][0], full[k][0]) for k in ("h", "c"))
    assert join_columns([None, None]) is None
