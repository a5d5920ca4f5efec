"""Exact resume from ``last.pt``: the checks a checkpoint must pass, the recipe changes a
resume may make, and restoring the training state and every generator from it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.optim import Optimizer

from ..config import Recipe, changed_settings, recipe_to_dict, with_defaults
from ..data.corpus import Corpus
from ..errors import CheckpointError, DataError, TrainingError
from ..model import LanguageModel
from ..nn.lstm import State
from .checkpoint import load_checkpoint, set_rng_state
from .data_match import changed_splits
from .distributed import DistContext, sum_across_ranks
from .optimizers import build_optimizer
from .run_dir import LAST_FILE, check_run_dir
from .schedules import Schedule
from .state import LAST_KEYS, Progress, own_columns, state_from_plain

# Recipe keys that may differ between a run and its --resume: how long and how often to
# train, log and checkpoint, where and how things run, and the learning rate and clipping (to
# recover from a divergence). Everything else would silently change the experiment.
RESUME_MAY_CHANGE = frozenset({
    "train.epochs", "train.max_steps", "train.early_stopping", "train.checkpoint_every_s",
    "train.checkpoint_every_steps", "train.log_every", "train.device", "train.deterministic",
    "train.threads", "train.compile", "train.out_dir", "train.run_name",
    "optim.lr", "optim.clip",
    "data.path", "data.train_file", "data.valid_file", "data.test_file", "data.hf_data_files",
    "data.hf_cache_dir", "data.cache_dir",
})


def _processes(count: int) -> str:
    return "a single process" if count == 1 else f"{count} data-parallel processes"


def checked_last(run_dir: Path, resume: bool, world_size: int,
                 allow_corrupt: bool = False) -> Optional[dict[str, Any]]:
    """Check the run directory (see `check_run_dir`); with ``resume`` return its checked
    last.pt, or None when there is none yet (``allow_corrupt``: see `load_checkpoint`)."""
    check_run_dir(run_dir, resume)
    path = run_dir / LAST_FILE
    if not (resume and path.exists()):
        return None
    return read_last(path, world_size, allow_corrupt)


def read_last(path: Path, world_size: int, allow_corrupt: bool = False) -> dict[str, Any]:
    """Load ``last.pt`` and check that this run (of ``world_size`` processes) can continue
    from it; CheckpointError otherwise."""
    state = load_checkpoint(path, map_location="cpu", allow_corrupt=allow_corrupt)
    missing = [key for key in LAST_KEYS if key not in state]
    if not missing and not isinstance(state["config"], dict):
        missing = ["a config mapping"]
    if missing:
        raise CheckpointError(
            f"Checkpoint {path} lacks {', '.join(missing)}, so the run cannot be "
            "resumed from it (best.pt, for one, holds only the model). Restore the run's own "
            "last.pt, or start a new run under another train.run_name."
        )
    names = {f.name for f in fields(Progress)}
    if not isinstance(state["progress"], dict) or not set(state["progress"]) <= names:
        raise CheckpointError(f"Checkpoint {path} has an unknown progress record; "
                              "it was written by another version of lm_flipout. Resume it "
                              "with that version, or start a new run.")
    _check_world_size(state, path, world_size)
    return state


def _check_world_size(state: dict, path: Path, world_size: int) -> None:
    """A resume needs as many processes as the run that wrote last.pt (one RNG state each)."""
    saved = state.get("world_size", 1)
    if saved == world_size:
        return
    how = ("as a single process (python train.py ... --resume)" if saved == 1 else
           f"under torchrun with {saved} processes in all (nodes x --nproc_per_node)")
    raise CheckpointError(
        f"{path} was written by {_processes(saved)}, but this resume has "
        f"{_processes(world_size)}. Every process's random-number state is part of "
        f"the checkpoint, so the run continues exactly only with the same number: resume it "
        f"{how}, or start a new run under another train.run_name."
    )


def adopt_config(stored: dict, recipe: Recipe, last_path: Path,
                 echo: Callable[[str], None]) -> None:
    """Refuse a resume whose recipe changes the experiment (TrainingError); report the
    allowed changes (`RESUME_MAY_CHANGE` and the W&B settings)."""
    changed = changed_settings(with_defaults(stored), recipe_to_dict(recipe))
    fixed = [k for k in changed if k not in RESUME_MAY_CHANGE and not k.startswith("wandb.")]
    if fixed:
        shown = "; ".join(f"{k}: run {changed[k][0]!r}, now {changed[k][1]!r}"
                          for k in fixed[:6])
        more = f" (and {len(fixed) - 6} more)" if len(fixed) > 6 else ""
        raise TrainingError(
            f"--resume: the recipe differs from the one {last_path} was trained with in "
            f"settings a run cannot change midway: {shown}{more}. Resume with the run's own "
            f"settings (its {last_path.parent / 'config.yaml'}), or start a new run under another "
            "name with train.run_name=NAME. Only the training length, checkpoint/log "
            "intervals, device, threads, compilation, paths, W&B settings, optim.lr and "
            "optim.clip may change."
        )
    for key, (before, now) in changed.items():
        echo(f"--resume: {key} changed from {before!r} to {now!r}.")


def check_data_unchanged(state: dict, corpus: Corpus, last_path: Path) -> None:
    """Refuse a resume on data whose text differs from what the run trained and scored on so
    far (the sha256 digests in last.pt; checkpoints from before they were recorded pass)."""
    changed = list(changed_splits(state, corpus))
    if changed:
        which = (f"{changed[0]} split is" if len(changed) == 1 else
                 f"{', '.join(changed[:-1])} and {changed[-1]} splits are")
        raise DataError(
            f"--resume: the {which} not the text {last_path} was trained with (the sha256 "
            "recorded in it differs), so going on would mix two datasets in one "
            "run. Point data.path (or data.train_file / valid_file / test_file) at the run's "
            "original data, or start a new run under another name with train.run_name=NAME."
        )


def restore_training(state: dict, recipe: Recipe, model: LanguageModel, schedule: Schedule,
                     dist: DistContext, device: torch.device,
                     last_path: Path) -> tuple[Optimizer, Progress, Optional[State]]:
    """Load last.pt's weights and schedule into ``model`` and ``schedule``; return the
    optimizer (NT-ASGD's averaging one once the schedule switched), the progress record and
    this rank's carried LSTM state."""
    try:
        model.load_state_dict(state["model"])
        schedule.load_state_dict(state["schedule"])
        optimizer = build_optimizer(recipe.optim, model.parameters(),
                                    averaging=schedule.averaging)
        optimizer.load_state_dict(state["optimizer"])
        progress = Progress(**state["progress"])
        carried = state_from_plain(own_columns(state["carried_state"], dist), model, device)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(
            f"Checkpoint {last_path} does not fit the model and optimizer its own config "
            f"describes ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}). "
            "It is damaged or was written by another version of lm_flipout; start a new run "
            "under another train.run_name."
        ) from None
    old_lr = float(state["config"]["optim"]["lr"])
    if recipe.optim.lr != old_lr:  # keep the schedule's cuts, rescale the base
        for group in optimizer.param_groups:
            group["lr"] *= recipe.optim.lr / old_lr
    return optimizer, progress, carried


def restore_rng(saved: Any, dist: DistContext, last_path: Path) -> None:
    """Set this rank's generators from last.pt (its own entry of the per-rank list). When
    any rank fails, every rank raises CheckpointError."""
    error: Optional[Exception] = None
    try:
        set_rng_state(saved[dist.rank] if dist.enabled else saved)
    except (CheckpointError, TypeError, ValueError, KeyError, IndexError,
            RuntimeError) as err:
        error = err
    failed = sum_across_ranks(dist, error is not None)[0]
    if not failed:
        return
    if isinstance(error, CheckpointError):
        raise error
    raise CheckpointError(
        f"Checkpoint {last_path} holds a damaged random-number state "
        f"({type(error).__name__ if error else 'on another rank'}), so the run cannot be "
        "resumed exactly. Restore the run's own last.pt, or start a new run under another "
        "train.run_name."
    ) from None
