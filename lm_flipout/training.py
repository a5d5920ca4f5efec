"""The training loop: one `Trainer` per run directory (design.md §4).

A run is resumable at any step: ``last.pt`` holds the model, optimizer, schedule, the
carried LSTM state, every RNG state and the exact data position, and the batch order of an
epoch depends only on (seed, epoch), so a resumed run repeats an uninterrupted one exactly
on CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import atomic_write, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Recipe, recipe_to_dict, save_recipe
from .data import check_vocab, load_corpus
from .data.batching import make_batches
from .errors import TrainingError
from .evaluation import split_metrics, total_nll
from .model import LanguageModel
from .nn import detach_state
from .optim import Schedule, averaged_weights, build_optimizer
from .tracking import Tracker


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; ``last.pt`` was written after the current step."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(signum)
        self.signum, self.run_dir = signum, run_dir


@dataclass
class Progress:
    """Where the run stands; everything here goes into ``last.pt``."""

    epoch: int = 1  # the epoch in progress
    position: int = 0  # data position of the next batch within the epoch
    step: int = 0  # optimizer steps taken
    best_valid_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    metrics_bytes: int = 0  # length of metrics.jsonl when the checkpoint was written


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(
            f"train.device={name!r} asks for a GPU but PyTorch sees none. Use train.device=auto "
            "or train.device=cpu."
        )
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def git_revision() -> str:
    """The checkout's commit (with ``-dirty`` for local changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def _state_to_plain(state) -> Optional[dict]:
    if state is None:
        return None
    h, c = state
    return {"h": [t.cpu() for t in h], "c": [t.cpu() for t in c]}


def _state_from_plain(plain: Optional[dict], model: LanguageModel, device: torch.device):
    if plain is None:
        return None
    h = [t.to(device) for t in plain["h"]]
    c = [t.to(device) for t in plain["c"]]
    return (model.lstm._pack(h), model.lstm._pack(c))


