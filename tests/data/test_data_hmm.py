"""Synthetic HMM corpus: forward NLL vs brute force, entropy rate vs closed form, files."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from lm_flipout.data.hmm import EOL, HMM, HMMSpec, build_hmm
from lm_flipout.data.hmm_corpus import sample_corpus, write_corpus
from lm_flipout.data.hmm_entropy import entropy_rate, estimate_entropy_rate, sequence_nll
from lm_flipout.errors import ConfigError, DataError

SMALL_SIZES = {"train": 3000, "valid": 500, "test": 500}


def random_stochastic(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    matrix = rng.random((rows, cols)) + 0.05
    return matrix / matrix.sum(axis=1, keepdims=True)


def tiny_hmm(seed: int, num_states: int = 3) -> HMM:
    rng = np.random.default_rng(seed)
    vocab = ("ka", "mo", EOL)
    start = rng.random(num_states)
    return HMM(
        transition=random_stochastic(rng, num_states, num_states),
        emission=random_stochastic(rng, num_states, len(vocab)),
        vocab=vocab,
        start=start / start.sum(),
    )


def brute_force_nll(hmm: HMM, tokens: list[str]) -> float:
    """-log Σ over every state path of p(path, tokens): no recursion, no scaling."""
    index = [hmm.vocab.index(token) for token in tokens]
    total = 0.0
    for path in itertools.product(range(hmm.num_states), repeat=len(tokens)):
        prob = hmm.start[path[0]] * hmm.emission[path[0], index[0]]
        for step in range(1, len(tokens)):
            prob *= hmm.transition[path[step - 1], path[step]]
            prob *= hmm.emission[path[step], index[step]]
        total += prob
    return -math.log(total)


@pytest.mark.parametrize("seed,num_states,length", [(0, 2, 1), (1, 2, 6), (2, 3, 5), (3, 3, 6)])
def test_forward_nll_equals_brute_force_marginalization(seed, num_states, length):
    hmm = tiny_hmm(seed, num_states)
    rng = np.random.default_rng(100 + seed)
    tokens = [hmm.vocab[i] for i in rng.integers(len(hmm.vocab), size=length)]
    assert sequence_nll(hmm, tokens) == pytest.approx(brute_force_nll(hmm, tokens), rel=1e-12)


def test_sequence_nll_reads_eos_as_line_end_and_rejects_unknown_tokens():
    hmm = tiny_hmm(4)
    with_newline = sequence_nll(hmm, ["ka", EOL, "mo"])
    assert sequence_nll(hmm, ["ka", "<eos>", "mo"]) == with_newline
    with pytest.raises(DataError):
        sequence_nll(hmm, ["ka", "zzz"])


def test_entropy_rate_of_observed_markov_chain_matches_closed_form():
    rng = np.random.default_rng(7)
    num_states = 5
    logits = rng.normal(scale=2.0, size=(num_states, num_states))
    transition = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    chain = HMM(
        transition=transition,
        emission=np.eye(num_states),  # the token reveals the state
        vocab=tuple(f"s{i}" for i in range(num_states)),
        start=np.full(num_states, 1.0 / num_states),
    )
    # Stationary distribution by power iteration (independent of HMM.stationary).
    pi = np.full(num_states, 1.0 / num_states)
    for _ in range(2000):
        pi = pi @ transition
    closed_form = float(-(pi[:, None] * transition * np.log(transition)).sum())

    estimate = estimate_entropy_rate(chain, num_tokens=200_000, num_chains=1000, burn_in=5)
    assert estimate.stderr < 0.01
    assert abs(estimate.nats - closed_form) < 4 * estimate.stderr + 1e-3
    assert abs(estimate.sample_nll - closed_form) < 4 * estimate.sample_nll_stderr + 1e-3
    assert estimate.lower == pytest.approx(estimate.upper, abs=1e-9)  # nothing hidden


def test_entropy_rate_of_default_spec_is_bracketed_and_below_unigram_entropy():
    spec = HMMSpec()
    estimate = estimate_entropy_rate(spec, num_tokens=200_000)
    assert estimate.lower <= estimate.upper + 1e-9
    assert estimate.upper - estimate.lower < 1e-3  # the filter has forgotten its start
    assert abs(estimate.nats - estimate.sample_nll) < 4 * estimate.sample_nll_stderr
    # Unigram entropy of a sample is an (almost) upper bound with a clear margin.
    tokens = [t for line in sample_corpus(spec, 100_000, seed=1) for t in line.split() + [EOL]]
    _, counts = np.unique(tokens, return_counts=True)
    freqs = counts / counts.sum()
    unigram_entropy = float(-(freqs * np.log(freqs)).sum())
    assert estimate.nats < unigram_entropy - 0.3
    assert entropy_rate(spec, num_tokens=50_000) == pytest.approx(estimate.nats, abs=0.02)


def test_sequence_nll_per_token_approaches_entropy_rate():
    spec = HMMSpec(seed=3)
    tokens = [t for line in sample_corpus(spec, 60_000, seed=5) for t in line.split() + [EOL]]
    per_token = sequence_nll(spec, tokens) / len(tokens)
    assert per_token == pytest.approx(entropy_rate(spec, num_tokens=200_000), abs=0.03)


def read_tokens(path: Path) -> list[str]:
    tokens = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tokens.extend(line.split() + ["<eos>"])
    return tokens


def test_written_files_have_requested_sizes_and_only_vocabulary_words(tmp_path):
    spec = HMMSpec(seed=2)
    metadata = write_corpus(spec, tmp_path, SMALL_SIZES, entropy_tokens=20_000)
    vocabulary = set(build_hmm(spec).vocab) - {EOL}
    assert set(metadata["vocab"]) == vocabulary
    assert not any(path.name.endswith(".tmp") for path in tmp_path.iterdir())
    for split, size in SMALL_SIZES.items():
        path = tmp_path / f"{split}.txt"
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n") and "\n\n" not in text  # no empty lines
        lines = text.splitlines()
        tokens = read_tokens(path)
        longest_line = max(len(line.split()) + 1 for line in lines)
        assert size <= len(tokens) < size + longest_line
        assert set(tokens) - {"<eos>"} <= vocabulary
        assert metadata["splits"][split]["tokens"] == len(tokens)
        assert metadata["splits"][split]["lines"] == len(lines)
        assert metadata["splits"][split]["optimal_nll"] == pytest.approx(
            sequence_nll(spec, tokens)
        )
    assert metadata["best_perplexity"] == pytest.approx(math.exp(metadata["entropy_rate"]))


def test_corpus_is_deterministic_and_depends_on_seed(tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_corpus(HMMSpec(seed=5), first, SMALL_SIZES, entropy_tokens=10_000)
    write_corpus(HMMSpec(seed=5), second, SMALL_SIZES, entropy_tokens=10_000)
    write_corpus(HMMSpec(seed=6), other, SMALL_SIZES, entropy_tokens=10_000)
    for split in SMALL_SIZES:
        name = f"{split}.txt"
        assert (first / name).read_bytes() == (second / name).read_bytes()
        assert (first / name).read_bytes() != (other / name).read_bytes()
    assert (first / "train.txt").read_bytes() != (first / "valid.txt").read_bytes()


def test_train_split_does_not_depend_on_other_splits(tmp_path):
    write_corpus(HMMSpec(), tmp_path / "a", {"train": 2000}, entropy_tokens=10_000)
    write_corpus(HMMSpec(), tmp_path / "b", {"test": 100, "train": 2000}, entropy_tokens=10_000)
    assert (tmp_path / "a/train.txt").read_bytes() == (tmp_path / "b/train.txt").read_bytes()


def test_words_are_readable_and_distinct():
    vocab = build_hmm(HMMSpec(vocab_size=200)).vocab
    words = vocab[:-1]
    assert vocab[-1] == EOL and len(set(words)) == 200
    assert all(word.isalpha() and word.islower() and 4 <= len(word) <= 6 for word in words)


@pytest.mark.parametrize(
    "overrides",
    [dict(num_states=2, num_end_states=2), dict(vocab_size=0), dict(smoothing=0.0),
     dict(mean_line_length=1.0), dict(words_per_state=0)],
)
def test_invalid_spec_is_a_config_error(overrides):
    with pytest.raises(ConfigError):
        HMMSpec(**overrides)


def test_an_edited_synthetic_corpus_is_generated_again(tmp_path, monkeypatch, caplog) -> None:
    import functools
    import json

    from lm_flipout.data import synthetic_source
    from lm_flipout.data.config import DataConfig

    small = functools.partial(synthetic_source.write_corpus,
                              sizes={"train": 3000, "valid": 500, "test": 500},
                              entropy_tokens=2000)
    monkeypatch.setattr(synthetic_source, "write_corpus", small)
    cfg = DataConfig(source="synthetic", cache_dir=str(tmp_path))
    meta = synthetic_source.ensure_synthetic_corpus(cfg)
    folder = synthetic_source.synthetic_dir(cfg)
    original = (folder / "test.txt").read_bytes()
    assert set(meta["sha256"]) == {"train", "valid", "test"}

    (folder / "test.txt").write_bytes(original.replace(b" ", b"  ", 1))  # one edit
    splits = synthetic_source.read_synthetic_splits(cfg)
    assert (folder / "test.txt").read_bytes() == original  # the text its optimum belongs to
    assert "test.txt changed" in caplog.text
    assert splits["test"].text() == original.decode()

    caplog.clear()
    stored = json.loads((folder / "meta.json").read_text())
    del stored["sha256"]  # a corpus written before the checksums: generated again, once
    (folder / "meta.json").write_text(json.dumps(stored))
    synthetic_source.ensure_synthetic_corpus(cfg)
    assert "no checksums recorded" in caplog.text
    caplog.clear()
    assert synthetic_source.ensure_synthetic_corpus(cfg) == meta and not caplog.text
