"""Likelihood and entropy rate of the synthetic HMM (`lm_flipout.data.hmm`).

The entropy rate has no closed form; `estimate_entropy_rate` runs the scaled forward
algorithm (float64) over many independent stationary chains and averages, after a
burn-in, the entropy of the predictive distribution p(x_t | x_<t) (a low-variance form of
the Shannon–McMillan–Breiman estimate -(1/N) log p(x_1..x_N), which it also reports),
with its standard error and bounds that bracket the true value (Cover & Thomas, Thm 4.5.1).
`sequence_nll` scores a given token sequence exactly, e.g. the test split, for the
Bayes-optimal perplexity of that very text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import numpy as np

from lm_flipout.data.hmm import EOL, HMM, HMMSpec, as_hmm
from lm_flipout.errors import ConfigError, DataError

EOS_ALIASES = (EOL, "<eos>")  # token spellings `sequence_nll` reads as the end of a line


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
    hmm = as_hmm(model)
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
    hmm = as_hmm(model)
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

