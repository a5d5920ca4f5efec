"""The optimizers of the paper and its baselines (the learning-rate schedule is in
`lm_flipout.training.schedules`).

* ``sgd``: plain SGD.
* ``nt_asgd``: SGD until the schedule's non-monotonic criterion fires, then averaged SGD
  (Merity et al. 2018, Sec. 3); evaluation and best.pt use the averaged weights.
* ``adam`` / ``amsgrad``: Adam, with AMSGrad's maximum of past second moments for the latter.

Averaged SGD is `AveragedSGD` rather than ``torch.optim.ASGD``: torch's ASGD applies the
learning rate of the previous step (so per-step rescaling for variable BPTT lags by one step)
and its average leaves out the first iterate. `AveragedSGD` takes plain SGD steps and keeps
the exact arithmetic mean of the iterates since the switch.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional

import torch
from torch import nn
from torch.optim import Optimizer

from ..config import OptimConfig


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


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter],
                    averaging: bool = False) -> Optimizer:
    """The optimizer for ``cfg`` (an OptimConfig); ``averaging`` selects NT-ASGD's second phase."""
    params = list(params)
    if cfg.name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                weight_decay=cfg.weight_decay, amsgrad=cfg.name == "amsgrad")
    if cfg.name == "nt_asgd" and averaging:
        return AveragedSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def scaled_step(optimizer: Optimizer, lr_scale: float) -> float:
    """One optimizer step with every learning rate multiplied by ``lr_scale`` (variable-length
    BPTT scales it by window length / bptt, Merity et al. 2018, Sec. 4.1); returns the first
    group's unscaled learning rate."""
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] *= lr_scale
    try:
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr
    return base_lrs[0]


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
