"""The trained model a command works with: a checkpoint written by training (best.pt or
last.pt) or a folder written by ``lm-flipout export``, with the run's own tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from ..data.run_tokenizer import tokenizer_of_run
from ..errors import CheckpointError
from ..pretrained import CONFIG_FILE, PretrainedLM, load_pretrained


def from_checkpoint(path: str) -> PretrainedLM:
    """The model of a training checkpoint (on the CPU) with the run's tokenizer; the corpus
    is not read, except to rebuild a SentencePiece model missing from the data cache."""
    from ..training import load_trained_model

    state, recipe, model = load_trained_model(path)
    vocab = state["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(token, str) for token in vocab):
        raise CheckpointError(f"Checkpoint {path} stores no valid vocabulary (a list of "
                              "tokens). Use a checkpoint written by lm_flipout training.")
    digests = state.get("data_digests")
    train_digest = digests.get("train") if isinstance(digests, dict) else None
    tokenizer = tokenizer_of_run(recipe.data, vocab, train_digest, f"checkpoint {path}")
    return PretrainedLM(model, tokenizer, recipe.data)


def load_model_source(path: str, device: Union[str, torch.device] = "cpu") -> PretrainedLM:
    """An exported folder (a directory) or a checkpoint (a file), on ``device``."""
    if Path(path).is_dir():
        if not (Path(path) / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{path} is a folder, neither an exported model (it has no {CONFIG_FILE}) nor "
                "a checkpoint. Give a checkpoint file, e.g. <run>/best.pt, or a folder written "
                "by `lm-flipout export CHECKPOINT DIR`.")
        return load_pretrained(path, device)
    lm = from_checkpoint(path)
    lm.model.to(device)
    return lm
