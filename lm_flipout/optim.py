"""Optimizers and the validation-driven schedule of the paper and its baselines.

* ``sgd``: plain SGD; the learning rate is multiplied by ``plateau_factor`` (÷4) whenever
  validation stops improving under the non-monotonic criterion.
* ``nt_asgd``: SGD until the same criterion fires, then averaged SGD (Merity et al. 2018);
  evaluation uses the averaged weights.
* ``adam`` / ``amsgrad``: constant learning rate.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn
from torch.optim import Optimizer


def build_optimizer(cfg, params, averaging: bool = False) -> Optimizer:
    """The optimizer for ``cfg`` (an OptimConfig); ``averaging`` selects NT-ASGD's second phase."""
    params = list(params)
    if cfg.name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                weight_decay=cfg.weight_decay, amsgrad=cfg.name == "amsgrad")
    if cfg.name == "nt_asgd" and averaging:
        return torch.optim.ASGD(params, lr=cfg.lr, t0=0, lambd=0.0, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Schedule:
    """Tracks validation losses and says when to cut the learning rate or start averaging."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.history: list[float] = []
        self.averaging = False

    def stalled(self, val_loss: float) -> bool:
        """Non-monotonic criterion: no better than the best loss from before the last
        ``nonmono`` epochs (with ``nonmono`` = 0: no better than the best so far)."""
        window = self.history[: len(self.history) - self.cfg.nonmono]
        return len(self.history) > self.cfg.nonmono and bool(window) and val_loss > min(window)

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
            return "lr"
        if self.cfg.name == "nt_asgd" and not self.averaging:
            self.averaging = True
            return "averaging"
        return None

    def state_dict(self) -> dict:
        return {"history": list(self.history), "averaging": self.averaging}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self.averaging = bool(state["averaging"])


@contextlib.contextmanager
def averaged_weights(model: nn.Module, optimizer: Optimizer) -> Iterator[None]:
    """Temporarily load ASGD's running averages into ``model`` (no-op for other optimizers)."""
    if not isinstance(optimizer, torch.optim.ASGD):
        yield
        return
    saved = []
    with torch.no_grad():
        for p in model.parameters():
            state = optimizer.state.get(p, {})
            if "ax" in state:
                saved.append((p, p.detach().clone()))
                p.copy_(state["ax"])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)
