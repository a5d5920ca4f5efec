"""The language model: embedding (or one-hot input) → perturbed LSTM stack → output dropout
→ decoder.

Configured by one dataclass; does no I/O and knows nothing about training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_range
from .errors import ConfigError
from .nn import LSTM, EmbeddingDropout, WeightNoise, activation_dropout
from .nn.lstm import State
from .nn.noise import flipout_asymmetry


@dataclass
class NoiseConfig:
    """Weight noise on the LSTM matrices: a family × an estimator (Wen et al. 2018, §3)."""

    family: Literal["none", "gaussian", "dropconnect"] = "none"
    estimator: Literal["shared", "flipout", "independent"] = "shared"
    sigma: float = 1.0  # gaussian: W = W̄ ∘ (1 + σE)
    p: float = 0.5  # dropconnect drop rate (flipout needs 0.5)
    target: Literal["recurrent", "input", "both"] = "recurrent"  # which matrices get it

    def validate(self) -> None:
        """Raise ConfigError naming `model.noise.<key>` for a setting that cannot work,
        including DropConnect with flipout at p != 0.5 (see `flipout_asymmetry`)."""
        check_range("model.noise.sigma", self.sigma, low=0.0)
        check_range("model.noise.p", self.p, low=0.0, high=1.0)
        problem = flipout_asymmetry(self.family, self.estimator, self.p)
        if problem:
            raise ConfigError(
                f"model.noise.p={self.p!r} cannot be used with model.noise.family=dropconnect and "
                f"model.noise.estimator=flipout: {problem}"
            )

    def build(self) -> Optional[WeightNoise]:
        if self.family == "none":
            return None
        return WeightNoise(self.family, sigma=self.sigma, estimator=self.estimator, p=self.p)


@dataclass
class ModelConfig:
    """Every architectural and regularization choice of `LanguageModel`."""

    # the corpus's vocabulary, which training sets from the data (data.tokenizer,
    # data.vocab_size or data.sp_vocab_size); None until then
    vocab_size: Optional[int] = None
    embedding_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    tie_weights: bool = False  # decoder shares the embedding matrix
    dropout_kind: Literal["locked", "naive"] = "locked"  # Gal (per sequence) or Zaremba (per step)
    dropout_input: float = 0.0  # on the embeddings fed to the LSTM
    dropout_between: float = 0.0  # between LSTM layers
    dropout_output: float = 0.0  # on the last LSTM layer's output
    dropout_hidden: float = 0.0  # locked dropout on h_{t-1} inside the recurrence (Gal)
    dropout_embedding: float = 0.0  # drops whole word rows of the embedding matrix
    dropout_cell: float = 0.0  # recurrent dropout on the cell update g (Semeniuta et al. 2016)
    dropout_cell_per_step: bool = True  # a fresh mask per step (false: one per sequence)
    zoneout_cell: float = 0.0  # zoneout on c (Krueger et al. 2017)
    zoneout_hidden: float = 0.0  # zoneout on h (Krueger et al. 2017)
    # "onehot": tokens enter the LSTM as one-hot vectors, with no embedding matrix (the
    # columns of the first W_ih play its part); embedding_size is then unused
    input_encoding: Literal["embedding", "onehot"] = "embedding"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    forget_bias: float = 0.0  # initial forget-gate bias
    orthogonal_init: bool = False  # orthogonal recurrent gate blocks (char-level runs)
    init_range: float = 0.1  # uniform init range of embedding and decoder

    def validate(self) -> None:
        """Raise ConfigError naming `model.<key>` for the first setting that cannot work
        (the noise section checks itself)."""
        if self.vocab_size is not None:
            check_range("model.vocab_size", self.vocab_size, low=1)
        for key in ("embedding_size", "hidden_size", "num_layers"):
            check_range(f"model.{key}", getattr(self, key), low=1)
        for key in ("dropout_input", "dropout_between", "dropout_output", "dropout_hidden",
                    "dropout_embedding", "dropout_cell", "zoneout_cell", "zoneout_hidden"):
            check_range(f"model.{key}", getattr(self, key), low=0.0, high=1.0)
        check_range("model.forget_bias", self.forget_bias)
        check_range("model.init_range", self.init_range, low=0.0, low_open=True)
        if self.input_encoding == "onehot":
            self._check_onehot()
        if self.tie_weights and self.num_layers == 1 and self.hidden_size != self.embedding_size:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} would be ignored: with "
                "model.tie_weights=true the last LSTM layer has model.embedding_size units so "
                "the decoder can share the embedding, and with model.num_layers=1 that is the "
                f"only layer. Set model.hidden_size={self.embedding_size}, add layers, or set "
                "model.tie_weights=false."
            )


    def _check_onehot(self) -> None:
        """One-hot input has no embedding matrix: nothing may share or drop its rows."""
        for key, value in (("tie_weights", self.tie_weights),
                           ("dropout_embedding", self.dropout_embedding)):
            if value:
                raise ConfigError(
                    f"model.{key}={value!r} needs an embedding matrix, and "
                    "model.input_encoding=onehot has none (the columns of the first LSTM "
                    f"layer's input weights play its part). Set model.{key} to "
                    f"{'false' if key == 'tie_weights' else '0'}, or set "
                    "model.input_encoding=embedding.")


class LanguageModel(nn.Module):
    """An LSTM language model over token ids of shape (T, B)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size is not set: a model needs the size of its "
                              "vocabulary, which training takes from the corpus.")
        self.config = config
        noise = config.noise.build()
        onehot = config.input_encoding == "onehot"
        self.embedding = None if onehot else nn.Embedding(config.vocab_size,
                                                          config.embedding_size)
        self.embedding_dropout = EmbeddingDropout(config.dropout_embedding)
        self.input_dropout = activation_dropout(config.dropout_kind, config.dropout_input)
        self.lstm = LSTM(
            config.vocab_size if onehot else config.embedding_size,
            config.hidden_size,
            config.num_layers,
            recurrent_noise=noise if config.noise.target in ("recurrent", "both") else None,
            input_noise=noise if config.noise.target in ("input", "both") else None,
            hidden_dropout=config.dropout_hidden,
            between_dropout=config.dropout_between,
            dropout_kind=config.dropout_kind,
            output_size=config.embedding_size if config.tie_weights else None,
            cell_dropout=config.dropout_cell,
            cell_dropout_per_step=config.dropout_cell_per_step,
            zoneout_cell=config.zoneout_cell,
            zoneout_hidden=config.zoneout_hidden,
        )
        self.output_dropout = activation_dropout(config.dropout_kind, config.dropout_output)
        self.decoder = nn.Linear(self.lstm.sizes[-1], config.vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r = self.config.init_range
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -r, r)
        if not self.config.tie_weights:
            nn.init.uniform_(self.decoder.weight, -r, r)
        nn.init.zeros_(self.decoder.bias)
        self.lstm.reset_parameters(self.config.forget_bias, self.config.orthogonal_init)

    def initial_state(self, batch_size: int) -> State:
        return self.lstm.initial_state(batch_size, self.decoder.weight)

    def embed(self, tokens: Tensor) -> Tensor:
        """The LSTM's input for tokens (T, B), without dropout: embedding rows, or one-hot
        vectors (T, B, V) when ``input_encoding`` is ``onehot``."""
        if self.embedding is None:
            return F.one_hot(tokens, self.config.vocab_size).to(self.decoder.weight.dtype)
        return self.embedding(tokens)

    def hidden(self, tokens: Tensor, state: Optional[State] = None) -> tuple[Tensor, Tensor, State]:
        """Last-layer outputs before and after output dropout, (T, B, D) each, and the state."""
        if tokens.dim() != 2:
            raise ValueError("LanguageModel: tokens must have shape (T, B), "
                             f"got {tuple(tokens.shape)}.")
        if self.embedding is None:
            x = self.embed(tokens)
        else:
            x = self.embedding_dropout(tokens, self.embedding.weight)
        raw, state = self.lstm(self.input_dropout(x), state)
        return raw, self.output_dropout(raw), state

    def forward(
        self, tokens: Tensor, state: Optional[State] = None, targets: Optional[Tensor] = None
    ) -> tuple[Tensor, State]:
        """Logits (T, B, V), or with ``targets`` the per-token NLL in nats (T, B); plus the
        final state for carrying into the next window."""
        _, out, state = self.hidden(tokens, state)
        logits = self.decoder(out)
        if targets is None:
            return logits, state
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return nll.view_as(targets), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