class Trainer:
    """Builds everything a recipe describes and trains it in ``run_dir``."""

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False,
                 echo: Callable[[str], None] = print) -> None:
        self.recipe, self.run_dir, self.echo = recipe, Path(run_dir), echo
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self._check_run_dir(resume)
        self.device = select_device(recipe.train.device)
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        self.corpus = load_corpus(recipe.data)
        recipe.model.vocab_size = self.corpus.vocab_size
        self.model = LanguageModel(recipe.model).to(self.device)
        self.schedule = Schedule(recipe.optim)
        self.optimizer = build_optimizer(recipe.optim, self.model.parameters())
        self.progress = Progress()
        self.carried = None
        self.train_batches = make_batches(self.corpus.splits["train"].tokens, recipe.data,
                                          train=True, seed=recipe.train.seed, split="train")
        self.eval_batches = {
            name: make_batches(self.corpus.splits[name].tokens, recipe.data, train=False,
                               split=name)
            for name in ("valid", "test")
        }
        self.resumed = resume and self.last_path.exists()
        if self.resumed:
            self._restore(load_checkpoint(self.last_path, map_location=self.device))
        elif resume:
            self.echo(f"--resume: no checkpoint in {self.run_dir} yet; starting the run from the beginning.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resumed:
            save_recipe(recipe, self.run_dir / "config.yaml")
            (self.run_dir / "metrics.jsonl").write_text("")
        self.tracker = Tracker(self.run_dir, recipe, resume=self.resumed)
        self._stop_signal: Optional[int] = None

    # -- run directory -------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> None:
        has_run = self.last_path.exists() or (self.run_dir / "results.json").exists()
        if has_run and not resume:
            raise TrainingError(
                f"The run directory {self.run_dir} already holds a run (last.pt or results.json). "
                "Nothing was changed. Continue it with --resume, or start a new run under another "
                "name with train.run_name=NAME (or train.out_dir=DIR)."
            )

    # -- checkpoints ---------------------------------------------------------------------
    def _checkpoint_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "progress": asdict(self.progress),
            "carried_state": _state_to_plain(self.carried),
            "rng": rng_state(),
            "config": recipe_to_dict(self.recipe),
            "vocab": list(self.corpus.vocab),
        }

    def _save_last(self) -> None:
        self.progress.metrics_bytes = self.tracker.metrics_bytes()
        save_checkpoint(self._checkpoint_state(), self.last_path)
        self._last_save_time = time.monotonic()

    def _save_best(self) -> None:
        with averaged_weights(self.model, self.optimizer):
            model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        state = {"model": model_state, "config": recipe_to_dict(self.recipe),
                 "vocab": list(self.corpus.vocab), "progress": asdict(self.progress)}
        save_checkpoint(state, self.best_path)

    def _restore(self, state: dict) -> None:
        check_vocab(self.corpus, state["vocab"], str(self.last_path))
        self.model.load_state_dict(state["model"])
        self.schedule.load_state_dict(state["schedule"])
        if self.schedule.averaging:
            self.optimizer = build_optimizer(self.recipe.optim, self.model.parameters(), averaging=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        self.carried = _state_from_plain(state["carried_state"], self.model, self.device)
        set_rng_state(state["rng"])
        with open(self.run_dir / "metrics.jsonl", "r+b") as metrics:
            metrics.truncate(self.progress.metrics_bytes)  # drop lines logged after last.pt
        self.echo(f"Resuming {self.run_dir} at epoch {self.progress.epoch}, step {self.progress.step}.")

    # -- signals -------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    # -- training ------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end (or until stopped early), then write ``results.json``."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        start = time.monotonic()
        wall_before = self.progress.wall_seconds
        self._last_save_time = time.monotonic()
        try:
            self.echo(f"Training on {self.device} with {self.model.num_parameters():,} parameters; "
                      f"run directory {self.run_dir}")
            cfg = self.recipe.train
            while self.progress.epoch <= cfg.epochs and not self._finished_early():
                self._train_epoch()
                self._end_epoch()
            self.progress.wall_seconds = wall_before + time.monotonic() - start
            results = self._final_results()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.tracker.finish()
        return results

    def _finished_early(self) -> bool:
        cfg = self.recipe.train
        if cfg.max_steps and self.progress.step >= cfg.max_steps:
            return True
        return bool(cfg.early_stopping) and self.progress.epochs_without_improvement >= cfg.early_stopping

    def _train_epoch(self) -> None:
        cfg, progress = self.recipe, self.progress
        batches = self.train_batches
        total = batches.num_batches(progress.epoch)
        bar = tqdm(batches.iterate(progress.epoch, progress.position), total=total,
                   initial=self._batches_before(progress.position), desc=f"epoch {progress.epoch}",
                   leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
        if progress.position == 0:
            self.carried = None
        window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
        for batch in bar:
            step_start = time.monotonic()
            loss, tokens, grad_norm, lr = self._train_step(batch)
            progress.train_seconds += time.monotonic() - step_start
            progress.train_tokens += tokens
            progress.step += 1
            progress.position = batch.position + batch.inputs.shape[0] if batches.carries_state \
                else batch.position + 1
            window_loss += loss * tokens
            window_tokens += tokens
            if progress.step % cfg.train.log_every == 0 or self._stop_signal is not None:
                mean = window_loss / window_tokens
                speed = window_tokens / max(time.monotonic() - window_start, 1e-9)
                self.tracker.log({"event": "train", "epoch": progress.epoch, "loss": mean,
                                  "ppl": math.exp(min(mean, 700)), "lr": lr,
                                  "grad_norm": grad_norm, "tokens_per_s": speed}, progress.step)
                bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 700)):.1f}",
                                lr=f"{lr:.3g}", tok_s=f"{speed:,.0f}")
                window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
            if self._stop_signal is not None:
                bar.close()
                self._save_last()
                raise Interrupted(self._stop_signal, self.run_dir)
            if self._checkpoint_due():
                self._save_last()
            if cfg.train.max_steps and progress.step >= cfg.train.max_steps:
                break
        bar.close()

    def _batches_before(self, position: int) -> int:
        if not self.train_batches.carries_state:
            return position
        return sum(1 for start, _ in self.train_batches.windows(self.progress.epoch) if start < position)

    def _checkpoint_due(self) -> bool:
        cfg = self.recipe.train
        if cfg.checkpoint_every_steps and self.progress.step % cfg.checkpoint_every_steps == 0:
            return True
        return cfg.checkpoint_every_s > 0 and time.monotonic() - self._last_save_time >= cfg.checkpoint_every_s

    def _train_step(self, batch) -> tuple[float, int, float, float]:
        optim = self.recipe.optim
        model = self.model.train()
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        state = self.carried if self.train_batches.carries_state else None
        raw, dropped, state = model.hidden(inputs, state)
        self.carried = detach_state(state)
        logits = model.decoder(dropped)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        objective = loss
        if optim.ar:
            objective = objective + optim.ar * dropped.pow(2).mean()
        if optim.tar:
            objective = objective + optim.tar * (raw[1:] - raw[:-1]).pow(2).mean()
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(
                f"The training loss became {value} at step {self.progress.step + 1} (epoch "
                f"{self.progress.epoch}); the run stopped without saving this step. The last good "
                f"checkpoint {self.last_path} is kept. Lower optim.lr, enable gradient clipping "
                "(optim.clip) or weaken the noise, then resume with --resume or start a new run."
            )
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        clip = optim.clip if optim.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] *= batch.lr_scale
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, base_lrs):
            group["lr"] = lr
        return value, targets.numel(), grad_norm, base_lrs[0]

    def _evaluate(self, split: str, mc_samples: int = 0) -> dict:
        nll, tokens = total_nll(self.model, self.eval_batches[split].iterate(),
                                self.eval_batches[split].carries_state, self.device, mc_samples)
        return split_metrics(nll, tokens, self.corpus.splits[split], split)

    def _end_epoch(self) -> None:
        progress = self.progress
        with averaged_weights(self.model, self.optimizer):
            metrics = self._evaluate("valid")
        lr = self.optimizer.param_groups[0]["lr"]
        improved = metrics["valid_loss"] < progress.best_valid_loss
        if improved:
            progress.best_valid_loss, progress.best_epoch = metrics["valid_loss"], progress.epoch
            progress.epochs_without_improvement = 0
        else:
            progress.epochs_without_improvement += 1
        change = self.schedule.step(metrics["valid_loss"], self.optimizer)
        if change == "averaging":
            self.optimizer = build_optimizer(self.recipe.optim, self.model.parameters(), averaging=True)
        self.tracker.log({"event": "valid", "epoch": progress.epoch, "lr": lr, **metrics},
                         progress.step)
        note = {"lr": f", lr x{self.recipe.optim.plateau_factor:g}",
                "averaging": ", switched to averaged SGD"}.get(change or "", "")
        self.echo(f"epoch {progress.epoch:3d} | step {progress.step} | valid ppl "
                  f"{metrics['valid_ppl']:.2f} | bpc {metrics['valid_bpc']:.3f} | lr {lr:.3g}"
                  f"{' | best' if improved else ''}{note}")
        progress.epoch += 1
        progress.position = 0
        self.carried = None
        if improved:
            self._save_best()
        self._save_last()

    def _final_results(self) -> dict:
        if not self.best_path.exists():
            raise TrainingError(f"No best.pt in {self.run_dir}: no epoch finished, so there is "
                                "nothing to evaluate. Train for at least one epoch.")
        best = load_checkpoint(self.best_path, map_location=self.device)
        self.model.load_state_dict(best["model"])
        results: dict = {}
        for split in ("valid", "test"):
            results.update(self._evaluate(split))
        if self.corpus.tokenizer == "word":
            results = {k: v for k, v in results.items() if not k.endswith("_word_ppl")}
        if self.recipe.data.source == "synthetic":
            from .data.synthetic_source import ensure_synthetic_corpus

            optimal = ensure_synthetic_corpus(self.recipe.data)["splits"]
            results["optimal_valid_ppl"] = optimal["valid"]["optimal_perplexity"]
            results["optimal_test_ppl"] = optimal["test"]["optimal_perplexity"]
        speed = self.progress.train_tokens / max(self.progress.train_seconds, 1e-9)
        results.update({
            "params": self.model.num_parameters(),
            "tokens_per_s": speed,
            "wall_s": self.progress.wall_seconds,
            "git_rev": git_revision(),
            "epochs": self.progress.epoch - 1,
            "best_epoch": self.progress.best_epoch,
            "steps": self.progress.step,
            "device": str(self.device),
        })
        self.tracker.log({"event": "test", **results}, self.progress.step)
        self.tracker.summary({"best_valid_ppl": results["valid_ppl"], **results})
        with atomic_write(self.run_dir / "results.json") as handle:
            handle.write(json.dumps(results, indent=2).encode() + b"\n")
        self.echo(f"done | valid ppl {results['valid_ppl']:.2f} | test ppl {results['test_ppl']:.2f}"
                  f" | test bpc {results['test_bpc']:.3f} | {self.run_dir / 'results.json'}")
        return results
