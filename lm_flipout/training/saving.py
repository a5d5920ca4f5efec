"""How a `Trainer` writes its checkpoints, and what it says when it cannot.

Crash safety: at the end of an epoch best.pt is written before last.pt. A crash between the
two leaves last.pt from before the epoch's end, so a resume redoes the end of the epoch (and
rewrites best.pt) instead of trusting a best.pt that last.pt does not know about. Every file
is written atomically, so a failed write (a full disk, a read-only folder) leaves the previous
checkpoint intact and becomes one `RunWriteError` that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

from ..config import Recipe
from ..data.corpus import Corpus
from ..errors import TrainingError
from ..model import LanguageModel
from .checkpoint import rng_state, save_checkpoint
from .distributed import DistContext, gather_to_main, on_main
from .run_dir import write_config
from .schedules import Schedule
from .state import (
    Progress,
    best_checkpoint,
    first_nonfinite_weight,
    last_checkpoint,
    state_to_plain,
)
from .stopping import StopControl, diverged
from .write_failures import guarded_write, kept_checkpoints


class CheckpointWriting:
    """The checkpoint half of `Trainer` (which sets every attribute named below)."""

    run_dir: Path
    last_path: Path
    best_path: Path
    recipe: Recipe
    corpus: Corpus
    model: LanguageModel
    optimizer: Any
    schedule: Schedule
    progress: Progress
    dist: DistContext
    stop: StopControl
    tracker: Any
    carried: Any
    _saved_step: Optional[int]  # step of the last.pt on disk
    _config_pending: bool  # a resume rewrites config.yaml with its first last.pt
    _update_wall_time: Callable[[], None]

    def _guarded(self, target: Path) -> ContextManager[None]:
        """Failed writes to ``target`` become one RunWriteError naming what is kept."""
        return guarded_write(target, lambda: kept_checkpoints(self.last_path, self._saved_step,
                                                              self.best_path))

    def _diverged(self, what: str) -> TrainingError:
        return diverged(what, self.progress.epoch, self.last_path, self._saved_step,
                        self.best_path)

    def _save_last(self) -> None:
        """Write last.pt (rank 0, with every rank's RNG and carried state gathered)."""
        broken = first_nonfinite_weight(self.model)  # never replace a good last.pt with it
        if broken is not None:
            raise self._diverged(f"the weight {broken} holds NaN or infinite values after "
                                 f"step {self.progress.step}")
        self._update_wall_time()
        shards = gather_to_main(self.dist, (rng_state(), state_to_plain(self.carried)))
        on_main(self.dist, lambda: self._write_last(shards))
        self._saved_step = self.progress.step
        self.stop.saved()

    def _write_last(self, shards: list) -> None:
        self.progress.metrics_bytes = self.tracker.metrics_bytes()
        with self._guarded(self.last_path):
            save_checkpoint(last_checkpoint(self.model, self.optimizer, self.schedule,
                                            self.progress, shards, self.dist, self.recipe,
                                            self.corpus), self.last_path)
            if self._config_pending:
                write_config(self.run_dir, self.recipe)
                self._config_pending = False

    def _save_best(self) -> None:
        """Write best.pt (rank 0; the weights are the same on every rank)."""
        def write() -> None:
            with self._guarded(self.best_path):
                save_checkpoint(best_checkpoint(self.model, self.optimizer, self.progress,
                                                self.recipe, self.corpus), self.best_path)
        on_main(self.dist, write)
