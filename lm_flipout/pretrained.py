"""A trained language model others can load: a folder of ``config.json`` (model and
tokenizer settings), ``model.safetensors`` (the weights) and the tokenizer (``vocab.json``,
or ``tokenizer.model`` for SentencePiece). `load_pretrained` reads only those files: no
pickle, no training state. `PretrainedLM` scores raw text and writes text."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .atomic import atomic_write, current_umask
from .config.convert import from_dict, to_dict
from .data.batching import make_batches
from .data.config import DataConfig
from .data.run_tokenizer import RunTokenizer
from .errors import CheckpointError, DataError, UserError, first_line
from .evaluation import total_nll
from .generation import sample_tokens
from .model import LanguageModel, ModelConfig

FORMAT = "lm_flipout.pretrained/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
SP_MODEL_FILE = "tokenizer.model"
# The data settings that rebuild the tokenizer, and the window length text is scored in.
DATA_KEYS = ("tokenizer", "char_ptb", "vocab_size", "min_freq", "sp_model_type",
             "sp_vocab_size", "sp_character_coverage", "bptt")

PathLike = Union[str, os.PathLike]


class PretrainedLM:
    """A language model with its tokenizer: ``model`` (the torch.nn.Module, in eval mode),
    ``perplexity(text)`` and ``generate(prompt, ...)``."""

    def __init__(self, model: LanguageModel, tokenizer: RunTokenizer, data: DataConfig) -> None:
        if len(tokenizer.vocab) != model.config.vocab_size:
            raise CheckpointError(
                f"The tokenizer has {len(tokenizer.vocab)} tokens but the model predicts "
                f"{model.config.vocab_size}; they come from different runs. Export the run again."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.data = data

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def perplexity(self, text: str) -> float:
        """Perplexity of ``text`` tokenized as the run's corpus tokenizes a split (every line
        ends in `<eos>`; words outside the vocabulary become `<unk>`), scored with mean
        weights at batch size 1 with the state carried across the whole text, in windows of
        the run's data.bptt: on a split's text, the number ``lm-flipout evaluate`` gives at
        batch size 1 (for runs with the default data.eval_protocol, carry)."""
        ids = torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.long)
        if ids.numel() < 2:
            raise UserError("perplexity needs a text of at least two tokens (one to read, one "
                            f"to predict); this one has {ids.numel()}.")
        data = dataclasses.replace(self.data, test_batch_size=1, eval_protocol="carry",
                                   bptt=min(self.data.bptt, ids.numel() - 1))
        batches = make_batches(ids, data, train=False, split="test")
        nll, tokens = total_nll(self.model, batches.iterate(), batches.carries_state, self.device)
        mean = nll / tokens
        return math.exp(mean) if mean < 700 else math.inf

    def generate(
        self, prompt: str = "", tokens: int = 100, seed: Optional[int] = None, *,
        temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
        sample_weights: bool = False, on_text: Optional[Callable[[str], None]] = None,
    ) -> str:
        """The prompt (as the model reads it) followed by ``tokens`` generated tokens. The
        model reads the prompt as the start of a line; words outside the vocabulary become
        `<unk>` with a warning. The same ``seed`` gives the same text (None: a fresh one).
        ``on_text`` receives the text piece by piece as it is written. Mean weights unless
        ``sample_weights``, which holds one noise sample for the whole text."""
        encoded = self.tokenizer.encode(prompt, end_line=False)
        if encoded.unknown:
            shown = ", ".join(repr(t) for t in dict.fromkeys(encoded.unknown))
            warnings.warn(f"not in the model's vocabulary, read as <unk>: {shown}",
                          stacklevel=2)
        # Text is decoded line by line (a line's text ends at its <eos>), so streaming
        # decodes only the open line at each token.
        eos, ids = self.tokenizer.eos_id, list(encoded.ids)
        line_start = max((i + 1 for i, token in enumerate(ids) if token == eos), default=0)
        closed = self.tokenizer.decode(ids[:line_start])
        written = closed + self.tokenizer.decode(ids[line_start:])
        if on_text is not None and written:
            on_text(written)

        def show(token: int) -> None:
            nonlocal closed, line_start, written
            ids.append(token)
            text = closed + self.tokenizer.decode(ids[line_start:])
            if token == eos:
                closed, line_start = text, len(ids)
            if on_text is not None and len(text) > len(written):
                on_text(text[len(written):])
            written = text

        sample_tokens(self.model, [eos] + encoded.ids, tokens,
                      secrets.randbits(63) if seed is None else seed, temperature=temperature,
                      top_k=top_k, top_p=top_p, sample_weights=sample_weights, on_token=show)
        return written

    def save(self, directory: PathLike, force: bool = False) -> Path:
        """Write the folder `load_pretrained` reads. A non-empty ``directory`` is refused
        unless ``force``, which replaces this format's files there and leaves others alone."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise UserError(f"{directory} is a file; give a folder to export into.")
        if directory.is_dir() and any(directory.iterdir()) and not force:
            raise UserError(f"{directory} is not empty, so nothing was written. Give a new or "
                            "empty folder, or pass --force to replace the exported files there.")
        tokenizer_file = (SP_MODEL_FILE if self.tokenizer.kind == "sentencepiece"
                          else VOCAB_FILE)
        config = {
            "format": FORMAT,
            "model": to_dict(self.model.config),
            "data": {key: getattr(self.data, key) for key in DATA_KEYS},
            "tokenizer_file": tokenizer_file,
        }
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / CONFIG_FILE).unlink(missing_ok=True)  # the folder is whole again last
            _save_weights(self.model, directory / WEIGHTS_FILE)
            with atomic_write(directory / tokenizer_file) as handle:
                handle.write(self.tokenizer.sp_model if tokenizer_file == SP_MODEL_FILE
                             else json.dumps(self.tokenizer.vocab, ensure_ascii=False).encode())
            stale = SP_MODEL_FILE if tokenizer_file == VOCAB_FILE else VOCAB_FILE
            (directory / stale).unlink(missing_ok=True)
            with atomic_write(directory / CONFIG_FILE) as handle:
                handle.write(json.dumps(config, indent=2).encode() + b"\n")
        except OSError as err:
            raise UserError(f"Cannot write the model into {directory} "
                            f"({err.strerror or err}). Check that the folder is writable and "
                            "the disk has room.") from None
        return directory


