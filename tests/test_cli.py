"""The console command: `python -m lm_flipout` and each subcommand's --help, options and
key=value overrides accepted in any order, and the resume command in the form a run was
started with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, script_env, tiny_recipe, write_recipe
from lm_flipout import __version__
from lm_flipout.cli import bench, compare, data, evaluate, generate, train, variance
from lm_flipout.cli.main import COMMANDS, main
from lm_flipout.training.distributed import DistContext

# A phrase each command's --help must show (besides its usage line).
HELP_SAYS = {
    "train": "--resume", "evaluate": "--mc-samples", "compare": "--report-only",
    "data": "fetch", "bench": "--shapes", "variance": "--batch-sizes", "recipes": "copy",
    "generate": "--sample-weights", "export": "--force", "tune": "--space",
}


def test_python_m_lm_flipout_lists_every_command_from_any_folder(tmp_path: Path) -> None:
    env = {**script_env(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "lm_flipout", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m lm_flipout")
    for name in COMMANDS:
        assert f"\n  {name} " in done.stdout


@pytest.mark.parametrize("name", sorted(HELP_SAYS))
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture) -> None:
    assert set(HELP_SAYS) == set(COMMANDS)
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lm-flipout {name}") and HELP_SAYS[name] in out


@pytest.mark.parametrize("action", ["stats", "synthetic", "fetch"])
def test_every_data_action_has_help(action: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", action, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lm-flipout data {action}")


def test_version_and_unknown_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lm-flipout {__version__}"
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'trian'" in err and "'train'" in err


@pytest.mark.parametrize("module, first, second", [
    (train, ["r.yaml", "--resume", "optim.lr=1", "--print-config", "a.b=2"],
     ["--print-config", "r.yaml", "optim.lr=1", "a.b=2", "--resume"]),
    (compare, ["s.yaml", "--report-only", "a=1", "--reports-dir", "out", "b=2"],
     ["--reports-dir", "out", "s.yaml", "a=1", "b=2", "--report-only"]),
    (evaluate, ["--split", "valid", "best.pt", "--mc-samples", "3"],
     ["best.pt", "--mc-samples", "3", "--split", "valid"]),
    (variance, ["--repeats", "4", "best.pt", "--seed", "1"],
     ["best.pt", "--seed", "1", "--repeats", "4"]),
    (bench, ["--device", "cpu", "--shapes", "char"], ["--shapes", "char", "--device", "cpu"]),
    (generate, ["--seed", "1", "best.pt", "--top-k", "3"],
     ["best.pt", "--top-k", "3", "--seed", "1"]),
])
def test_options_and_overrides_in_any_order(module, first: list[str], second: list[str]) -> None:
    parsed = module.parse_args(first)
    assert parsed == module.parse_args(second)
    if module in (train, compare):
        assert parsed.overrides == [arg for arg in first if "=" in arg]


def test_data_fetch_options_in_any_order(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setitem(data.RUNNERS, "fetch", (data.build_fetch_parser, seen.append))
    data.main(["fetch", "--timeout", "3", "ptb", "--url", "http://127.0.0.1:9/a.tgz"])
    data.main(["fetch", "ptb", "--url", "http://127.0.0.1:9/a.tgz", "--timeout", "3"])
    assert seen[0] == seen[1] and seen[0].corpus == "ptb" and seen[0].timeout == 3.0


def test_train_resume_then_overrides_is_one_command(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    assert train.main([str(recipe), "--resume", "optim.lr=3", "--print-config",
                       "train.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 3.0\n" in out and "  epochs: 7\n" in out


def test_resume_command_uses_the_form_the_run_was_started_with(tmp_path, monkeypatch) -> None:
    script = tmp_path / "checkout" / "train.py"
    started_in = tmp_path / "my runs"  # the run was started from another folder
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    monkeypatch.setattr(sys, "argv", ["../checkout/train.py", "r.yaml"])
    cd = f"cd '{started_in}' && "
    one = DistContext()
    assert train.resume_command("train.py", "r.yaml", ["a=1"], one) == (
        f"{cd}{sys.executable} {script} r.yaml a=1 --resume")
    assert train.resume_command("lm-flipout train", "r.yaml", [], one) == (
        f"{cd}lm-flipout train r.yaml --resume")
    assert train.resume_command("python -m lm_flipout train", "r.yaml", [], one) == (
        f"{cd}{sys.executable} -m lm_flipout train r.yaml --resume")
    four = DistContext(rank=0, world_size=4, local_world_size=4)
    assert train.resume_command("lm-flipout train", "r.yaml", [], four) == (
        f"{cd}torchrun --nproc_per_node=4 -m lm_flipout train r.yaml --resume")
    assert train.resume_command("train.py", "r.yaml", [], four) == (
        f"{cd}torchrun --nproc_per_node=4 {script} r.yaml --resume")


def test_printed_resume_command_works_from_another_folder(tmp_path, monkeypatch) -> None:
    """The command printed on a stop, run from elsewhere, resumes the very run."""
    write_recipe(tmp_path / "tiny.yaml",
                 tiny_recipe(tmp_path, train={"out_dir": "runs", "epochs": 1}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py")])
    command = train.resume_command("train.py", "tiny.yaml", ["train.epochs=1"], DistContext())
    done = subprocess.run(command, shell=True, cwd=REPO, env=script_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "run" / "results.json").is_file()


def test_threads_option_takes_auto_or_a_positive_count(capsys: pytest.CaptureFixture) -> None:
    assert evaluate.parse_args(["best.pt"]).threads == "auto"
    assert evaluate.parse_args(["best.pt", "--threads", "3"]).threads == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(SystemExit):
            evaluate.parse_args(["best.pt", f"--threads={bad}"])
        assert "is not a thread count; use auto" in capsys.readouterr().err
