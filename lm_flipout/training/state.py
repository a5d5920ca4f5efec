"""What a run's checkpoints hold.

``last.pt`` holds the model, optimizer, schedule, the `Progress` record (with the exact data
position), the LSTM state carried between windows, every RNG state, the recipe, the
vocabulary and the data's digests: enough to continue the run exactly. ``best.pt`` holds the
weights of the best validation epoch (NT-ASGD's averaged ones once it averages), the recipe
and the vocabulary.

Data parallel: the carried state of the global batch is stored, as one process holding the
whole batch would hold it; each rank owns a block of its columns (see
`lm_flipout.data.batching`), and last.pt keeps one RNG state per rank.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.optim import Optimizer

from ..config import Recipe, recipe_to_dict
from ..data.corpus import Corpus
from ..errors import CheckpointError, TrainingError
from ..model import LanguageModel
from ..nn.lstm import State
from .checkpoint import CORRUPT_KEY, load_checkpoint
from .distributed import DistContext
from .optimizers import averaged_weights
from .schedules import Schedule

LAST_KEYS = ("model", "optimizer", "schedule", "progress", "carried_state", "rng", "config",
             "vocab")

PlainState = Optional[dict[str, list[torch.Tensor]]]  # {"h": [per layer], "c": [per layer]}


@dataclass
class Progress:
    """Where the run stands; everything here goes into ``last.pt``."""

    epoch: int = 1  # the epoch in progress
    position: int = 0  # data position of the next batch within the epoch
    step: int = 0  # optimizer steps taken
    best_valid_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    valid_seconds: float = 0.0  # spent scoring the validation split
    metrics_bytes: int = 0  # length of metrics.jsonl when the checkpoint was written
    epoch_nll: float = 0.0  # summed training loss of the epoch in progress (nats)
    epoch_tokens: int = 0  # training tokens of the epoch in progress
    log_nll: float = 0.0  # summed training loss since the last "train" log line
    log_tokens: int = 0  # training tokens since the last "train" log line
    log_seconds: float = 0.0  # time spent in training steps since the last "train" log line
    checkpoint_corrupt: bool = False  # resumed from a last.pt that failed its checksum

    def count_step(self, loss: float, tokens: int, seconds: float, position: int) -> None:
        """Account for one optimizer step on ``tokens`` targets; ``position`` is where the
        next batch of the epoch starts."""
        self.train_seconds += seconds
        self.log_seconds += seconds
        self.train_tokens += tokens
        self.epoch_nll += loss * tokens
        self.epoch_tokens += tokens
        self.log_nll += loss * tokens
        self.log_tokens += tokens
        self.step += 1
        self.position = position

    def take_log_window(self) -> tuple[float, float]:
        """The mean training loss and tokens per second since the last call; starts anew."""
        mean = self.log_nll / self.log_tokens
        speed = self.log_tokens / max(self.log_seconds, 1e-9)
        self.log_nll, self.log_tokens, self.log_seconds = 0.0, 0, 0.0
        return mean, speed

    def record_validation(self, valid_loss: float) -> bool:
        """Note the epoch's validation loss; True when it is the best so far."""
        improved = valid_loss < self.best_valid_loss
        if improved:
            self.best_valid_loss, self.best_epoch = valid_loss, self.epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return improved

    def next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self.epoch_nll, self.epoch_tokens = 0.0, 0

    @property
    def train_loss(self) -> float:
        """Mean training loss of the epoch in progress."""
        return self.epoch_nll / max(self.epoch_tokens, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / max(self.train_seconds, 1e-9)


def state_to_plain(state: Optional[State]) -> PlainState:
    """A carried LSTM state as per-layer CPU tensors."""
    if state is None:
        return None
    h, c = state
    return {"h": [t.cpu() for t in h], "c": [t.cpu() for t in c]}


def state_from_plain(plain: PlainState, model: LanguageModel,
                     device: torch.device) -> Optional[State]:
    """The inverse of `state_to_plain`, on ``device`` in the layout ``model`` uses."""
    if plain is None:
        return None
    h = [t.to(device) for t in plain["h"]]
    c = [t.to(device) for t in plain["c"]]
    return (model.lstm._pack(h), model.lstm._pack(c))


def join_columns(shards: list[PlainState]) -> PlainState:
    """The ranks' carried states (rank order) side by side: the global batch's state, as one
    process with the whole batch would hold it."""
    if shards[0] is None:
        return None
    return {key: [torch.cat(layer) for layer in zip(*(shard[key] for shard in shards))]
            for key in ("h", "c")}


def own_columns(plain: PlainState, dist: DistContext) -> PlainState:
    """This rank's columns [rB/W, (r+1)B/W) of a global carried state."""
    if plain is None or not dist.enabled:
        return plain
    out = {}
    for key in ("h", "c"):
        layers = []
        for t in plain[key]:
            width = t.shape[0] // dist.world_size
            layers.append(t[dist.rank * width:(dist.rank + 1) * width].clone())
        out[key] = layers
    return out


def last_checkpoint(model: LanguageModel, optimizer: Optimizer, schedule: Schedule,
                    progress: Progress, shards: list[tuple[dict, PlainState]],
                    dist: DistContext, recipe: Recipe, corpus: Corpus) -> dict[str, Any]:
    """last.pt's content; ``shards`` holds every rank's (RNG state, carried state)."""
    rngs = [rng for rng, _ in shards]
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "progress": asdict(progress),
        "carried_state": join_columns([carried for _, carried in shards]),
        "rng": rngs if dist.enabled else rngs[0],  # data parallel: one per rank
        "world_size": dist.world_size,
        "config": recipe_to_dict(recipe),
        **data_identity(corpus),
    }


def best_checkpoint(model: LanguageModel, optimizer: Optimizer, progress: Progress,
                    recipe: Recipe, corpus: Corpus) -> dict[str, Any]:
    """best.pt's content: the weights evaluation uses (NT-ASGD's average once it averages)."""
    with averaged_weights(model, optimizer):
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"model": weights, "config": recipe_to_dict(recipe), **data_identity(corpus),
            "progress": asdict(progress)}


def data_identity(corpus: Corpus) -> dict[str, Any]:
    """What a checkpoint records of its data: the vocabulary, and the sha256 of each split's
    text ("data_digests"), against which evaluation checks the data it is given."""
    return {"vocab": list(corpus.vocab), "data_digests": dict(corpus.digests)}


def first_nonfinite_weight(model: LanguageModel) -> Optional[str]:
    """The name of the first parameter holding NaN or infinite values, if any."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


def load_best_weights(model: LanguageModel, best_path: Path, device: torch.device,
                      allow_corrupt: bool = False) -> bool:
    """Load best.pt's weights into ``model``; TrainingError when no epoch has finished.
    Returns whether best.pt failed its checksum (loaded only with ``allow_corrupt``)."""
    if not best_path.exists():
        raise TrainingError(f"No best.pt in {best_path.parent}: no epoch finished, so there is "
                            "nothing to evaluate. Train for at least one epoch.")
    best = load_checkpoint(best_path, map_location=device, allow_corrupt=allow_corrupt)
    try:
        model.load_state_dict(best["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"{best_path} does not hold this run's model ({type(err).__name__}). It was "
            "replaced or damaged; start a new run under another train.run_name."
        ) from None
    return bool(best.get(CORRUPT_KEY))
