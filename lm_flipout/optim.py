"""Optimizers and the validation-driven schedule of the paper and its baselines.

* ``sgd``: plain SGD; the learning rate is multiplied by ``plateau_factor`` (÷4) whenever
  validation stops improving under the non-monotonic criterion.
* ``nt_asgd``: SGD until the same criterion fires, then averaged SGD (Merity et al. 2018);
  evaluation and best.pt use the averaged weights.
* ``adam`` / ``amsgrad``: constant learning rate.

Averaged SGD is `AveragedSGD` rather than ``torch.optim.ASGD``: torch's ASGD applies the
learning rate of the previous step (so per-step rescaling for variable BPTT lags by one step)
and its average leaves out the first iterate. `AveragedSGD` takes plain SGD steps and keeps
the exact arithmetic mean of the iterates since the switch.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.optim import Optimizer


class AveragedSGD(torch.optim.SGD):
    """SGD that also keeps, per parameter, the arithmetic mean of the iterates it produced.

    After n steps ``state[p]["ax"]`` = (p_1 + ... + p_n) / n, where p_k is the parameter after
    step k, and ``state[p]["n_avg"]`` = n. Both are in ``state_dict()``, so a resumed run
    continues the same average.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "ax" not in state:
                    state["ax"] = p.detach().clone()
                    state["n_avg"] = 1
                else:
                    n = int(state["n_avg"]) + 1
                    state["ax"].add_(p.detach() - state["ax"], alpha=1.0 / n)
                    state["n_avg"] = n
        return loss


def build_optimizer(cfg, params, averaging: bool = False) -> Optimizer:
    """The optimizer for ``cfg`` (an OptimConfig); ``averaging`` selects NT-ASGD's second phase."""
    params = list(params)
    if cfg.name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                weight_decay=cfg.weight_decay, amsgrad=cfg.name == "amsgrad")
    if cfg.name == "nt_asgd" and averaging:
        return AveragedSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def activation_penalty(raw: Tensor, dropped: Tensor, ar: float, tar: float) -> Tensor:
    """AWD-LSTM's activation regularizers on the last LSTM layer's outputs (T, B, D):
    ``ar * mean(dropped²)`` (AR, on the output after dropout) plus
    ``tar * mean((raw[t+1] - raw[t])²)`` (TAR, on the output before dropout)."""
    penalty = raw.new_zeros(())
    if ar:
        penalty = penalty + ar * dropped.pow(2).mean()
    if tar and raw.shape[0] > 1:
        penalty = penalty + tar * (raw[1:] - raw[:-1]).pow(2).mean()
    return penalty


class Schedule:
    """Tracks validation losses and says when to cut the learning rate or start averaging."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.history: list[float] = []
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


@contextlib.contextmanager
def averaged_weights(model: nn.Module, optimizer: Optional[Optimizer]) -> Iterator[None]:
    """Temporarily load `AveragedSGD`'s running means into ``model`` (no-op for other
    optimizers, and before the first averaged step)."""
    if not isinstance(optimizer, AveragedSGD):
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
