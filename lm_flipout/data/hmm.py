"""The small hidden Markov model behind ``data.source=synthetic``.

The quickstart needs data that a fresh machine without network can reach, and a yardstick:
the corpus is sampled from an HMM, so the best perplexity any model can reach on it is
`exp(H)`, with `H` the entropy rate of the token process (`lm_flipout.data.hmm_entropy`).

The HMM (built deterministically from `HMMSpec.seed`):

* *Word states* (`num_states - num_end_states` of them) emit pseudo-words ("bako",
  "tirumi", ...). Each has a few likely successors (`successors_per_state`) and a few
  likely words (`words_per_state`), picked at random and weighted by a Dirichlet draw;
  every row is mixed with a little uniform mass (`smoothing`) so that the chain is
  irreducible and aperiodic and every word has a nonzero probability in every word state.
  Words are shared between states, so the state stays hidden and context beyond the
  previous word helps.
* *End states* (`num_end_states` of them) emit the end-of-line token ``"\\n"`` with
  probability one. A word state moves to an end state with its own probability (drawn
  around ``1 / mean_line_length``); an end state moves to a word state, so its transition
  row is the distribution of how lines start. End states never follow end states, so
  there are no empty lines.

Line ends are therefore ordinary emissions of the HMM, not a separate rule, which keeps
the token process a hidden Markov process and its entropy rate well defined: the tokens
are the words plus one end-of-line token per line, exactly what a word tokenizer that
appends one ``<eos>`` per line sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from lm_flipout.errors import ConfigError

EOL = "\n"  # the HMM's end-of-line token; written as a line break

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class HMMSpec:
    """Everything that determines the synthetic HMM; equal specs give equal corpora."""

    num_states: int = 16  # word states + end states
    vocab_size: int = 60  # number of distinct pseudo-words (the "\n" token is extra)
    seed: int = 0
    num_end_states: int = 2  # states that emit "\n"; they carry different line starts
    successors_per_state: int = 3  # likely next states of each state
    words_per_state: int = 8  # likely words of each word state
    transition_concentration: float = 1.0  # Dirichlet α over the likely successors
    emission_concentration: float = 1.0  # Dirichlet α over the likely words
    mean_line_length: float = 12.0  # mean words per line (before the "\n")
    smoothing: float = 1e-3  # uniform mass mixed into every row (ergodicity, no zeros)

    def __post_init__(self) -> None:
        if self.num_end_states < 1:
            raise ConfigError(f"HMMSpec.num_end_states={self.num_end_states}: needs at least 1.")
        if self.num_states - self.num_end_states < 1:
            raise ConfigError(
                f"HMMSpec.num_states={self.num_states} leaves no word state next to "
                f"num_end_states={self.num_end_states}; raise num_states."
            )
        if not 1 <= self.vocab_size <= _max_vocab_size():
            raise ConfigError(
                f"HMMSpec.vocab_size={self.vocab_size}: must be between 1 and "
                f"{_max_vocab_size()} (the number of distinct pseudo-words)."
            )
        if self.successors_per_state < 1 or self.words_per_state < 1:
            raise ConfigError("HMMSpec.successors_per_state and words_per_state must be ≥ 1.")
        if self.transition_concentration <= 0 or self.emission_concentration <= 0:
            raise ConfigError("HMMSpec concentrations must be positive.")
        if self.mean_line_length <= 1:
            raise ConfigError(
                f"HMMSpec.mean_line_length={self.mean_line_length}: must be above 1."
            )
        if not 0 < self.smoothing < 1:
            raise ConfigError(f"HMMSpec.smoothing={self.smoothing}: must be in (0, 1).")


@dataclass(frozen=True, eq=False)
class HMM:
    """A concrete HMM: `transition[i, j] = P(s' = j | s = i)`, `emission[i, k] =
    P(token vocab[k] | s = i)`, `start` = distribution of the state emitting the first
    token of a split (for `build_hmm`: the state right after a line end)."""

    transition: np.ndarray  # (S, S)
    emission: np.ndarray  # (S, V)
    vocab: tuple[str, ...]  # V token strings; "\n" is the end-of-line token
    start: np.ndarray  # (S,)

    def __post_init__(self) -> None:
        num_states = self.transition.shape[0]
        if self.transition.shape != (num_states, num_states):
            raise ConfigError(f"HMM.transition must be square, got {self.transition.shape}.")
        if self.emission.shape != (num_states, len(self.vocab)):
            raise ConfigError(
                f"HMM.emission has shape {self.emission.shape}; expected "
                f"({num_states}, {len(self.vocab)}) from transition and vocab."
            )
        if self.start.shape != (num_states,):
            raise ConfigError(f"HMM.start has shape {self.start.shape}; expected ({num_states},).")
        for name, rows in (("transition", self.transition), ("emission", self.emission)):
            if (rows < 0).any() or not np.allclose(rows.sum(axis=1), 1.0):
                raise ConfigError(f"HMM.{name} rows must be probability distributions.")
        if len(set(self.vocab)) != len(self.vocab):
            raise ConfigError("HMM.vocab has duplicate tokens.")

    @property
    def num_states(self) -> int:
        return self.transition.shape[0]

    def stationary(self) -> np.ndarray:
        """The stationary distribution π of the state chain (π A = π)."""
        num_states = self.num_states
        system = self.transition.T - np.eye(num_states)
        system[-1, :] = 1.0  # replace one (redundant) balance equation by Σ π = 1
        rhs = np.zeros(num_states)
        rhs[-1] = 1.0
        pi = np.linalg.solve(system, rhs)
        pi = np.clip(pi, 0.0, None)
        return pi / pi.sum()


def _max_vocab_size() -> int:
    syllables = len(_CONSONANTS) * len(_VOWELS)
    return syllables**2 + syllables**3


def pseudo_words(count: int, seed: int) -> list[str]:
    """`count` distinct readable words of two or three consonant-vowel syllables."""
    rng = np.random.default_rng([seed, 1])
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        num_syllables = 2 if rng.random() < 0.6 else 3
        word = "".join(
            _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
            for _ in range(num_syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _sparse_row(
    rng: np.random.Generator, size: int, support: int, concentration: float, smoothing: float
) -> np.ndarray:
    """A distribution over `size` outcomes: Dirichlet(`concentration`) weights on `support`
    random outcomes, mixed with `smoothing` uniform mass over all of them."""
    support = min(support, size)
    row = np.zeros(size)
    row[rng.choice(size, size=support, replace=False)] = rng.dirichlet(
        np.full(support, concentration)
    )
    return (1.0 - smoothing) * row + smoothing / size


def build_hmm(spec: HMMSpec) -> HMM:
    """The HMM that `spec` describes (see the module docstring for its structure)."""
    rng = np.random.default_rng([spec.seed, 0])
    num_words_states = spec.num_states - spec.num_end_states
    word_states = slice(0, num_words_states)
    end_states = slice(num_words_states, spec.num_states)
    vocab = tuple(pseudo_words(spec.vocab_size, spec.seed)) + (EOL,)

    transition = np.zeros((spec.num_states, spec.num_states))
    emission = np.zeros((spec.num_states, len(vocab)))
    end_strength = 4.0  # Beta(a, b) with a + b = 4 / mean: per-state end rates vary ~2×
    for state in range(num_words_states):
        end_prob = rng.beta(end_strength, end_strength * (spec.mean_line_length - 1.0))
        transition[state, word_states] = (1.0 - end_prob) * _sparse_row(
            rng,
            num_words_states,
            spec.successors_per_state,
            spec.transition_concentration,
            spec.smoothing,
        )
        transition[state, end_states] = end_prob * _sparse_row(
            rng, spec.num_end_states, spec.num_end_states, 1.0, spec.smoothing
        )
        emission[state, : spec.vocab_size] = _sparse_row(
            rng, spec.vocab_size, spec.words_per_state, spec.emission_concentration, spec.smoothing
        )
    for state in range(num_words_states, spec.num_states):
        transition[state, word_states] = _sparse_row(
            rng,
            num_words_states,
            spec.successors_per_state,
            spec.transition_concentration,
            spec.smoothing,
        )
        emission[state, -1] = 1.0

    uniform = np.full(spec.num_states, 1.0 / spec.num_states)
    pi = HMM(transition, emission, vocab, uniform).stationary()
    after_line_end = np.zeros(spec.num_states)
    after_line_end[end_states] = pi[end_states] / pi[end_states].sum()
    start = after_line_end @ transition
    return HMM(transition, emission, vocab, start / start.sum())


def as_hmm(model: Union[HMMSpec, HMM]) -> HMM:
    """The HMM itself, or the one a spec describes."""
    return build_hmm(model) if isinstance(model, HMMSpec) else model

