"""The training objective of one window: cross-entropy plus AWD-LSTM's activation
regularizers (Merity et al. 2018, Sec. 4.6)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..config import OptimConfig
from ..model import LanguageModel
from ..nn.lstm import State
from .distributed import DistContext


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


class StepLoss(nn.Module):
    """The objective of one window as a module, so that DistributedDataParallel, which
    synchronises gradients through ``forward``, sees the whole step.

    ``forward`` returns the mean cross-entropy (for reporting), the objective to minimise
    (cross-entropy plus the AR/TAR penalties) and the LSTM state after the window.
    """

    def __init__(self, model: LanguageModel, ar: float = 0.0, tar: float = 0.0) -> None:
        super().__init__()
        self.model, self.ar, self.tar = model, ar, tar

    def forward(self, inputs: Tensor, targets: Tensor,
                state: Optional[State] = None) -> tuple[Tensor, Tensor, State]:
        raw, dropped, state = self.model.hidden(inputs, state)
        logits = self.model.decoder(dropped)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss, loss + activation_penalty(raw, dropped, self.ar, self.tar), state


def step_loss(model: LanguageModel, cfg: OptimConfig, dist: DistContext,
              device: torch.device) -> nn.Module:
    """`StepLoss` of ``model``; data parallel, wrapped in DistributedDataParallel, which
    averages the gradients over the ranks during ``backward()``."""
    loss = StepLoss(model, cfg.ar, cfg.tar)
    if not dist.enabled:
        return loss
    return DistributedDataParallel(loss, device_ids=[device] if device.type == "cuda" else None)
