"""W&B sweep files (no network): each parses, runs train.py on an existing recipe with the
sweep's values as key=value overrides and logs online; a trial started by an agent gets its
own run directory and joins the agent's W&B run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import train
from helpers import REPO, tiny_recipe, write_recipe
from lm_flipout.config import Recipe, WandbConfig, load_recipe
from lm_flipout.errors import ConfigError
from lm_flipout.sweeps import check_sweep_logging, sweep_run_name
from lm_flipout.tracking import Tracker

SWEEPS = sorted((REPO / "recipes" / "sweeps").glob("*.yaml"))
# Metrics the Trainer logs to W&B once per epoch (event prefix / key).
EPOCH_METRICS = {"epoch/best_valid_ppl", "epoch/valid_ppl", "valid/valid_ppl", "valid/valid_bpc",
                 "valid/valid_loss"}


def sample_values(spec: dict[str, Any]) -> list[Any]:
    """Representative values of one sweep parameter: every listed value, or the bounds."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def agent_command(sweep: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The command a W&B agent runs for one trial: the sweep's command with its macros
    expanded the way `wandb agent` expands them (its own code formats the arguments)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros = {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [sweep["program"]],
              **args}
    command: list[str] = []
    for item in sweep["command"]:
        item = str(item)
        command += macros[item[2:-1]] if item.startswith("${") else [item]
    return command


def nested(recipe: Recipe, dotted: str) -> Any:
    value: Any = recipe
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def test_there_are_sweeps_for_the_flipout_recipes() -> None:
    names = {p.stem for p in SWEEPS}
    assert {"quickstart_flipout", "word_medium_gauss_flipout", "word_medium_wd_flipout"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_runs_train_py_with_its_values_as_overrides(path: Path) -> None:
    pytest.importorskip("wandb")
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "train.py" and sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["name"] in EPOCH_METRICS and sweep["metric"]["goal"] == "minimize"
    command = sweep["command"]
    assert command[:3] == ["${env}", "${interpreter}", "${program}"]
    assert command[-1] == "${args_no_hyphens}" and "wandb.mode=online" in command
    recipe_path = REPO / command[3]
    assert recipe_path.is_file(), f"{path.name}: no recipe {command[3]}"
    parameters = sweep["parameters"]
    assert parameters
    # Every sampled value of every parameter (one trial per value, the others at their first).
    first = {name: sample_values(spec)[0] for name, spec in parameters.items()}
    trials = [dict(first, **{name: value}) for name, spec in parameters.items()
              for value in sample_values(spec)]
    for values in trials:
        argv = agent_command(sweep, values)
        assert argv[:3] == ["/usr/bin/env", "python", "train.py"]
        args = train.parse_args(argv[3:])
        recipe = load_recipe(REPO / args.recipe, args.overrides)  # unknown keys would raise
        for name, value in values.items():
            assert nested(recipe, name) == pytest.approx(value), (path.name, name)
        assert recipe.wandb.mode == "online"


def print_config(capsys, args: list[str]) -> dict:
    capsys.readouterr()
    assert train.main([*args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_each_trial_gets_its_own_run_directory(tmp_path, monkeypatch, capsys) -> None:
    data = tiny_recipe(tmp_path)
    del data["train"]["run_name"]
    path = write_recipe(tmp_path / "tiny.yaml", data)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    assert print_config(capsys, [str(path)])["train"]["run_name"] == "tiny"
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p")
    names = []
    for run_id in ("trial1", "trial2"):
        monkeypatch.setenv("WANDB_RUN_ID", run_id)
        names.append(print_config(capsys, [str(path)])["train"]["run_name"])
        # An explicit name wins, from the command line or from the recipe.
        named = print_config(capsys, [str(path), "train.run_name=mine"])
        assert named["train"]["run_name"] == "mine"
    assert names == ["tiny-trial1", "tiny-trial2"]
    assert sweep_run_name(str(path), [], {"WANDB_RUN_ID": "x"}) is None  # not a sweep
    assert sweep_run_name(str(write_recipe(tmp_path / "named.yaml", tiny_recipe(tmp_path))),
                                [], {"WANDB_SWEEP_ID": "s", "WANDB_RUN_ID": "x"}) is None

    # Two trials of the sweep train side by side without touching each other's files.
    for run_id in ("trial1", "trial2"):
        monkeypatch.setenv("WANDB_RUN_ID", run_id)
        assert train.main([str(path), "train.epochs=1", "train.max_steps=3"]) == 0
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["tiny-trial1", "tiny-trial2"]
    for name in ("tiny-trial1", "tiny-trial2"):
        assert json.loads((runs / name / "results.json").read_text())["steps"] == 3


def test_a_sweep_trial_refuses_to_log_offline(tmp_path, monkeypatch, capsys) -> None:
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path, wandb={"mode": "offline"}))
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p")
    monkeypatch.setenv("WANDB_RUN_ID", "trial1")
    assert train.main([str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "wandb.mode=offline" in err and "wandb.mode=online" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="sweep sw33p"):
        check_sweep_logging("offline", {"WANDB_SWEEP_ID": "sw33p"})
    check_sweep_logging("online", {"WANDB_SWEEP_ID": "sw33p"})


def test_tracker_joins_the_run_the_agent_chose(tmp_path, monkeypatch) -> None:
    """The agent puts its run id in WANDB_RUN_ID; the Tracker must log into that run."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    recipe = Recipe()
    recipe.wandb = WandbConfig(mode="offline")
    tracker = Tracker(tmp_path / "run", recipe)
    try:
        assert tracker.wandb_run.id == "agentrun1"
    finally:
        tracker.finish()
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == "agentrun1"
