"""Perplexity, bits per character and Monte-Carlo averaged evaluation.

Metrics are normalised so they compare across tokenizers: the mean NLL per evaluated
token is scaled by the split's tokens per character (bits per character) or per word
(word-level perplexity), so a split whose tail was trimmed by batching still counts right.
Those two are left out where the tokens do not account for every character (`<unk>`).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch

from .data.corpus import Split
from .data.metrics import bits_per_char
from .model import LanguageModel
from .nn import detach_state, set_mc_sampling
from .nn.lstm import State


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


@torch.no_grad()
def total_nll(
    model: LanguageModel,
    batches: Iterable,
    carries_state: bool,
    device: torch.device,
    mc_samples: int = 0,
) -> tuple[float, int]:
    """Summed NLL (nats) and number of predicted tokens over ``batches`` in eval mode.

    With ``mc_samples`` = K > 0 the model draws K noise/dropout samples per window and the
    predicted probabilities are averaged before the log (each sample carries its own state).
    """
    was_training = model.training
    model.eval()
    set_mc_sampling(model, mc_samples > 0)
    copies = max(mc_samples, 1)
    states: list[Optional[State]] = [None] * copies
    nll_sum, tokens = 0.0, 0
    try:
        for batch in batches:
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            log_probs = []
            for k in range(copies):
                logits, state = model(inputs, states[k] if carries_state else None)
                states[k] = detach_state(state)
                log_probs.append(logits.float().log_softmax(-1))
            mixture = torch.stack(log_probs).logsumexp(0) - math.log(copies)  # (T, B, V)
            picked = mixture.gather(-1, targets.unsqueeze(-1))
            nll_sum -= picked.sum().item()
            tokens += targets.numel()
    finally:
        set_mc_sampling(model, False)
        model.train(was_training)
    return nll_sum, tokens


def split_metrics(nll_sum: float, tokens: int, split: Split, prefix: str) -> dict[str, float]:
    """``<prefix>_loss`` (nats/token) and ``_ppl`` of ``split`` from an NLL summed over
    ``tokens`` predictions, with ``_bpc`` and ``_word_ppl`` only where the split's tokens
    account for every character (see `lm_flipout.data.metrics`)."""
    mean = nll_sum / max(tokens, 1)
    metrics = {f"{prefix}_loss": mean, f"{prefix}_ppl": _exp(mean)}
    if split.covers_text:
        metrics[f"{prefix}_bpc"] = bits_per_char(nll_sum, split, tokens)
        metrics[f"{prefix}_word_ppl"] = _exp(mean * split.n_tokens / split.n_words)
    return metrics
