"""The per-step masks of the LSTM cell: recurrent dropout without memory loss (Semeniuta et
al. 2016) on the cell update g, and zoneout (Krueger et al. 2017) on c and h.

One layer call draws all its masks up front, as (T, B, H) tensors, in a fixed order (update,
then cell, then hidden), so the recurrence takes them as operands, its backward reuses them,
and the random stream is the same on every run from the same seed. The equations they enter
are in `lm_flipout.nn.cell`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .dropout import check_rate, inverted_keep_mask


class CallMasks(NamedTuple):
    """One call's (T, B, H) masks for `lstm_layer`'s ``update_mask``, ``zoneout_cell`` and
    ``zoneout_hidden`` (None where unused); a mask shared over steps or sequences is an
    expanded view, not a copy."""

    update_mask: Optional[Tensor] = None
    zoneout_cell: Optional[Tensor] = None
    zoneout_hidden: Optional[Tensor] = None


class CellMasks(nn.Module):
    """Draws a layer's recurrent-dropout and zoneout masks for one call.

    In training (or in eval with Monte-Carlo sampling, see `set_mc_sampling`): d^g keeps a
    unit with probability 1 − ``cell_dropout`` and scales it by 1/(1 − p), fresh at every
    step, or once per sequence with ``per_step=False``; d^c and d^h are 1 (keep the previous
    value) with probability ``zoneout_cell`` / ``zoneout_hidden``, per unit and step. In
    eval: no recurrent dropout (inverted scaling makes the plain cell its expectation), and
    zoneout's masks are the rates themselves, the expectation of Krueger et al. (2017)."""

    def __init__(self, cell_dropout: float = 0.0, zoneout_cell: float = 0.0,
                 zoneout_hidden: float = 0.0, per_step: bool = True) -> None:
        super().__init__()
        self.cell_dropout = check_rate(cell_dropout, "LSTM: cell_dropout")
        self.zoneout_cell = check_rate(zoneout_cell, "LSTM: zoneout_cell")
        self.zoneout_hidden = check_rate(zoneout_hidden, "LSTM: zoneout_hidden")
        self.per_step = per_step
        self.sample_in_eval = False

    @property
    def in_use(self) -> bool:
        """Whether any of the three rates is non-zero."""
        return self.cell_dropout > 0 or self.zoneout_cell > 0 or self.zoneout_hidden > 0

    def draw(self, steps: int, batch: int, hidden: int, like: Tensor) -> CallMasks:
        """The masks of one call with x like ``like`` (device, dtype)."""
        sampling = self.training or self.sample_in_eval
        update = None
        if self.cell_dropout > 0 and sampling:
            shape = (steps if self.per_step else 1, batch, hidden)
            update = inverted_keep_mask(shape, self.cell_dropout, like)
        cell, hidden_mask = (self._zoneout(rate, steps, batch, hidden, like, sampling)
                             for rate in (self.zoneout_cell, self.zoneout_hidden))
        return CallMasks(*(None if m is None else m.expand(steps, batch, hidden)
                           for m in (update, cell, hidden_mask)))

    @staticmethod
    def _zoneout(rate: float, steps: int, batch: int, hidden: int, like: Tensor,
                 sampling: bool) -> Optional[Tensor]:
        """Bernoulli(rate) keep-masks (T, B, H) when sampling, else the rate (1, 1, H)."""
        if rate == 0:
            return None
        if not sampling:
            return like.new_full((1, 1, hidden), rate)
        return (torch.rand(steps, batch, hidden, device=like.device) < rate).to(like.dtype)

    def extra_repr(self) -> str:
        return (f"cell_dropout={self.cell_dropout}, per_step={self.per_step}, "
                f"zoneout_cell={self.zoneout_cell}, zoneout_hidden={self.zoneout_hidden}")
