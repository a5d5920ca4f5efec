"""A synthetic corpus from a small hidden Markov model whose entropy rate we can compute.

The quickstart needs data that a fresh machine without network can reach, and a yardstick:
the corpus is sampled from an HMM, so the best perplexity any model can reach on it is
`exp(H)`, with `H` the entropy rate of the token process.

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

The entropy rate has no closed form; `estimate_entropy_rate` runs the scaled forward
algorithm (float64) over many independent stationary chains and averages, after a
burn-in, the entropy of the predictive distribution p(x_t | x_<t) (a low-variance form of
the Shannon–McMillan–Breiman estimate -(1/N) log p(x_1..x_N), which it also reports),
with its standard error and bounds that bracket the true value (Cover & Thomas, Thm 4.5.1).
`sequence_nll` scores a given token sequence exactly, e.g. the test split, for the
Bayes-optimal perplexity of that very text.

Command line: ``python -m lm_flipout.synthetic DIR`` writes train/valid/test.txt to DIR
and prints the metadata (token counts, entropy rate, best perplexity) as JSON.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from .atomic import atomic_write
from .errors import ConfigError, DataError

EOL = "\n"  # the HMM's end-of-line token; written as a line break
EOS_ALIASES = (EOL, "<eos>")  # token spellings `sequence_nll` reads as the end of a line
DEFAULT_SIZES: dict[str, int] = {"train": 200_000, "valid": 20_000, "test": 20_000}

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


@dataclass(frozen=True)
class EntropyEstimate:
    """Entropy rate of the token process in nats per token, with its uncertainty; the
    true rate lies in [`lower`, `upper`] up to sampling error (see `estimate_entropy_rate`)."""

    nats: float  # mean entropy of the filter's predictive distribution
    stderr: float
    lower: float  # mean of H(X_t | x_<t, s_1): a lower bound on H
    upper: float  # mean of H(X_t | x_<t): an upper bound on H (equals `nats`)
    sample_nll: float  # -(1/N) log p(x_1..x_N), the plain Shannon–McMillan–Breiman estimate
    sample_nll_stderr: float
    num_tokens: int  # N, measured tokens over all chains

    @property
    def perplexity(self) -> float:
        """The best perplexity any model can reach on this process: exp(H)."""
        return math.exp(self.nats)


# ----------------------------------------------------------------------------- building


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


def _as_hmm(model: Union[HMMSpec, HMM]) -> HMM:
    return build_hmm(model) if isinstance(model, HMMSpec) else model


# ----------------------------------------------------------------------------- sampling


def _sample_tokens(hmm: HMM, num_tokens: int, rng: np.random.Generator) -> list[str]:
    """Tokens of one chain from `hmm.start`, at least `num_tokens` of them, stopping
    right after an end-of-line token (or exactly at `num_tokens` if "\\n" is absent)."""
    eol_index = hmm.vocab.index(EOL) if EOL in hmm.vocab else -1
    cum_transition = [list(np.cumsum(row)) for row in hmm.transition]
    cum_emission = [list(np.cumsum(row)) for row in hmm.emission]
    cum_start = list(np.cumsum(hmm.start))
    last_state = hmm.num_states - 1
    last_token = len(hmm.vocab) - 1

    tokens: list[str] = []
    state = min(bisect.bisect_right(cum_start, rng.random() * cum_start[-1]), last_state)
    chunk = 1 << 16
    while True:
        draws = rng.random(2 * chunk).tolist()
        for step in range(chunk):
            row = cum_emission[state]
            token = min(bisect.bisect_right(row, draws[2 * step] * row[-1]), last_token)
            tokens.append(hmm.vocab[token])
            if len(tokens) >= num_tokens and (token == eol_index or eol_index < 0):
                return tokens
            row = cum_transition[state]
            state = min(bisect.bisect_right(row, draws[2 * step + 1] * row[-1]), last_state)


def sample_corpus(spec: HMMSpec, num_tokens: int, seed: int) -> list[str]:
    """Lines (without their line break) of space-separated words sampled from the HMM.

    Starts right after a line end and stops at the first line end once `num_tokens`
    tokens (words + one end-of-line per line) are reached, so it overshoots by less than
    one line. Deterministic given `spec` and `seed`."""
    if num_tokens < 1:
        raise ConfigError(f"sample_corpus: num_tokens={num_tokens} must be positive.")
    hmm = build_hmm(spec)
    rng = np.random.default_rng([spec.seed, 2, seed])
    lines: list[str] = []
    words: list[str] = []
    for token in _sample_tokens(hmm, num_tokens, rng):
        if token == EOL:
            lines.append(" ".join(words))
            words = []
        else:
            words.append(token)
    return lines


def _write_atomically(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))


def split_seed(split: str) -> int:
    """The sampling seed of a split, from its name alone (so "train" does not change when
    other splits are added or reordered)."""
    return zlib.crc32(split.encode("utf-8"))


def write_corpus(
    spec: HMMSpec,
    directory: Union[str, os.PathLike],
    sizes: Mapping[str, int] = DEFAULT_SIZES,
    entropy_tokens: int = 1_000_000,
) -> dict:
    """Write `<split>.txt` for each split in `sizes` (one line per sentence, each ending
    in "\\n"), atomically, and return metadata: the spec, the vocabulary, per split its
    path, line and token counts (tokens = words + one `<eos>` per line) and the
    Bayes-optimal NLL and perplexity of that exact text, and the process's entropy rate
    (nats/token) with its standard error, bounds and best achievable perplexity exp(H).
    Each split is an independent chain seeded by `split_seed(split)`."""
    hmm = build_hmm(spec)
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict] = {}
    for split, size in sizes.items():
        lines = sample_corpus(spec, size, seed=split_seed(split))
        path = out_dir / f"{split}.txt"
        _write_atomically(path, "".join(line + "\n" for line in lines))
        tokens = [token for line in lines for token in line.split() + [EOL]]
        optimal_nll = sequence_nll(hmm, tokens)
        splits[split] = {
            "path": str(path),
            "lines": len(lines),
            "tokens": len(tokens),
            "optimal_nll": optimal_nll,
            "optimal_perplexity": math.exp(optimal_nll / len(tokens)),
        }
    estimate = estimate_entropy_rate(spec, num_tokens=entropy_tokens)
    return {
        "spec": asdict(spec),
        "vocab": list(hmm.vocab[:-1]),
        "splits": splits,
        "entropy_rate": estimate.nats,
        "entropy_rate_stderr": estimate.stderr,
        "entropy_rate_bounds": [estimate.lower, estimate.upper],
        "best_perplexity": estimate.perplexity,
    }


# ----------------------------------------------------------------------------- likelihood


def _token_indices(hmm: HMM, tokens: Iterable[str]) -> np.ndarray:
    index = {token: i for i, token in enumerate(hmm.vocab)}
    if EOL in index:
        for alias in EOS_ALIASES:
            index.setdefault(alias, index[EOL])
    try:
        return np.array([index[token] for token in tokens], dtype=np.int64)
    except KeyError as error:
        raise DataError(
            f"sequence_nll: token {error.args[0]!r} is not in the HMM's vocabulary; "
            "score the corpus the HMM generated, with line ends as '<eos>' or '\\n'."
        ) from None


def sequence_nll(
    model: Union[HMMSpec, HMM], tokens: Sequence[str], initial: Union[np.ndarray, None] = None
) -> float:
    """Total negative log-likelihood (nats) of `tokens` under the HMM, by the scaled
    forward algorithm in float64. Line ends may be spelled "\\n" or "<eos>". The first
    token's state is drawn from `initial` (default `hmm.start`: right after a line end,
    which is how every split written by `write_corpus` begins)."""
    hmm = _as_hmm(model)
    indices = _token_indices(hmm, tokens)
    belief = np.asarray(hmm.start if initial is None else initial, dtype=np.float64)
    emission_by_token = np.ascontiguousarray(hmm.emission.T)
    total = 0.0
    for step, token in enumerate(indices):
        if step > 0:
            belief = belief @ hmm.transition
        joint = belief * emission_by_token[token]
        prob = joint.sum()
        if prob <= 0.0:
            return math.inf
        total -= math.log(prob)
        belief = joint / prob
    return total


def _entropy(rows: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of a (n, V) matrix of distributions."""
    logs = np.log(np.where(rows > 0.0, rows, 1.0))
    return -(rows * logs).sum(axis=1)


