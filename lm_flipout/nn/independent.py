"""The ``independent`` estimator's recurrence: every sequence n has its own recurrent weight
W_n = W̄ + W̄ ∘ U_n (Wen et al. 2018, §3, the exact and expensive baseline of flipout), run
on the cell's equations and left to autograd, on any backend's tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from .cell import CellOptions, activate_and_update
from .noise import NoiseSample


def independent_recurrence(
    input_terms: Tensor,
    state: tuple[Tensor, Tensor],
    weight: Tensor,
    sample: NoiseSample,
    options: CellOptions = CellOptions(),
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Outputs (T, B, H) and the final (h, c) from the input terms x_t W_ihᵀ + b (T, B, 4H);
    ``options`` carries the hidden-state mask and the per-step masks (flipout's are unused).

    The (B, 4H, H) weights W_n are formed once per call, before the loop, so autograd keeps
    one copy for backward, not one per step."""
    weights = weight + sample.delta(weight)  # W_n = W̄ + ΔW_n, (B, 4H, H)
    h, c = state
    outputs = []
    for t, input_term in enumerate(input_terms):
        u = h if options.hidden_mask is None else h * options.hidden_mask
        recurrent = torch.bmm(weights, u.unsqueeze(2)).squeeze(2)  # u W_nᵀ per sequence
        step = activate_and_update(input_term + recurrent, h, c, options.at_step(t))
        h, c = step.h, step.c
        outputs.append(h)
    return torch.stack(outputs), (h, c)
