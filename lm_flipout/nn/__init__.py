"""Regularizers and the perturbed LSTM: weight noise (family × estimator), dropouts."""

from .dropout import (
    EmbeddingDropout,
    LockedDropout,
    NaiveDropout,
    activation_dropout,
    set_mc_sampling,
)
from .lstm import LSTM, LayerSamples, LSTMLayer, detach_state, perturbed_linear
from .noise import NoiseSample, WeightNoise

__all__ = [
    "EmbeddingDropout",
    "LSTM",
    "LSTMLayer",
    "LayerSamples",
    "LockedDropout",
    "NaiveDropout",
    "NoiseSample",
    "WeightNoise",
    "activation_dropout",
    "detach_state",
    "perturbed_linear",
    "set_mc_sampling",
]
