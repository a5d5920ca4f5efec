"""The batches one process trains and evaluates on."""

from __future__ import annotations

from typing import Union

from ..config import Recipe
from ..data.batching import SequenceBatches, StreamBatches, make_batches
from ..data.corpus import Corpus
from .distributed import DistContext

Batches = Union[StreamBatches, SequenceBatches]


def run_batches(recipe: Recipe, corpus: Corpus,
                dist: DistContext) -> tuple[Batches, dict[str, Batches]]:
    """This rank's training batches (the train split cut to ``data.train_tokens``) and its
    evaluation batches by split name ("valid", "test"). Batch sizes are global: each rank
    takes its block of every batch's columns, except for the test split, which every rank
    scores whole at ``data.test_batch_size`` (by default 1, which does not split)."""
    data, splits = recipe.data, corpus.splits
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    train_tokens, label = splits["train"].tokens, "train"
    if data.train_tokens is not None and data.train_tokens < train_tokens.numel():
        train_tokens = train_tokens[:data.train_tokens]
        label = f"train (cut to data.train_tokens={data.train_tokens})"
    train = make_batches(train_tokens, data, train=True, seed=recipe.train.seed, split=label,
                         **shard)
    evaluation = {"valid": make_batches(splits["valid"].tokens, data, train=False,
                                        split="valid", **shard),
                  "test": make_batches(splits["test"].tokens, data, train=False, split="test")}
    return train, evaluation
