"""Sampling math: temperature, top-k and top-p (nucleus) filtering against a computation
written here in plain Python, and the checks of the sampling settings."""

from __future__ import annotations

import math

import pytest
import torch

from lm_flipout.errors import UserError
from lm_flipout.generation import next_token_probs

LOGITS = [2.0, -1.0, 0.5, 3.0, 0.0, 1.5, -2.0, 1.0]


def reference(logits: list[float], temperature: float, top_k, top_p) -> list[float]:
    """Softmax at ``temperature``, then the k most likely, then the nucleus of mass top_p
    (the fewest most likely tokens whose probability reaches it), renormalized each time."""
    weights = [math.exp(x / temperature) for x in logits]
    probs = [w / sum(weights) for w in weights]
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep = set(ranked[:top_k] if top_k else ranked)
    probs = [p if i in keep else 0.0 for i, p in enumerate(probs)]
    probs = [p / sum(probs) for p in probs]
    if top_p is not None:
        nucleus, mass = set(), 0.0
        for i in ranked:
            if mass >= top_p or probs[i] == 0:
                break
            nucleus.add(i)
            mass += probs[i]
        probs = [p if i in nucleus else 0.0 for i, p in enumerate(probs)]
        probs = [p / sum(probs) for p in probs]
    return probs


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, None, None), (0.5, None, None), (2.0, None, None),
    (1.0, 3, None), (0.7, 5, None),
    (1.0, None, 0.6), (1.0, None, 0.9), (1.5, None, 0.75), (0.8, 4, 0.7), (1.0, 2, 0.999),
])
def test_filtering_matches_a_direct_computation(temperature, top_k, top_p) -> None:
    got = next_token_probs(torch.tensor(LOGITS), temperature, top_k, top_p)
    expected = reference(LOGITS, temperature, top_k, top_p)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert got.sum().item() == pytest.approx(1.0)
    if top_k is not None or top_p is not None:
        assert (got == 0).any()  # something was cut


def test_top_k_one_is_the_argmax_and_top_p_keeps_at_least_one() -> None:
    logits = torch.tensor(LOGITS)
    for probs in (next_token_probs(logits, top_k=1), next_token_probs(logits, top_p=1e-9)):
        assert probs.tolist() == [1.0 if i == 3 else 0.0 for i in range(len(LOGITS))]


@pytest.mark.parametrize("settings, names", [
    ({"temperature": 0.0}, "temperature=0.0"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k=0"), ({"top_k": 2.5}, "top_k=2.5"),
    ({"top_p": 0.0}, "top_p=0.0"), ({"top_p": 1.5}, "top_p=1.5"),
])
def test_bad_settings_are_refused_by_name(settings, names) -> None:
    with pytest.raises(UserError, match=names.replace(".", r"\.")):
        next_token_probs(torch.tensor(LOGITS), **settings)