def _save_weights(model: LanguageModel, path: Path) -> None:
    """The state dict as safetensors, written beside ``path`` and renamed over it (tied
    weights are stored once; `load_model` restores the tie)."""
    from safetensors.torch import save_model

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_model(model, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_pretrained(directory: PathLike, device: Union[str, torch.device] = "cpu"
                    ) -> PretrainedLM:
    """The model and tokenizer of a folder written by ``lm-flipout export`` (or
    `PretrainedLM.save`), on ``device``, in eval mode."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} is not an exported lm_flipout model: it has no {CONFIG_FILE}. Give "
            "a folder written by `lm-flipout export CHECKPOINT DIR`.")
    config = _read_config(config_path)
    where = str(config_path)
    model = LanguageModel(from_dict(ModelConfig, config["model"], where))
    data = from_dict(DataConfig, config["data"], where)
    tokenizer = _read_tokenizer(directory, data, str(config.get("tokenizer_file")))
    if len(tokenizer.vocab) != model.config.vocab_size:
        raise CheckpointError(
            f"The tokenizer of {directory} has {len(tokenizer.vocab)} tokens but its "
            f"{CONFIG_FILE} describes a model of {model.config.vocab_size}: the files come from "
            "different exports. Export the run again.")
    try:
        from safetensors.torch import load_model

        load_model(model, str(directory / WEIGHTS_FILE), strict=True)
    except Exception as err:  # missing, damaged or foreign file; safetensors has its own error
        raise CheckpointError(
            f"The weights {directory / WEIGHTS_FILE} cannot be loaded into the model "
            f"{CONFIG_FILE} describes ({type(err).__name__}: {first_line(err)}). The folder is "
            "incomplete or damaged; export the run again.") from None
    return PretrainedLM(model.to(device), tokenizer, data)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read as JSON ({first_line(err)}). Export the "
                              "run again.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise CheckpointError(
            f"{path} has format {found!r}, but this version of lm_flipout reads {FORMAT!r}. "
            "Load it with the lm_flipout version that exported it, or export the run again.")
    missing = [key for key in ("model", "data") if not isinstance(config.get(key), dict)]
    if missing:
        raise CheckpointError(f"{path} lacks its {' and '.join(missing)} settings. Export the "
                              "run again.")
    return config


def _read_tokenizer(directory: Path, data: DataConfig, name: str) -> RunTokenizer:
    expected = SP_MODEL_FILE if data.tokenizer == "sentencepiece" else VOCAB_FILE
    path = directory / expected
    if name != expected or not path.is_file():
        raise CheckpointError(f"{directory} lacks its tokenizer file {expected} (a "
                              f"{data.tokenizer} tokenizer). Export the run again.")
    try:
        if expected == SP_MODEL_FILE:
            return RunTokenizer("sentencepiece", [], sp_model=path.read_bytes())
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, DataError) as err:
        raise CheckpointError(f"{path} cannot be read ({first_line(err)}). Export the run "
                              "again.") from None
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise CheckpointError(f"{path} is not a list of tokens. Export the run again.")
    return RunTokenizer(data.tokenizer, vocab, bool(data.char_ptb))
