"""The model side of the study: the frozen model, random training windows, the noise of one
draw and the gradient of a sub-batch's summed loss w.r.t. layer 1's W̄_h."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...errors import UserError
from ...model import LanguageModel
from ...nn import LayerSamples, NoiseSample, WeightNoise
from ...training import load_trained_run

# Sums the per-sequence losses of sequences [start, end) under ``sample`` and returns the
# gradient of that sum w.r.t. the perturbed weight's mean W̄.
ChunkGradient = Callable[[int, int, NoiseSample], Tensor]


class DrawNoise:
    """The noise of one draw on a weight W̄ (out, in): multiplicative Gaussian unit noise U
    (ΔW = W̄ ∘ U, U = σE), handed out as one `NoiseSample` per sub-batch and drawn with
    `WeightNoise.sample` from ``generator``.

    shared: one U for the whole draw; flipout: one base U for the whole draw with fresh
    Rademacher signs r_n, s_n per sequence, ΔW_n = ΔŴ ∘ r_n s_nᵀ (Wen et al. 2018, eq. 4);
    independent: a fresh U_n per sequence.
    """

    def __init__(
        self, estimator: str, sigma: float, weight: Tensor, generator: torch.Generator
    ) -> None:
        self.noise = WeightNoise("gaussian", sigma, estimator)
        self.weight, self.generator = weight, generator
        self.base = None if estimator == "independent" else self._sample(1).unit

    def _sample(self, batch_size: int) -> NoiseSample:
        return self.noise.sample(self.weight, batch_size, generator=self.generator)

    def chunk(self, batch_size: int) -> NoiseSample:
        """The sample for the next ``batch_size`` sequences of the draw."""
        if self.base is None:
            return self._sample(batch_size)
        if self.noise.estimator == "shared":
            return NoiseSample(self.base)
        signs = self._sample(batch_size)  # its own unit noise is not used
        return NoiseSample(self.base, out_signs=signs.out_signs, in_signs=signs.in_signs)


def under_noise(gradient: ChunkGradient, noise: DrawNoise) -> Callable[[int, int], Tensor]:
    """``gradient`` with each sub-batch's sample taken, in order, from the draw's ``noise``."""

    def chunk_gradient(start: int, end: int) -> Tensor:
        return gradient(start, end, noise.chunk(end - start))

    return chunk_gradient


def load_frozen_model(path: str) -> tuple[LanguageModel, Tensor, dict[str, Any]]:
    """Model (eval mode, only layer 1's W_h trainable), training tokens and the stored
    config, rebuilt from a checkpoint written by train.py."""
    state, _, corpus, model = load_trained_run(path)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.lstm.weight_hh_l0.requires_grad_(True)
    cut = state["config"].get("data", {}).get("train_tokens")  # the text it was trained on
    return model, corpus.splits["train"].tokens[:cut], state["config"]


def random_windows(tokens: Tensor, count: int, length: int, generator: torch.Generator) -> Tensor:
    """``count`` windows of ``length + 1`` tokens at uniform random offsets: (length+1, count)."""
    if tokens.numel() < length + 2:
        raise UserError(
            f"the training split has {tokens.numel()} tokens, too few for windows of "
            f"{length + 1}; use a smaller --bptt."
        )
    starts = torch.randint(0, tokens.numel() - length, (count,), generator=generator)
    return tokens[starts[None, :] + torch.arange(length + 1)[:, None]]


def lm_chunk_gradient(model: LanguageModel, windows: Tensor) -> ChunkGradient:
    """Gradient of Σ_n (mean token NLL of sequence n) w.r.t. layer 1's W̄_h, for columns
    [start, end) of ``windows``, with the sample on layer 1's W_h and no other noise.

    The decoder dominates the cost, so its backward is written out: the summed cross-entropy
    has logit gradient softmax − one-hot, which goes back to the LSTM output through the
    decoder matrix; no log-softmax graph is kept.
    """
    weight = model.lstm.weight_hh_l0
    clean = [LayerSamples() for _ in model.lstm.layers[1:]]

    def lstm_output(inputs: Tensor, sample: NoiseSample) -> Tensor:
        samples = [LayerSamples(recurrent=sample), *clean]
        return model.lstm(model.embed(inputs), None, samples)[0]

    def gradient(start: int, end: int, sample: NoiseSample) -> Tensor:
        inputs, targets = windows[:-1, start:end], windows[1:, start:end]
        if sample.independent:
            # independent: a fused pass per sequence beats per-sequence weights in one batch
            # (a step loop over (B, 4H, H) tensors) by about 10x on a CPU
            hidden = torch.cat([lstm_output(inputs[:, n : n + 1], NoiseSample(sample.unit[n]))
                                for n in range(end - start)], dim=1)
        else:
            hidden = lstm_output(inputs, sample)  # (T, B, H)
        with torch.no_grad():
            logits = model.decoder(hidden)  # (T, B, V)
            probs = logits.sub_(logits.amax(-1, keepdim=True)).exp_()
            probs.div_(probs.sum(-1, keepdim=True))
            probs.scatter_add_(-1, targets[..., None], probs.new_full((*targets.shape, 1), -1.0))
            grad_hidden = (probs @ model.decoder.weight).div_(inputs.shape[0])
        (grad,) = torch.autograd.grad(hidden, weight, grad_hidden)
        return grad

    return gradient
