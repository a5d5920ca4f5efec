"""The ``independent`` estimator's recurrence: every sequence n has its own recurrent weight
W_n = W̄ + W̄ ∘ U_n (Wen et al. 2018, §3, the exact and expensive baseline of flipout), run
on the cell's equations and left to autograd, on any backend's tensors."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .cell import activate_and_update
from .noise import NoiseSample


def independent_recurrence(
    input_terms: Tensor,
    state: tuple[Tensor, Tensor],
    weight: Tensor,
    sample: NoiseSample,
    hidden_mask: Optional[Tensor] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Outputs (T, B, H) and the final (h, c) from the input terms x_t W_ihᵀ + b (T, B, 4H).

    The (B, 4H, H) weights W_n are formed once per call, before the loop, so autograd keeps
    one copy for backward, not one per step."""
    weights = weight + sample.delta(weight)  # W_n = W̄ + ΔW_n, (B, 4H, H)
    h, c = state
    outputs = []
    for input_term in input_terms:
        u = h if hidden_mask is None else h * hidden_mask
        recurrent = torch.bmm(weights, u.unsqueeze(2)).squeeze(2)  # u W_nᵀ per sequence
        step = activate_and_update(input_term + recurrent, c)
        h, c = step.h, step.c
        outputs.append(h)
    return torch.stack(outputs), (h, c)
