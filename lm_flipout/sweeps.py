"""W&B sweep trials: a sweep agent starts ``train.py`` with WANDB_SWEEP_ID and WANDB_RUN_ID
set; each trial then gets its own run directory and must log online."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from .config import read_recipe_data
from .errors import ConfigError


def sweep_run_name(recipe_path: str, overrides: list[str],
                   environ: Mapping[str, str]) -> Optional[str]:
    """``<recipe>-<WANDB_RUN_ID>`` when a W&B sweep agent started this process and neither the
    recipe nor the overrides name the run, so that every trial gets its own run directory."""
    if not (environ.get("WANDB_SWEEP_ID") and environ.get("WANDB_RUN_ID")):
        return None
    if any(item.partition("=")[0].strip() == "train.run_name" for item in overrides):
        return None
    train = read_recipe_data(recipe_path)[0].get("train")
    if isinstance(train, dict) and train.get("run_name") is not None:
        return None
    return f"{Path(recipe_path).stem}-{environ['WANDB_RUN_ID']}"


def check_sweep_logging(mode: str, environ: Mapping[str, str]) -> None:
    """A sweep trial must log online: offline, the agent would never see its results."""
    sweep = environ.get("WANDB_SWEEP_ID")
    if sweep and mode == "offline":
        raise ConfigError(
            f"This run is a trial of the W&B sweep {sweep} (WANDB_SWEEP_ID is set), but "
            "wandb.mode=offline, so the sweep would never receive its metrics. Add "
            "wandb.mode=online to the sweep's command (the files in recipes/sweeps/ do), or "
            "wandb.mode=disabled to train without W&B."
        )
