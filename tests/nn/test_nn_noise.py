"""Weight noise: argument checks and drawing samples from a given generator."""

import pytest
import torch

from lm_flipout.nn import WeightNoise
from lm_flipout.nn.noise import ESTIMATORS


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(family="laplace"), "family"),
        (dict(estimator="local"), "estimator"),
        (dict(sigma=-0.1), "sigma"),
        (dict(family="dropconnect", p=1.0, estimator="shared"), "p"),
        (dict(family="dropconnect", p=-0.2, estimator="shared"), "p"),
        (dict(family="dropconnect", p=0.3, estimator="flipout"), "p=0.5"),
    ],
)
def test_bad_noise_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        WeightNoise(**kwargs)


def sample_tensors(sample) -> list:
    return [t for t in (sample.unit, sample.out_signs, sample.in_signs) if t is not None]


@pytest.mark.parametrize("family", ["gaussian", "dropconnect"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_same_generator_seed_gives_the_same_sample_and_default_path_is_unchanged(family,
                                                                                  estimator):
    noise = WeightNoise(family, sigma=0.7, estimator=estimator, p=0.5)
    weight = torch.randn(12, 3)
    first = noise.sample(weight, 4, generator=torch.Generator().manual_seed(11))
    again = noise.sample(weight, 4, generator=torch.Generator().manual_seed(11))
    other = noise.sample(weight, 4, generator=torch.Generator().manual_seed(12))
    for a, b in zip(sample_tensors(first), sample_tensors(again)):
        assert torch.equal(a, b)
    assert not torch.equal(first.unit, other.unit)
    # the default path draws from PyTorch's global generator, as before the argument existed
    torch.manual_seed(5)
    default = noise.sample(weight, 4)
    torch.manual_seed(5)
    explicit_global = noise.sample(weight, 4, generator=torch.default_generator)
    for a, b in zip(sample_tensors(default), sample_tensors(explicit_global)):
        assert torch.equal(a, b)
    # a private generator leaves the global stream untouched
    torch.manual_seed(5)
    noise.sample(weight, 4, generator=torch.Generator().manual_seed(11))
    after_private = noise.sample(weight, 4)
    for a, b in zip(sample_tensors(default), sample_tensors(after_private)):
        assert torch.equal(a, b)
    # and that stream gives what a hand draw of the unit noise gives (the first draw)
    shape = (4, 12, 3) if estimator == "independent" else (12, 3)
    torch.manual_seed(5)
    if family == "gaussian":
        expected = torch.randn(shape) * 0.7
    else:
        expected = (torch.rand(shape) >= 0.5).float() / 0.5 - 1
    assert torch.equal(default.unit, expected)
