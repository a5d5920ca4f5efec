"""Regularizers and the perturbed LSTM: weight noise (family × estimator), dropouts, and the
backends that run the LSTM cell (reference PyTorch ops, or the CPU fast path)."""

from .backends import Backend, CpuBackend, ReferenceBackend, register_backend, use_backend
from .dropout import (
    EmbeddingDropout,
    LockedDropout,
    NaiveDropout,
    activation_dropout,
    set_mc_sampling,
)
from .functional import lstm_layer
from .lstm import (
    LSTM,
    LayerSamples,
    LayerWeights,
    LSTMLayer,
    State,
    detach_state,
    perturbed_linear,
)
from .noise import NoiseSample, WeightNoise

__all__ = [
    "Backend",
    "CpuBackend",
    "EmbeddingDropout",
    "LSTM",
    "LSTMLayer",
    "LayerSamples",
    "LayerWeights",
    "LockedDropout",
    "NaiveDropout",
    "NoiseSample",
    "ReferenceBackend",
    "State",
    "WeightNoise",
    "activation_dropout",
    "detach_state",
    "lstm_layer",
    "perturbed_linear",
    "register_backend",
    "set_mc_sampling",
    "use_backend",
]
