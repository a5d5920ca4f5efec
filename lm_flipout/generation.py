"""Text generation: the next token's distribution under temperature, top-k and top-p
(nucleus) filtering, and the loop that draws tokens one at a time with the state carried.

Mean weights (eval mode) by default. With ``sample_weights`` the model's noise (weight noise,
flipout signs, dropout masks) is drawn once for the sequence and held for the whole
generation: every forward call feeds one token and redraws the same sample from one seed,
so the sample is the same at every step while the sampler's own generator moves on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor

from .errors import UserError
from .model import LanguageModel
from .nn import set_mc_sampling
from .nn.lstm import State

NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15  # keeps the noise seed apart from the sampler's


def check_sampling(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    """UserError naming the setting unless temperature > 0, top_k >= 1 and 0 < top_p <= 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise UserError(f"temperature={temperature!r} must be a number above 0 (1 samples the "
                        "model's own distribution; lower is more conservative). For the most "
                        "likely token at every step use top_k=1.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k={top_k!r} must be a positive integer (the number of most likely "
                        "tokens to sample from), or None for all.")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise UserError(f"top_p={top_p!r} must be a probability in (0, 1] (the mass of the most "
                        "likely tokens to sample from), or None for all.")


def next_token_probs(logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                     top_p: Optional[float] = None) -> Tensor:
    """The next token's probabilities (V,) from its logits (V,): softmax(logits / temperature),
    kept to the ``top_k`` most likely tokens, then to the smallest set of most likely tokens
    whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020, eq. 2-3),
    renormalized."""
    check_sampling(temperature, top_k, top_p)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_k is not None and top_k < probs.numel():
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[probs.topk(top_k).indices] = True
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
    if top_p is not None and top_p < 1:
        ranked, order = probs.sort(descending=True, stable=True)
        above = ranked.cumsum(0) - ranked  # the mass of the tokens ranked before each
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[order[above < top_p]] = True
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
    return probs


Step = Callable[[Sequence[int], Optional[State]], tuple[Tensor, State]]


def _mean_step(model: LanguageModel, device: torch.device) -> Step:
    """Feed token ids in one call; the logits of the last one and the state."""
    def step(ids: Sequence[int], state: Optional[State]) -> tuple[Tensor, State]:
        logits, state = model(torch.tensor(ids, device=device).view(-1, 1), state)  # (T, 1, V)
        return logits[-1, 0], state
    return step


def _held_sample_step(model: LanguageModel, device: torch.device, noise_seed: int) -> Step:
    """Feed token ids one per call, each call drawing its noise from ``noise_seed``: the
    same shapes and the same seed give the same sample at every step."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]

    def step(ids: Sequence[int], state: Optional[State]) -> tuple[Tensor, State]:
        for token in ids:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(noise_seed)
                logits, state = model(torch.tensor([[token]], device=device), state)
        return logits[-1, 0], state
    return step


@torch.no_grad()
def sample_tokens(
    model: LanguageModel, context: Sequence[int], tokens: int, seed: int, *,
    temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
    sample_weights: bool = False, on_token: Optional[Callable[[int], None]] = None,
) -> list[int]:
    """``tokens`` token ids drawn one at a time after ``context`` (at least one id), the
    state carried from each to the next. The same ``seed`` gives the same ids; ``on_token``
    sees each id as it is drawn. ``sample_weights`` holds one noise sample (see above)."""
    check_sampling(temperature, top_k, top_p)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise UserError(f"tokens={tokens!r} must be a whole number of tokens to write, 0 or more.")
    if not context:
        raise UserError("Generation needs at least one token of context.")
    device = next(model.parameters()).device
    sampler = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    set_mc_sampling(model, sample_weights)
    step = (_held_sample_step(model, device, (seed + NOISE_SEED_OFFSET) % 2**63)
            if sample_weights else _mean_step(model, device))
    drawn: list[int] = []
    try:
        logits, state = step(list(context), None)
        for position in range(tokens):
            probs = next_token_probs(logits.cpu(), temperature, top_k, top_p)
            token = int(torch.multinomial(probs, 1, generator=sampler))
            drawn.append(token)
            if on_token is not None:
                on_token(token)
            if position + 1 < tokens:
                logits, state = step([token], state)
    finally:
        set_mc_sampling(model, False)
        model.train(was_training)
    return drawn
