"""A trained run seen from outside: rebuild data and model from a checkpoint's own config
and score it on a split, as evaluate.py and the variance study do."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Optional

import torch
from torch.optim import Optimizer

from ..config import Recipe, recipe_from_dict
from ..data import check_vocab, load_corpus, undefined_char_metrics_note
from ..data.batching import make_batches
from ..data.corpus import Corpus
from ..errors import CheckpointError, DataError, UserError
from ..evaluation import split_metrics, total_nll
from ..model import LanguageModel
from ..progress import shown_progress
from .checkpoint import CORRUPT_KEY, load_checkpoint
from .data_match import MOVED_HINT, check_split_unchanged, relocate_data
from .environment import select_device
from .optimizers import averaged_weights, build_optimizer
from .threads import Setting, ThreadChooser, scoring_step


def load_trained_run(path: str, data_overrides: Sequence[str] = (), *,
                     allow_corrupt: bool = False) -> tuple[dict, Recipe, Corpus, LanguageModel]:
    """Rebuild what a checkpoint written by train.py describes: its raw state, the recipe
    stored in it (``data_overrides`` may say where the data lives now, e.g.
    ``data.path=DIR``), the corpus (vocabulary checked against the checkpoint's) and the
    model on the CPU with the checkpoint's weights. Every mismatch is a clear UserError;
    ``allow_corrupt`` loads a checkpoint whose checksum does not match (see
    `load_checkpoint`)."""
    state, recipe = _checkpoint_recipe(path, data_overrides, allow_corrupt)
    try:
        corpus = load_corpus(recipe.data)
    except DataError as err:
        raise DataError(f"{err} {MOVED_HINT}") from None
    check_vocab(corpus, state["vocab"], str(path))
    return state, recipe, corpus, _model_of(state, recipe, path)


def load_trained_model(path: str, *, allow_corrupt: bool = False
                       ) -> tuple[dict, Recipe, LanguageModel]:
    """The raw state, stored recipe and model of a checkpoint, without reading the corpus
    (for generating text and exporting). A last.pt taken while NT-ASGD was averaging holds
    the averaged weights in the model, as evaluation scores it."""
    state, recipe = _checkpoint_recipe(path, (), allow_corrupt)
    model = _model_of(state, recipe, path)
    optimizer = _averaging_optimizer(state, recipe, model, path)
    if optimizer is not None:
        with averaged_weights(model, optimizer):
            averaged = {key: value.clone() for key, value in model.state_dict().items()}
        model.load_state_dict(averaged)
    return state, recipe, model


def _checkpoint_recipe(path: str, data_overrides: Sequence[str], allow_corrupt: bool
                       ) -> tuple[dict, Recipe]:
    state = load_checkpoint(path, map_location="cpu", allow_corrupt=allow_corrupt)
    missing = [key for key in ("model", "config", "vocab") if key not in state]
    if missing or not isinstance(state.get("config"), dict):
        raise CheckpointError(
            f"Checkpoint {path} is an lm_flipout file but lacks "
            f"{', '.join(missing) or 'a config'}, "
            "so the model cannot be rebuilt from it. Pass a best.pt or last.pt written by train.py."
        )
    config = relocate_data(state["config"], data_overrides, path)
    return state, recipe_from_dict(config, where=f"{path} (its stored config)")


def _model_of(state: dict, recipe: Recipe, path: str) -> LanguageModel:
    model = LanguageModel(recipe.model)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise _misfit(path, err) from None
    return model


def _averaging_optimizer(state: dict, recipe: Recipe, model: LanguageModel,
                         path: str) -> Optional[Optimizer]:
    """NT-ASGD's optimizer with the checkpoint's running means, or None unless a last.pt
    was taken while it averaged."""
    if not (state.get("schedule", {}).get("averaging") and "optimizer" in state):
        return None
    try:
        optimizer = build_optimizer(recipe.optim, model.parameters(), averaging=True)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _misfit(path, err) from None
    return optimizer


def _misfit(path: str, err: Exception) -> Exception:
    return CheckpointError(
        f"Checkpoint {path} does not fit the model its own config describes "
        f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}). It is damaged or "
        "was written by another version of lm_flipout."
    )


def evaluate_checkpoint(
    path: str, split: str = "test", batch_size: Optional[int] = None, mc_samples: int = 0,
    device: str = "auto", data_overrides: Sequence[str] = (), allow_changed_data: bool = False,
    threads: Setting = "auto", allow_corrupt: bool = False,
) -> dict:
    """Rebuild data and model from a checkpoint's own config and score one split.

    ``batch_size`` defaults to the recipe's ``data.test_batch_size`` for the test split (1
    unless the recipe says otherwise: the usual protocol) and to ``data.eval_batch_size``
    otherwise; ``data.eval_protocol`` says whether the state carries across the split.
    ``data_overrides`` say where the data lives now; a split whose text changed since training
    is refused (DataError) unless ``allow_changed_data``, which warns and marks the result
    ``"data_changed": true``; likewise ``allow_corrupt`` scores a checkpoint whose checksum
    does not match, marked ``"checkpoint_corrupt": true``. A last.pt taken after NT-ASGD
    started averaging is scored with the averaged weights, as training evaluates it. Bits per
    character and word perplexity are left out, with a ``note`` saying why, where tokens became
    ``<unk>``. ``threads`` is the CPU thread count or ``auto`` (the fastest, timed on a few
    windows at the batch size scored); the result records the choice and the scoring's
    ``seconds``; progress goes to stderr."""
    if split not in ("valid", "test"):
        raise UserError(f"split={split!r} is not a split; use 'valid' or 'test'.")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise UserError(f"batch size {batch_size!r} must be a positive integer.")
    if isinstance(mc_samples, bool) or mc_samples < 0:
        raise UserError(f"mc_samples={mc_samples!r} must be 0 (mean weights) or a positive count.")
    if threads != "auto" and (not isinstance(threads, int) or isinstance(threads, bool)
                              or threads < 1):
        raise UserError(f"threads={threads!r} must be auto (the fastest count, timed) or a "
                        "whole number of threads >= 1.")
    target = select_device(device)
    state, recipe, corpus, model = load_trained_run(path, data_overrides,
                                                    allow_corrupt=allow_corrupt)
    changed = check_split_unchanged(state, corpus, split, path, allow_changed_data)
    if batch_size is not None:
        recipe.data.eval_batch_size = recipe.data.test_batch_size = batch_size
    optimizer = _averaging_optimizer(state, recipe, model, path)
    model.to(target)
    batches = make_batches(corpus.splits[split].tokens, recipe.data, train=False, split=split)
    scored_batch = recipe.data.test_batch_size if split == "test" else recipe.data.eval_batch_size
    threads_before = torch.get_num_threads()
    try:
        with averaged_weights(model, optimizer):  # no-op unless NT-ASGD was averaging
            choice = ThreadChooser(threads, target, key="--threads").use(
                split, scoring_step(model, recipe.data.bptt, scored_batch, target))
            started = time.monotonic()
            shown = shown_progress(batches.iterate(), batches.num_batches(), f"scoring {split}")
            nll, tokens = total_nll(model, shown, batches.carries_state, target, mc_samples)
            seconds = time.monotonic() - started
    finally:
        torch.set_num_threads(threads_before)
    metrics = split_metrics(nll, tokens, corpus.splits[split], split)
    result = {
        "split": split,
        "ppl": metrics[f"{split}_ppl"],
        "loss": metrics[f"{split}_loss"],
        "tokens": tokens,
        "batch_size": scored_batch,
        "carries_state": batches.carries_state,
        "mc_samples": mc_samples,
        "checkpoint": str(path),
        "seconds": seconds,
        "threads": choice.as_dict(),
    }
    if f"{split}_bpc" in metrics:
        result["bpc"] = metrics[f"{split}_bpc"]
        if corpus.tokenizer != "word":
            result["word_ppl"] = metrics[f"{split}_word_ppl"]
    else:
        result["note"] = undefined_char_metrics_note(corpus, (split,))
    if changed:
        result["data_changed"] = True
    if state.get(CORRUPT_KEY):
        result["checkpoint_corrupt"] = True
    return result

