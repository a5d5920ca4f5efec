"""The one select_device: a single process and torchrun's data-parallel processes."""

from __future__ import annotations

import pytest
import torch

from lm_flipout.errors import ConfigError, TrainingError
from lm_flipout.training import select_device
from lm_flipout.training.distributed import DistContext

PAIR = DistContext(rank=1, world_size=2, local_rank=1, local_world_size=2)


def test_auto_and_cpu_pick_the_cpu_without_a_gpu_alone_and_data_parallel() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for dist in (None, DistContext(), PAIR):
        assert select_device("auto", dist) == torch.device("cpu")
        assert select_device("cpu", dist) == torch.device("cpu")


def test_a_name_that_is_no_device_is_refused_alone_and_data_parallel() -> None:
    for dist in (None, PAIR):
        with pytest.raises(TrainingError, match="'gpu0' is not a device"):
            select_device("gpu0", dist)


def test_data_parallel_processes_refuse_one_named_gpu_and_mps() -> None:
    with pytest.raises(ConfigError, match="names one GPU"):
        select_device("cuda:1", PAIR)
    with pytest.raises(ConfigError, match="no backend for Apple's GPU"):
        select_device("mps", PAIR)


def test_a_missing_gpu_is_a_training_error_alone_and_a_config_error_data_parallel() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TrainingError, match="asks for a GPU but PyTorch sees none"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="asks for GPUs but PyTorch sees none"):
        select_device("cuda", PAIR)
