"""The training loop: one `Trainer` per run directory (design.md §4).

A run is resumable at any step: ``last.pt`` holds the model, optimizer, schedule, the
carried LSTM state, every RNG state and the exact data position, and the batch order of an
epoch depends only on (seed, epoch), so a resumed run repeats an uninterrupted one exactly
on CPU.

Crash safety: files are replaced atomically, and at the end of an epoch best.pt is written
before last.pt. A crash between the two leaves last.pt from before the epoch's end, so a
resume redoes the end of the epoch (and rewrites best.pt) instead of trusting a best.pt
that last.pt does not know about.

Data parallel (``torchrun``, see `lm_flipout.distributed`): the step runs through `StepLoss`
wrapped in DistributedDataParallel, so gradients are averaged over the ranks before clipping.
The ranks agree after every step on the loss, on a stop signal and on a time-based checkpoint
(one small all-reduce), so they all stop after the same step; rank 0 alone writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .checkpoint import atomic_write, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Recipe, changed_settings, recipe_to_dict, save_recipe
from .data import check_vocab, load_corpus
from .data.batching import make_batches
from .distributed import DistContext, on_main, sum_across_ranks
from .errors import CheckpointError, TrainingError
from .evaluation import split_metrics, total_nll
from .model import LanguageModel
from .nn import detach_state
from .nn.lstm import State
from .optim import Schedule, activation_penalty, averaged_weights, build_optimizer
from .tracking import Tracker

RESULTS_FILE = "results.json"

# Recipe keys that may differ between a run and its --resume: how long and how often to
# train, log and checkpoint, where things live, and the learning rate and clipping (to
# recover from a divergence). Everything else would silently change the experiment.
RESUME_MAY_CHANGE = frozenset({
    "train.epochs", "train.max_steps", "train.early_stopping", "train.checkpoint_every_s",
    "train.checkpoint_every_steps", "train.log_every", "train.device", "train.deterministic",
    "train.out_dir", "train.run_name",
    "optim.lr", "optim.clip",
    "data.path", "data.train_file", "data.valid_file", "data.test_file", "data.hf_data_files",
    "data.hf_cache_dir", "data.cache_dir",
})
LAST_KEYS = ("model", "optimizer", "schedule", "progress", "carried_state", "rng", "config", "vocab")


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived. With ``saved`` the current step was finished and ``last.pt``
    written; without it (a second signal) the run stopped at once and ``last.pt`` is the one
    from the last regular save."""

    def __init__(self, signum: int, run_dir: Path, saved: bool = True) -> None:
        super().__init__(signum)
        self.signum, self.run_dir, self.saved = signum, run_dir, saved


class AlreadyFinished(Exception):
    """``--resume`` on a run that has its results.json; nothing is trained."""

    def __init__(self, run_dir: Path, results: dict) -> None:
        super().__init__(str(run_dir))
        self.run_dir, self.results = run_dir, results

    def __reduce__(self):  # picklable, so that rank 0 can hand it to the other ranks
        return type(self), (self.run_dir, self.results)


class StepLoss(nn.Module):
    """The training objective of one window as a module, so that DistributedDataParallel,
    which synchronises gradients through ``forward``, sees the whole step.

    ``forward`` returns the mean cross-entropy (for reporting), the objective to minimise
    (cross-entropy plus AWD-LSTM's AR/TAR penalties) and the LSTM state after the window.
    """

    def __init__(self, model: LanguageModel, ar: float = 0.0, tar: float = 0.0) -> None:
        super().__init__()
        self.model, self.ar, self.tar = model, ar, tar

    def forward(self, inputs: Tensor, targets: Tensor,
                state: Optional[State] = None) -> tuple[Tensor, Tensor, State]:
        raw, dropped, state = self.model.hidden(inputs, state)
        logits = self.model.decoder(dropped)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss, loss + activation_penalty(raw, dropped, self.ar, self.tar), state


class _NullTracker:
    """Stands in for the Tracker on ranks other than 0, which log nothing."""

    def log(self, metrics: dict, step: int) -> dict:
        return {}

    def metrics_bytes(self) -> int:
        return 0

    def summary(self, values: dict) -> dict:
        return {}

    def finish(self, exit_code: int = 0) -> None:
        pass


def _silent(message: str) -> None:
    pass