def _sample_next(rng: np.random.Generator, cumulative: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One draw per chain from the distributions `cumulative[rows]` (cumulative sums)."""
    table = cumulative[rows]
    draws = rng.random(len(rows))[:, None] * table[:, -1:]
    return np.minimum((table <= draws).sum(axis=1), cumulative.shape[1] - 1)


def estimate_entropy_rate(
    model: Union[HMMSpec, HMM],
    num_tokens: int = 1_000_000,
    num_chains: int = 2000,
    burn_in: int = 100,
    seed: int = 0,
) -> EntropyEstimate:
    """Entropy rate of the token process, in nats per token.

    Samples `num_chains` independent chains from the stationary distribution and runs the
    scaled forward filter on each, vectorized across chains, in float64. After `burn_in`
    tokens, `num_tokens` steps are measured in total. At each step the filter's
    predictive distribution p(· | x_<t) gives both -log p(x_t | x_<t), whose mean is the
    Shannon–McMillan–Breiman estimate -(1/N) log p(x_1..x_N) (`sample_nll`), and the
    entropy of p(· | x_<t), whose mean estimates the same H(X_t | X_<t) with far less
    variance (`nats`, a Rao–Blackwellized estimate). A second filter that also knows the
    first hidden state gives H(X_t | X_<t, S_1) ≤ H ≤ H(X_t | X_<t) (Cover & Thomas,
    Thm 4.5.1); their measured means are `lower` and `upper`. Standard errors come from
    the spread of the per-chain means (chains are independent)."""
    hmm = _as_hmm(model)
    if num_tokens < 1 or num_chains < 2 or burn_in < 0:
        raise ConfigError(
            "estimate_entropy_rate: needs num_tokens ≥ 1, num_chains ≥ 2 and burn_in ≥ 0."
        )
    rng = np.random.default_rng([seed, 3])
    length = burn_in + -(-num_tokens // num_chains)
    pi = hmm.stationary()
    cum_transition = np.cumsum(hmm.transition, axis=1)
    cum_emission = np.cumsum(hmm.emission, axis=1)
    emission_by_token = np.ascontiguousarray(hmm.emission.T)

    state = _sample_next(rng, np.cumsum(pi)[None, :], np.zeros(num_chains, dtype=np.int64))
    belief = np.tile(pi, (num_chains, 1))  # p(s_t | x_<t), from the stationary prior
    known_start = np.zeros((num_chains, hmm.num_states))  # p(s_t | x_<t, s_1)
    known_start[np.arange(num_chains), state] = 1.0
    entropy_sum = np.zeros(num_chains)
    known_entropy_sum = np.zeros(num_chains)
    nll_sum = np.zeros(num_chains)

    for step in range(length):
        if step > 0:
            state = _sample_next(rng, cum_transition, state)
            belief = belief @ hmm.transition
            known_start = known_start @ hmm.transition
        token = _sample_next(rng, cum_emission, state)
        if step >= burn_in:
            entropy_sum += _entropy(belief @ hmm.emission)
            known_entropy_sum += _entropy(known_start @ hmm.emission)
        likelihood = emission_by_token[token]
        belief *= likelihood
        known_start *= likelihood
        prob = belief.sum(axis=1)
        belief /= prob[:, None]
        known_start /= known_start.sum(axis=1, keepdims=True)
        if step >= burn_in:
            nll_sum -= np.log(prob)

    measured = length - burn_in
    per_chain = entropy_sum / measured
    per_chain_nll = nll_sum / measured
    return EntropyEstimate(
        nats=float(per_chain.mean()),
        stderr=float(per_chain.std(ddof=1) / math.sqrt(num_chains)),
        lower=float(known_entropy_sum.mean() / measured),
        upper=float(per_chain.mean()),
        sample_nll=float(per_chain_nll.mean()),
        sample_nll_stderr=float(per_chain_nll.std(ddof=1) / math.sqrt(num_chains)),
        num_tokens=measured * num_chains,
    )


def entropy_rate(model: Union[HMMSpec, HMM], num_tokens: int = 1_000_000) -> float:
    """Entropy rate in nats per token (words + one end-of-line per line); see
    `estimate_entropy_rate` for the method, standard error and bounds."""
    return estimate_entropy_rate(model, num_tokens=num_tokens).nats


# ----------------------------------------------------------------------------- command line


def main(argv: Union[Sequence[str], None] = None) -> None:
    """`python -m lm_flipout.synthetic DIR`: write the default corpus and print metadata."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where train.txt, valid.txt and test.txt go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-tokens", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--eval-tokens", type=int, default=DEFAULT_SIZES["valid"])
    args = parser.parse_args(argv)
    sizes = {"train": args.train_tokens, "valid": args.eval_tokens, "test": args.eval_tokens}
    metadata = write_corpus(HMMSpec(seed=args.seed), args.directory, sizes)
    metadata.pop("vocab")
    print(json.dumps(metadata, indent=2))


if __name__ == "__main__":
    main()
