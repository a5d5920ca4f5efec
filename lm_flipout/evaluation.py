"""Perplexity, bits per character and Monte-Carlo averaged evaluation.

Metrics are normalised so they compare across tokenizers: the mean NLL per evaluated
token is scaled by the split's tokens per character (bits per character) or per word
(word-level perplexity), so a split whose tail was trimmed by batching still counts right.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Optional

import torch

from .data.corpus import Corpus, Split
from .data.metrics import bits_per_char
from .model import LanguageModel
from .nn import detach_state, set_mc_sampling
from .nn.lstm import State

if TYPE_CHECKING:
    from .config import Recipe


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


@torch.no_grad()
def total_nll(
    model: LanguageModel,
    batches: Iterable,
    carries_state: bool,
    device: torch.device,
    mc_samples: int = 0,
) -> tuple[float, int]:
    """Summed NLL (nats) and number of predicted tokens over ``batches`` in eval mode.

    With ``mc_samples`` = K > 0 the model draws K noise/dropout samples per window and the
    predicted probabilities are averaged before the log (each sample carries its own state).
    """
    was_training = model.training
    model.eval()
    set_mc_sampling(model, mc_samples > 0)
    copies = max(mc_samples, 1)
    states: list[Optional[State]] = [None] * copies
    nll_sum, tokens = 0.0, 0
    try:
        for batch in batches:
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            log_probs = []
            for k in range(copies):
                logits, state = model(inputs, states[k] if carries_state else None)
                states[k] = detach_state(state)
                log_probs.append(logits.float().log_softmax(-1))
            mixture = torch.stack(log_probs).logsumexp(0) - math.log(copies)  # (T, B, V)
            picked = mixture.gather(-1, targets.unsqueeze(-1))
            nll_sum -= picked.sum().item()
            tokens += targets.numel()
    finally:
        set_mc_sampling(model, False)
        model.train(was_training)
    return nll_sum, tokens


def split_metrics(nll_sum: float, tokens: int, split: Split, prefix: str) -> dict[str, float]:
    """``<prefix>_loss`` (nats/token), ``_ppl``, ``_bpc`` and ``_word_ppl`` of ``split``
    from an NLL summed over ``tokens`` predictions (see `lm_flipout.data.metrics`)."""
    mean = nll_sum / max(tokens, 1)
    return {
        f"{prefix}_loss": mean,
        f"{prefix}_ppl": _exp(mean),
        f"{prefix}_bpc": bits_per_char(nll_sum, split, tokens),
        f"{prefix}_word_ppl": _exp(mean * split.n_tokens / split.n_words),
    }


def load_trained_run(path: str) -> tuple[dict, Recipe, Corpus, LanguageModel]:
    """Rebuild what a checkpoint written by train.py describes: its raw state, the recipe
    stored in it, the corpus (vocabulary checked against the checkpoint's) and the model on
    the CPU with the checkpoint's weights. Every mismatch is a clear CheckpointError."""
    from .checkpoint import load_checkpoint
    from .config import recipe_from_dict
    from .data import check_vocab, load_corpus
    from .errors import CheckpointError

    state = load_checkpoint(path, map_location="cpu")
    missing = [key for key in ("model", "config", "vocab") if key not in state]
    if missing or not isinstance(state.get("config"), dict):
        raise CheckpointError(
            f"Checkpoint {path} is an lm_flipout file but lacks {', '.join(missing) or 'a config'}, "
            "so the model cannot be rebuilt from it. Pass a best.pt or last.pt written by train.py."
        )
    recipe = recipe_from_dict(state["config"], where=f"{path} (its stored config)")
    corpus = load_corpus(recipe.data)
    check_vocab(corpus, state["vocab"], str(path))
    model = LanguageModel(recipe.model)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise _misfit(path, err) from None
    return state, recipe, corpus, model


def _misfit(path: str, err: Exception) -> Exception:
    from .errors import CheckpointError

    return CheckpointError(
        f"Checkpoint {path} does not fit the model its own config describes "
        f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}). It is damaged or "
        "was written by another version of lm_flipout."
    )


def evaluate_checkpoint(
    path: str, split: str = "test", batch_size: Optional[int] = None, mc_samples: int = 0,
    device: str = "auto",
) -> dict:
    """Rebuild data and model from a checkpoint's own config and score one split.

    ``batch_size`` defaults to 1 for the test split (the usual protocol) and to the
    recipe's ``data.eval_batch_size`` otherwise. A last.pt taken after NT-ASGD started
    averaging is scored with the averaged weights, as training evaluates it."""
    from .data.batching import make_batches
    from .errors import UserError
    from .optim import averaged_weights, build_optimizer
    from .training import select_device

    if split not in ("valid", "test"):
        raise UserError(f"split={split!r} is not a split; use 'valid' or 'test'.")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise UserError(f"batch size {batch_size!r} must be a positive integer.")
    if isinstance(mc_samples, bool) or mc_samples < 0:
        raise UserError(f"mc_samples={mc_samples!r} must be 0 (mean weights) or a positive count.")
    target = select_device(device)
    state, recipe, corpus, model = load_trained_run(path)
    recipe.data.eval_batch_size = batch_size or (1 if split == "test" else recipe.data.eval_batch_size)
    optimizer = None
    if state.get("schedule", {}).get("averaging") and "optimizer" in state:
        try:
            optimizer = build_optimizer(recipe.optim, model.parameters(), averaging=True)
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise _misfit(path, err) from None
    model.to(target)
    batches = make_batches(corpus.splits[split].tokens, recipe.data, train=False, split=split)
    with averaged_weights(model, optimizer):  # no-op unless NT-ASGD was averaging
        nll, tokens = total_nll(model, batches.iterate(), batches.carries_state, target,
                                mc_samples)
    metrics = split_metrics(nll, tokens, corpus.splits[split], split)
    result = {
        "split": split,
        "ppl": metrics[f"{split}_ppl"],
        "bpc": metrics[f"{split}_bpc"],
        "loss": metrics[f"{split}_loss"],
        "tokens": tokens,
        "batch_size": recipe.data.eval_batch_size,
        "mc_samples": mc_samples,
        "checkpoint": str(path),
    }
    if corpus.tokenizer != "word":
        result["word_ppl"] = metrics[f"{split}_word_ppl"]
    return result

