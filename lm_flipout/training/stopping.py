"""When training stops or saves outside its schedule: SIGINT/SIGTERM, time- and step-based
checkpoints, and a diverged loss.

A first SIGINT or SIGTERM lets the current step finish and last.pt be written; a second one
stops at once. During the final scoring, when last.pt already holds the finished training, the
first one stops at once: ``--resume`` then scores the splits that were not scored yet. Data
parallel, the ranks agree after every step, in one small all-reduce, on the step's loss, on a
stop signal and on a checkpoint that rank 0's clock asks for, so they all stop and save after
the same step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config import TrainConfig
from ..errors import TrainingError
from .distributed import DistContext, sum_across_ranks
from .write_failures import kept_checkpoints


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived. With ``saved`` the current step was finished and ``last.pt``
    written; without it (a second signal) the run stopped at once and ``last.pt`` is the one
    from the last regular save. ``scoring``: it came during the final scoring, which stopped
    at once (last.pt holds the finished training)."""

    def __init__(self, signum: int, run_dir: Path, saved: bool = True,
                 scoring: bool = False) -> None:
        super().__init__(signum)
        self.signum, self.run_dir, self.saved, self.scoring = signum, run_dir, saved, scoring


class StopControl:
    """Stop signals and checkpoint timing of one training process."""

    def __init__(self, cfg: TrainConfig, dist: DistContext, run_dir: Path,
                 echo: Callable[[str], None]) -> None:
        self.cfg, self.dist, self.run_dir, self.echo = cfg, dist, run_dir, echo
        self._received: Optional[int] = None  # the signal this process received
        self._agreed: Optional[int] = None  # data parallel: the one all ranks act on
        self._agreed_due = False  # data parallel: rank 0's clock asks for a checkpoint
        self._last_save = time.monotonic()
        self._at_once = False  # a signal stops at once (the final scoring)

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM (in the main thread) until the block ends."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = ({s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                    if in_main else {})
        self._last_save = time.monotonic()
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def stopping_at_once(self) -> Iterator[None]:
        """Within the block (the final scoring, with last.pt up to date) a signal stops the
        run at once instead of after the current step."""
        if self._received is not None:
            raise Interrupted(self._received, self.run_dir, scoring=True)
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._at_once:
            self._received = signum
            self.echo(f"\n{name} received during the final scoring: stopping now. last.pt "
                      "holds the finished training; --resume scores the splits left.")
            raise Interrupted(signum, self.run_dir, scoring=True)
        if self._received is not None:  # a second signal: stop now, without saving
            raise Interrupted(signum, self.run_dir, saved=False)
        self._received = signum
        self.echo(f"\n{name} received: finishing the current step and writing last.pt "
                  f"(send it again to stop at once).")

    def requested(self) -> Optional[int]:
        """The signal to stop for: this process's, or (data parallel) the one all ranks
        agreed on, so that they all stop after the same step."""
        return self._agreed if self.dist.enabled else self._received

    def stop_if_requested(self) -> None:
        """At a point where last.pt is up to date: leave if a signal asked for it."""
        signum = self.requested()
        if signum is not None:
            raise Interrupted(signum, self.run_dir)

    def agree(self, nll: float = 0.0, tokens: int = 0) -> tuple[float, int]:
        """Data parallel, one all-reduce: the summed NLL and token count of the step, whether
        a rank received SIGINT or SIGTERM, and whether rank 0's clock asks for a checkpoint."""
        received = self._received
        nll, tokens, sigint, sigterm, due = sum_across_ranks(
            self.dist, nll, tokens, received == signal.SIGINT, received == signal.SIGTERM,
            self.dist.is_main and self._time_due())
        if sigterm or sigint:
            self._agreed = signal.SIGTERM if sigterm else signal.SIGINT
        self._agreed_due = due > 0
        return nll, int(tokens)

    def checkpoint_due(self, step: int) -> bool:
        """Whether last.pt is to be written after ``step`` (train.checkpoint_every_steps or
        train.checkpoint_every_s)."""
        every = self.cfg.checkpoint_every_steps
        if every and step % every == 0:
            return True
        return self._agreed_due if self.dist.enabled else self._time_due()

    def _time_due(self) -> bool:
        every = self.cfg.checkpoint_every_s
        return every > 0 and time.monotonic() - self._last_save >= every

    def saved(self) -> None:
        """last.pt was just written; the time-based interval starts again."""
        self._last_save = time.monotonic()


# A model whose validation loss is this many nats above the uniform guess (ln V) predicts
# e times worse than knowing nothing: its training has diverged, whether or not the loss is
# still finite. (Our choice; any trained model sits far below ln V.)
DIVERGENCE_MARGIN_NATS = 1.0


def validation_divergence(loss: float, vocab_size: int) -> Optional[str]:
    """What is wrong with a validation loss (mean nats per token) that means divergence: not
    finite, or above ln(vocab_size) + `DIVERGENCE_MARGIN_NATS`; None for a usable one."""
    uniform = math.log(vocab_size)
    if math.isfinite(loss) and loss <= uniform + DIVERGENCE_MARGIN_NATS:
        return None
    if not math.isfinite(loss):
        return f"the validation loss became {loss}"
    ppl = math.exp(loss) if loss < 709 else math.inf
    return (f"the validation loss became {loss:.4g} nats (perplexity {ppl:.4g}), more than "
            f"{DIVERGENCE_MARGIN_NATS:g} nat above the {uniform:.3f} of a uniform guess over the "
            f"{vocab_size} tokens")


def diverged(what: str, epoch: int, last_path: Path, saved_step: Optional[int],
             best_path: Path) -> TrainingError:
    """The error for a non-finite loss, gradient or weight: it names the checkpoints kept."""
    kept = kept_checkpoints(last_path, saved_step, best_path)
    return TrainingError(
        f"Training diverged: {what} (epoch {epoch}); the run stopped without saving "
        f"it. {kept}. Lower optim.lr, enable or tighten gradient clipping (optim.clip) or "
        "weaken the noise; optim.lr and optim.clip may be changed on --resume, other "
        "settings need a new run (train.run_name=NAME)."
    )
