"""A synthetic corpus from a small hidden Markov model whose entropy rate we can compute.

`write_corpus` samples train/valid/test from the HMM of `lm_flipout.data.hmm` and records,
beside the files, the Bayes-optimal perplexity of each split and the process's entropy rate
(`lm_flipout.data.hmm_entropy`).

Command line: ``lm-flipout data synthetic DIR`` writes train/valid/test.txt to DIR
and prints the metadata (token counts, entropy rate, best perplexity) as JSON.
"""

from __future__ import annotations

import bisect
import math
import os
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from lm_flipout.atomic import atomic_write
from lm_flipout.data.hmm import EOL, HMM, HMMSpec, build_hmm
from lm_flipout.data.hmm_entropy import estimate_entropy_rate, sequence_nll
from lm_flipout.errors import ConfigError

DEFAULT_SIZES: dict[str, int] = {"train": 200_000, "valid": 20_000, "test": 20_000}


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
