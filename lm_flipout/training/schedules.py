"""The validation-driven learning-rate schedule: AWD-LSTM's non-monotonic criterion
(Merity et al. 2018, Sec. 3) cuts SGD's learning rate by ``plateau_factor`` or switches
NT-ASGD to averaging; Adam and AMSGrad keep a constant learning rate.

The criterion looks at the validation losses recorded so far (the history): it fires when
more than ``nonmono`` losses are recorded and the new one is worse than the best of them
from before the last ``nonmono``. NT-ASGD switches once and keeps AWD-LSTM's rule as is.
After an SGD cut the history starts afresh, so the next cut needs ``nonmono`` + 1 epochs
of new evidence at the new rate; comparing every later epoch with the same old best would
cut on consecutive epochs (30 → 7.5 → 1.9 → ...) and collapse the rate."""

from __future__ import annotations

from typing import Optional

from torch.optim import Optimizer

from ..config import OptimConfig


class Schedule:
    """Tracks validation losses and says when to cut the learning rate or start averaging."""

    def __init__(self, cfg: OptimConfig) -> None:
        self.cfg = cfg
        self.history: list[float] = []  # validation losses since the start or the last cut
        self.averaging = False

    def stalled(self, val_loss: float) -> bool:
        """Non-monotonic criterion (AWD-LSTM): more than ``nonmono`` losses are recorded and
        ``val_loss`` is worse than the best of them from before the last ``nonmono``."""
        nonmono = self.cfg.nonmono
        if len(self.history) <= nonmono:
            return False
        return val_loss > min(self.history[: len(self.history) - nonmono])

    def step(self, val_loss: float, optimizer: Optimizer) -> Optional[str]:
        """Record one validation loss; adjust ``optimizer`` in place. Returns what changed
        (``"lr"`` or ``"averaging"``) or None. The caller rebuilds the optimizer on
        ``"averaging"``."""
        stalled = self.stalled(val_loss)
        self.history.append(val_loss)
        if not stalled:
            return None
        if self.cfg.name == "sgd":
            for group in optimizer.param_groups:
                group["lr"] *= self.cfg.plateau_factor
            self.history = []  # wait for new evidence at the new rate (module docstring)
            return "lr"
        if self.cfg.name == "nt_asgd" and not self.averaging:
            self.averaging = True
            return "averaging"
        return None

    def state_dict(self) -> dict:
        return {"history": list(self.history), "averaging": self.averaging}

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(v) for v in state["history"]]
        self.averaging = bool(state["averaging"])