def _processes(count: int) -> str:
    return "a single process" if count == 1 else f"{count} data-parallel processes"


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
    epoch_nll: float = 0.0  # summed training loss of the epoch in progress (nats)
    epoch_tokens: int = 0  # training tokens of the epoch in progress
    log_nll: float = 0.0  # summed training loss since the last "train" log line
    log_tokens: int = 0  # training tokens since the last "train" log line
    log_seconds: float = 0.0  # time spent in training steps since the last "train" log line


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable device is a clear error."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise TrainingError(f"Device {name!r} is not a device. Use auto (CUDA when available), "
                            "cpu, cuda, cuda:N (e.g. cuda:1) or mps.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(
                f"train.device={name!r} asks for a GPU but PyTorch sees none. Use train.device=auto "
                "or train.device=cpu."
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise TrainingError(
                f"train.device={name!r} names GPU {index}, but PyTorch sees "
                f"{torch.cuda.device_count()} (cuda:0 to cuda:{torch.cuda.device_count() - 1}). "
                "Pick one of those or use train.device=auto."
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("train.device='mps' asks for Apple's GPU, but PyTorch cannot use it "
                            "here. Use train.device=auto or train.device=cpu.")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator; ``deterministic`` also makes PyTorch use deterministic kernels
    (and fail on an operation that has none), at some cost in speed on GPUs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
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


def read_results(run_dir: Path) -> Optional[dict]:
    """The run's results.json, or None when the run has not finished."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"{path} exists but cannot be read as JSON ({err}). It marks the run as finished; "
            "if it is damaged, delete it and run with --resume to compute the results again."
        ) from None
    if not isinstance(results, dict):
        raise TrainingError(f"{path} does not hold a JSON object. Delete it and run with "
                            "--resume to compute the results again.")
    return results


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


def _join_columns(shards: list[Optional[dict]]) -> Optional[dict]:
    """The ranks' carried states (rank order) side by side: the global batch's state, as one
    process with the whole batch would hold it."""
    if shards[0] is None:
        return None
    return {key: [torch.cat(layer) for layer in zip(*(shard[key] for shard in shards))]
            for key in ("h", "c")}


def _own_columns(plain: Optional[dict], ctx: DistContext) -> Optional[dict]:
    """This rank's columns [rB/W, (r+1)B/W) of a global carried state."""
    if plain is None or not ctx.enabled:
        return plain
    out = {}
    for key in ("h", "c"):
        layers = []
        for t in plain[key]:
            width = t.shape[0] // ctx.world_size
            layers.append(t[ctx.rank * width:(ctx.rank + 1) * width].clone())
        out[key] = layers
    return out


class Trainer:
    """Builds everything a recipe describes and trains it in ``run_dir``.

    ``dist`` places the process among torchrun's data-parallel processes (default: alone);
    every rank builds a Trainer with the same recipe, and only rank 0 touches ``run_dir``.
    Raises `AlreadyFinished` for ``resume`` on a finished run, TrainingError for a fresh
    start in a directory that holds a run, CheckpointError for an unusable last.pt.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False,
                 echo: Callable[[str], None] = print,
                 dist: Optional[DistContext] = None) -> None:
        self.dist = dist or DistContext()
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.echo = echo if self.dist.is_main else _silent
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        if self.dist.enabled:  # the process group first: rank 0 shares what it reads below
            distributed.check_batch_sizes(recipe.data.batch_size, recipe.data.eval_batch_size,
                                          self.dist.world_size)
            self.device = distributed.select_device(self.dist, recipe.train.device)
            distributed.init_process_group(self.dist, self.device)
        state = on_main(self.dist, lambda: self._read_last(resume))  # fail before slow work
        if not self.dist.enabled:
            self.device = select_device(recipe.train.device)
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        self.corpus = distributed.main_first(self.dist, lambda: load_corpus(recipe.data))
        recipe.model.vocab_size = self.corpus.vocab_size
        if state is not None:
            check_vocab(self.corpus, state["vocab"], str(self.last_path))
            self._adopt_config(state["config"])
        self.model = LanguageModel(recipe.model).to(self.device)
        self.step_loss: nn.Module = StepLoss(self.model, recipe.optim.ar, recipe.optim.tar)
        if self.dist.enabled:  # averages the gradients over the ranks during backward()
            self.step_loss = DistributedDataParallel(
                self.step_loss, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.schedule = Schedule(recipe.optim)
        self.optimizer = build_optimizer(recipe.optim, self.model.parameters())
        self.progress = Progress()
        self.carried = None
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        train_tokens, label = self.corpus.splits["train"].tokens, "train"
        cut = recipe.data.train_tokens
        if cut is not None and cut < train_tokens.numel():
            train_tokens, label = train_tokens[:cut], f"train (cut to data.train_tokens={cut})"
        self.train_batches = make_batches(train_tokens, recipe.data, train=True,
                                          seed=recipe.train.seed, split=label, **shard)
        self.eval_batches = {
            name: make_batches(self.corpus.splits[name].tokens, recipe.data, train=False,
                               split=name, **shard)
            for name in ("valid", "test")
        }
        self.resumed = state is not None
        self._saved_step: Optional[int] = None  # step of the last.pt on disk
        if state is not None:
            self._restore(state)
        elif resume:
            self.echo(f"--resume: no checkpoint in {self.run_dir} yet; starting the run from "
                      "the beginning.")
        # A resume rewrites config.yaml (with any allowed change) with its first checkpoint,
        # so a resume that fails at once leaves the run directory as it was.
        self._config_pending = self.resumed
        self.tracker: Any = _NullTracker()
        on_main(self.dist, self._open_run_dir)
        if state is not None:
            self._restore_rng(state["rng"])  # last, so that nothing above draws from it
        elif self.dist.enabled:  # each rank its own noise; the weights are drawn already
            seed_everything(distributed.rank_seed(recipe.train.seed, self.dist.rank),
                            recipe.train.deterministic)
        self._stop_signal: Optional[int] = None  # the signal this process received
        self._agreed_signal: Optional[int] = None  # data parallel: the one all ranks act on
        self._agreed_due = False  # data parallel: rank 0's clock asks for a checkpoint
        self._last_save_time = self._run_start = time.monotonic()
        self._wall_before = self.progress.wall_seconds

    def _read_last(self, resume: bool) -> Optional[dict]:
        """Check the run directory; with ``resume`` the checked last.pt (None if there is none)."""
        self._check_run_dir(resume)
        if not (resume and self.last_path.exists()):
            return None
        state = load_checkpoint(self.last_path, map_location="cpu")
        self._check_last(state)
        return state

    def _open_run_dir(self) -> None:
        """Rank 0: create the run directory, config.yaml, metrics.jsonl and the Tracker."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resumed:
            save_recipe(self.recipe, self.run_dir / "config.yaml")
        self._prepare_metrics_file()
        self.tracker = Tracker(self.run_dir, self.recipe, resume=self.resumed)

    def _restore_rng(self, saved: Any) -> None:
        """Set this rank's generators from last.pt (its own entry of the per-rank list)."""
        error: Optional[Exception] = None
        try:
            set_rng_state(saved[self.dist.rank] if self.dist.enabled else saved)
        except (CheckpointError, TypeError, ValueError, KeyError, IndexError,
                RuntimeError) as err:
            error = err
        failed = sum_across_ranks(self.dist, error is not None)[0]
        if not failed:
            return
        self.tracker.finish(exit_code=1)
        if isinstance(error, CheckpointError):
            raise error
        raise CheckpointError(
            f"Checkpoint {self.last_path} holds a damaged random-number state "
            f"({type(error).__name__ if error else 'on another rank'}), so the run cannot be "
            "resumed exactly. Restore the run's own last.pt, or start a new run under another "
            "train.run_name."
        ) from None

    def _check_world_size(self, state: dict) -> None:
        """A resume needs as many processes as the run that wrote last.pt (one RNG state each)."""
        saved = state.get("world_size", 1)
        if saved == self.dist.world_size:
            return
        how = ("as a single process (python train.py ... --resume)" if saved == 1 else
               f"under torchrun with {saved} processes in all (nodes x --nproc_per_node)")
        raise CheckpointError(
            f"{self.last_path} was written by {_processes(saved)}, but this resume has "
            f"{_processes(self.dist.world_size)}. Every process's random-number state is part of "
            f"the checkpoint, so the run continues exactly only with the same number: resume it "
            f"{how}, or start a new run under another train.run_name."
        )

    # -- run directory -------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> None:
        if resume:
            results = read_results(self.run_dir)
            if results is not None:
                raise AlreadyFinished(self.run_dir, results)
            return
        found = [name for name in ("last.pt", "best.pt", RESULTS_FILE)
                 if (self.run_dir / name).exists()]
        if found:
            raise TrainingError(
                f"The run directory {self.run_dir} already holds a run ({', '.join(found)}). "
                "Nothing was changed. Continue it with --resume, or start a new run under another "
                "name with train.run_name=NAME (or train.out_dir=DIR)."
            )

    def _prepare_metrics_file(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not self.resumed or not path.exists():
            path.write_text("")
            return
        with open(path, "r+b") as metrics:
            metrics.truncate(self.progress.metrics_bytes)  # drop lines logged after last.pt

    # -- checkpoints ---------------------------------------------------------------------
    def _checkpoint_state(self, shards: list[tuple[dict, Optional[dict]]]) -> dict:
        """last.pt's content; ``shards`` holds every rank's (RNG state, carried state)."""
        rngs = [rng for rng, _ in shards]
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "progress": asdict(self.progress),
            "carried_state": _join_columns([carried for _, carried in shards]),
            "rng": rngs if self.dist.enabled else rngs[0],  # data parallel: one per rank
            "world_size": self.dist.world_size,
            "config": recipe_to_dict(self.recipe),
            "vocab": list(self.corpus.vocab),
        }

    def _check_finite_weights(self) -> None:
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise self._diverged(f"the weight {name} holds NaN or infinite values after "
                                     f"step {self.progress.step}")

    def _update_wall_time(self) -> None:
        self.progress.wall_seconds = self._wall_before + time.monotonic() - self._run_start

    def _save_last(self) -> None:
        """Write last.pt (rank 0, with every rank's RNG and carried state gathered)."""
        self._check_finite_weights()  # never replace a good last.pt with a broken model
        self._update_wall_time()
        shards = distributed.gather_to_main(self.dist, (rng_state(), _state_to_plain(self.carried)))
        on_main(self.dist, lambda: self._write_last(shards))
        self._saved_step = self.progress.step
        self._last_save_time = time.monotonic()

    def _write_last(self, shards: list[tuple[dict, Optional[dict]]]) -> None:
        self.progress.metrics_bytes = self.tracker.metrics_bytes()
        save_checkpoint(self._checkpoint_state(shards), self.last_path)
        if self._config_pending:
            save_recipe(self.recipe, self.run_dir / "config.yaml")
            self._config_pending = False

    def _save_best(self) -> None:
        """Write best.pt (rank 0; the weights are the same on every rank)."""
        on_main(self.dist, self._write_best)

    def _write_best(self) -> None:
        with averaged_weights(self.model, self.optimizer):
            model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        state = {"model": model_state, "config": recipe_to_dict(self.recipe),
                 "vocab": list(self.corpus.vocab), "progress": asdict(self.progress)}
        save_checkpoint(state, self.best_path)

    def _check_last(self, state: dict) -> None:
        missing = [key for key in LAST_KEYS if key not in state]
        if not missing and not isinstance(state["config"], dict):
            missing = ["a config mapping"]
        if missing:
            raise CheckpointError(
                f"Checkpoint {self.last_path} lacks {', '.join(missing)}, so the run cannot be "
                "resumed from it (best.pt, for one, holds only the model). Restore the run's own "
                "last.pt, or start a new run under another train.run_name."
            )
        names = {f.name for f in fields(Progress)}
        if not isinstance(state["progress"], dict) or not set(state["progress"]) <= names:
            raise CheckpointError(f"Checkpoint {self.last_path} has an unknown progress record; "
                                  "it was written by another version of lm_flipout. Resume it "
                                  "with that version, or start a new run.")
        self._check_world_size(state)

    def _adopt_config(self, stored: dict) -> None:
        """Refuse a resume whose recipe changes the experiment; report allowed changes."""
        changed = changed_settings(stored, recipe_to_dict(self.recipe))
        fixed = [k for k in changed if k not in RESUME_MAY_CHANGE and not k.startswith("wandb.")]
        if fixed:
            shown = "; ".join(f"{k}: run {changed[k][0]!r}, now {changed[k][1]!r}"
                              for k in fixed[:6])
            more = f" (and {len(fixed) - 6} more)" if len(fixed) > 6 else ""
            raise TrainingError(
                f"--resume: the recipe differs from the one {self.last_path} was trained with in "
                f"settings a run cannot change midway: {shown}{more}. Resume with the run's own "
                f"settings (its {self.run_dir / 'config.yaml'}), or start a new run under another "
                "name with train.run_name=NAME. Only the training length, checkpoint/log "
                "intervals, device, paths, W&B settings, optim.lr and optim.clip may change."
            )
        for key, (before, now) in changed.items():
            self.echo(f"--resume: {key} changed from {before!r} to {now!r}.")
        self._old_lr = float(stored["optim"]["lr"])

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.schedule.load_state_dict(state["schedule"])
            if self.schedule.averaging:
                self.optimizer = build_optimizer(self.recipe.optim, self.model.parameters(),
                                                 averaging=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.progress = Progress(**state["progress"])
            self.carried = _state_from_plain(_own_columns(state["carried_state"], self.dist),
                                             self.model, self.device)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(
                f"Checkpoint {self.last_path} does not fit the model and optimizer its own config "
                f"describes ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}). "
                "It is damaged or was written by another version of lm_flipout; start a new run "
                "under another train.run_name."
            ) from None
        if self.recipe.optim.lr != self._old_lr:  # keep the schedule's cuts, rescale the base
            for group in self.optimizer.param_groups:
                group["lr"] *= self.recipe.optim.lr / self._old_lr
        self._saved_step = self.progress.step
        self.echo(f"Resuming {self.run_dir} at epoch {self.progress.epoch}, step "
                  f"{self.progress.step}.")

    # -- signals -------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop now, without saving
            raise Interrupted(signum, self.run_dir, saved=False)
        self._stop_signal = signum
        name = signal.Signals(signum).name
        self.echo(f"\n{name} received: finishing the current step and writing last.pt "
                  f"(send it again to stop at once).")

    def _stop_requested(self) -> Optional[int]:
        """The signal to stop for: this process's, or (data parallel) the one all ranks agreed
        on, so that they all stop after the same step."""
        return self._agreed_signal if self.dist.enabled else self._stop_signal

    def _stop_if_signalled(self) -> None:
        """At a point where last.pt is up to date: leave if a signal asked for it."""
        signum = self._stop_requested()
        if signum is not None:
            raise Interrupted(signum, self.run_dir)

    def _agree(self, nll: float = 0.0, tokens: int = 0) -> tuple[float, int]:
        """Data parallel, one all-reduce: the summed NLL and token count of the step, whether a
        rank received SIGINT or SIGTERM, and whether rank 0's clock asks for a checkpoint."""
        received = self._stop_signal
        nll, tokens, sigint, sigterm, due = sum_across_ranks(
            self.dist, nll, tokens, received == signal.SIGINT, received == signal.SIGTERM,
            self.dist.is_main and self._time_due())
        if sigterm or sigint:
            self._agreed_signal = signal.SIGTERM if sigterm else signal.SIGINT
        self._agreed_due = due > 0
        return nll, int(tokens)

    # -- training ------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end (or until stopped early), then write ``results.json``.

        Raises `Interrupted` after SIGINT/SIGTERM and TrainingError when the loss diverges;
        the W&B run is closed in every case.
        """
        in_main = threading.current_thread() is threading.main_thread()
        previous = ({s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                    if in_main else {})
        self._last_save_time = self._run_start = time.monotonic()
        self._wall_before = self.progress.wall_seconds
        exit_code = 1
        try:
            self.echo(f"Training on {self.device} with {self.model.num_parameters():,} parameters; "
                      f"run directory {self.run_dir}")
            while self._epochs_left():
                self._train_epoch()
                self._update_wall_time()
                self._end_epoch()
                if self.dist.enabled:
                    self._agree()
                self._stop_if_signalled()
            self._update_wall_time()
            results = self._final_results()
            exit_code = 0
        except Interrupted as stop:
            exit_code = 128 + stop.signum
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.tracker.finish(exit_code=exit_code)
        return results

    def _epochs_left(self) -> bool:
        cfg, progress = self.recipe.train, self.progress
        if progress.epoch > cfg.epochs:
            return False
        if cfg.early_stopping and progress.epochs_without_improvement >= cfg.early_stopping:
            return False
        # max_steps reached: stop once the epoch it was reached in has been closed (evaluated)
        return not (cfg.max_steps and progress.step >= cfg.max_steps and progress.position == 0)

    def _train_epoch(self) -> None:
        cfg, progress = self.recipe, self.progress
        batches = self.train_batches
        total = batches.num_batches(progress.epoch)
        bar = tqdm(batches.iterate(progress.epoch, progress.position), total=total,
                   initial=self._batches_before(progress.position), desc=f"epoch {progress.epoch}",
                   leave=False, dynamic_ncols=True, mininterval=1.0,
                   disable=None if self.dist.is_main else True)
        if progress.position == 0:
            self.carried = None
        try:
            for batch in bar:
                if cfg.train.max_steps and progress.step >= cfg.train.max_steps:
                    break
                step_start = time.monotonic()
                loss, tokens, grad_norm, lr = self._train_step(batch)
                step_seconds = time.monotonic() - step_start
                progress.train_seconds += step_seconds
                progress.log_seconds += step_seconds
                progress.train_tokens += tokens
                progress.epoch_nll += loss * tokens
                progress.epoch_tokens += tokens
                progress.step += 1
                progress.position = (batch.position + batch.inputs.shape[0]
                                     if batches.carries_state else batch.position + 1)
                progress.log_nll += loss * tokens
                progress.log_tokens += tokens
                if progress.step % cfg.train.log_every == 0:
                    mean = progress.log_nll / progress.log_tokens
                    speed = progress.log_tokens / max(progress.log_seconds, 1e-9)
                    self.tracker.log({"event": "train", "epoch": progress.epoch, "loss": mean,
                                      "ppl": math.exp(min(mean, 700)), "lr": lr,
                                      "grad_norm": grad_norm, "tokens_per_s": speed},
                                     progress.step)
                    bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 700)):.1f}",
                                    lr=f"{lr:.3g}", tok_s=f"{speed:,.0f}")
                    progress.log_nll, progress.log_tokens, progress.log_seconds = 0.0, 0, 0.0
                if self._stop_requested() is not None:
                    self._save_last()
                    self._stop_if_signalled()
                if self._checkpoint_due():
                    self._save_last()
        finally:
            bar.close()

    def _batches_before(self, position: int) -> int:
        if not self.train_batches.carries_state:
            return position
        return sum(1 for start, _ in self.train_batches.windows(self.progress.epoch)
                   if start < position)

    def _checkpoint_due(self) -> bool:
        cfg = self.recipe.train
        if cfg.checkpoint_every_steps and self.progress.step % cfg.checkpoint_every_steps == 0:
            return True
        return self._agreed_due if self.dist.enabled else self._time_due()

    def _time_due(self) -> bool:
        every = self.recipe.train.checkpoint_every_s
        return every > 0 and time.monotonic() - self._last_save_time >= every

    def _diverged(self, what: str) -> TrainingError:
        progress = self.progress
        if self._saved_step is None:
            kept = "No last.pt had been written yet"
        else:
            kept = f"The last good checkpoint {self.last_path} (from step {self._saved_step}) is kept"
        if self.best_path.exists():
            kept += f", and so is {self.best_path}"
        return TrainingError(
            f"Training diverged: {what} (epoch {progress.epoch}); the run stopped without saving "
            f"it. {kept}. Lower optim.lr, enable or tighten gradient clipping (optim.clip) or "
            "weaken the noise; optim.lr and optim.clip may be changed on --resume, other "
            "settings need a new run (train.run_name=NAME)."
        )

    def _train_step(self, batch) -> tuple[float, int, float, float]:
        optim = self.recipe.optim
        step_loss = self.step_loss.train()
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        state = self.carried if self.train_batches.carries_state else None
        loss, objective, state = step_loss(inputs, targets, state)
        self.carried = detach_state(state)
        value, tokens = loss.item(), targets.numel()
        if self.dist.enabled:  # the global batch's mean loss, the same on every rank
            nll, tokens = self._agree(value * tokens, tokens)
            value = nll / tokens
        step = self.progress.step + 1
        if not math.isfinite(value):
            raise self._diverged(f"the training loss became {value} at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()  # data parallel: DDP averages the gradients over the ranks here
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = optim.clip if optim.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
        if not math.isfinite(grad_norm):
            raise self._diverged(f"the gradient norm became {grad_norm} at step {step}")
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] *= batch.lr_scale
        try:
            self.optimizer.step()
        except RuntimeError as err:  # e.g. Adam's step size beyond the float range
            if "overflow" not in str(err):
                raise
            raise self._diverged(f"the optimizer step at step {step} overflowed "
                                 f"({str(err).strip().splitlines()[0]})") from None
        finally:
            for group, lr in zip(self.optimizer.param_groups, base_lrs):
                group["lr"] = lr
        return value, tokens, grad_norm, base_lrs[0]

    def _evaluate(self, split: str, mc_samples: int = 0) -> dict:
        nll, tokens = total_nll(self.model, self.eval_batches[split].iterate(),
                                self.eval_batches[split].carries_state, self.device, mc_samples)
        nll, tokens = sum_across_ranks(self.dist, nll, tokens)  # each rank scored its columns
        return split_metrics(nll, int(tokens), self.corpus.splits[split], split)

    def _end_epoch(self) -> None:
        progress = self.progress
        with averaged_weights(self.model, self.optimizer):
            metrics = self._evaluate("valid")
        if not math.isfinite(metrics["valid_loss"]):
            raise self._diverged(f"the validation loss became {metrics['valid_loss']} after step "
                                 f"{progress.step}")
        lr = self.optimizer.param_groups[0]["lr"]
        improved = metrics["valid_loss"] < progress.best_valid_loss
        if improved:
            progress.best_valid_loss, progress.best_epoch = metrics["valid_loss"], progress.epoch
            progress.epochs_without_improvement = 0
        else:
            progress.epochs_without_improvement += 1
        change = self.schedule.step(metrics["valid_loss"], self.optimizer)
        if change == "averaging":
            self.optimizer = build_optimizer(self.recipe.optim, self.model.parameters(),
                                             averaging=True)
        train_loss = progress.epoch_nll / max(progress.epoch_tokens, 1)
        speed = progress.train_tokens / max(progress.train_seconds, 1e-9)
        best_ppl = math.exp(min(progress.best_valid_loss, 700))
        self.tracker.log({"event": "valid", "epoch": progress.epoch, "lr": lr, **metrics},
                         progress.step)
        self.tracker.log({"event": "epoch", "epoch": progress.epoch, "train_loss": train_loss,
                          "train_ppl": math.exp(min(train_loss, 700)),
                          "valid_ppl": metrics["valid_ppl"], "best_valid_ppl": best_ppl,
                          "lr": lr, "tokens_per_s": speed, "wall_s": progress.wall_seconds},
                         progress.step)
        note = {"lr": f" | lr x{self.recipe.optim.plateau_factor:g}",
                "averaging": " | switched to averaged SGD"}.get(change or "", "")
        self.echo(f"epoch {progress.epoch:3d} | step {progress.step} | train ppl "
                  f"{math.exp(min(train_loss, 700)):.2f} | valid ppl {metrics['valid_ppl']:.2f} | "
                  f"bpc {metrics['valid_bpc']:.3f} | lr {lr:.3g} | {speed:,.0f} tok/s"
                  f"{' | best' if improved else ''}{note}")
        progress.epoch += 1
        progress.position = 0
        progress.epoch_nll, progress.epoch_tokens = 0.0, 0
        self.carried = None
        if improved:
            self._save_best()  # before last.pt: see the module docstring
        self._save_last()

    def _final_results(self) -> dict:
        on_main(self.dist, self._load_best)
        distributed.broadcast_module(self.dist, self.model)  # rank 0 read best.pt
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
            "processes": self.dist.world_size,
        })
        self.tracker.log({"event": "test", **results}, self.progress.step)
        self.tracker.summary({"best_valid_ppl": results["valid_ppl"], **results})
        if self.dist.is_main:
            with atomic_write(self.run_dir / RESULTS_FILE) as handle:
                handle.write(json.dumps(results, indent=2).encode() + b"\n")
        self.echo(f"done | valid ppl {results['valid_ppl']:.2f} | test ppl {results['test_ppl']:.2f}"
                  f" | test bpc {results['test_bpc']:.3f} | {self.run_dir / RESULTS_FILE}")
        return results

    def _load_best(self) -> None:
        """Load best.pt into the model (rank 0)."""
        if not self.best_path.exists():
            raise TrainingError(f"No best.pt in {self.run_dir}: no epoch finished, so there is "
                                "nothing to evaluate. Train for at least one epoch.")
        best = load_checkpoint(self.best_path, map_location=self.device)
        try:
            self.model.load_state_dict(best["model"])
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"{self.best_path} does not hold this run's model ({type(err).__name__}). It was "
                "replaced or damaged; start a new run under another train.run_name."
            ) from None
