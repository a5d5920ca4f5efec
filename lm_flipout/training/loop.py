"""The training loop: one `Trainer` per run directory.

Setup builds data, model and optimizer (from last.pt on ``--resume``: a resumed run repeats
an uninterrupted one exactly on CPU); each epoch trains, validates, steps the schedule and
saves; the end scores best.pt on both evaluation splits and writes results.json. A stop
signal during that scoring stops at once; a resume scores the splits that were left.

Checkpoints are written by `CheckpointWriting` (lm_flipout.training.saving).

Data parallel (``torchrun``, see `lm_flipout.training.distributed`): the step runs through
`StepLoss` wrapped in DistributedDataParallel, so gradients are averaged over the ranks
before clipping; rank 0 alone writes files.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from ..config import Recipe
from ..data import check_vocab, load_corpus, undefined_char_metrics_note
from ..data.batching import Batch
from ..errors import CheckpointError
from ..evaluation import split_metrics, total_nll
from ..model import LanguageModel
from ..nn import detach_state
from ..progress import shown_progress
from ..tracking import METRICS_FILE
from .batches import run_batches
from .checkpoint import CORRUPT_KEY
from .compilation import compile_for_training
from .distributed import (
    DistContext,
    broadcast_module,
    check_batch_sizes,
    init_process_group,
    main_first,
    on_main,
    rank_seed,
    sum_across_ranks,
)
from .environment import git_revision, seed_everything, select_device
from .objective import step_loss
from .optimizers import averaged_weights, build_optimizer, scaled_step
from .reporting import (
    eval_protocol,
    log_train,
    optimal_perplexities,
    report_epoch,
    report_results,
    results_line,
    run_facts,
)
from .resources import check_memory
from .resume import (
    adopt_config,
    check_data_unchanged,
    checked_last,
    restore_rng,
    restore_training,
)
from .run_dir import (
    BEST_FILE,
    LAST_FILE,
    PARTIAL_FILE,
    RESULTS_FILE,
    NullTracker,
    open_run_dir,
    read_partial_scores,
    remove_stale_temporaries,
    write_partial_scores,
    write_results,
)
from .run_lock import RunLock
from .saving import CheckpointWriting
from .schedules import Schedule
from .state import Progress, load_best_weights
from .stopping import Interrupted, StopControl, validation_divergence
from .threads import ThreadChoice, ThreadChooser, processes_sharing, scoring_step, training_step


class Trainer(CheckpointWriting):
    """Builds everything a recipe describes and trains it in ``run_dir``.

    ``dist`` places the process among torchrun's data-parallel processes (default: alone);
    every rank builds a Trainer with the same recipe, and only rank 0 touches ``run_dir``.
    ``on_epoch_end(epoch, metrics)``, called after each epoch's validation and save with the
    epoch's validation metrics, ends training early (as early stopping does) by returning
    True; a hyperparameter search prunes trials with it.
    Raises `AlreadyFinished` for ``resume`` on a finished run, TrainingError for a fresh
    start in a directory that holds a run, CheckpointError for an unusable last.pt (or one
    whose checksum does not match, unless ``allow_corrupt``: results.json is then marked
    ``"checkpoint_corrupt": true``).
    """

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False,
                 echo: Callable[[str], None] = print,
                 dist: Optional[DistContext] = None, allow_corrupt: bool = False,
                 on_epoch_end: Optional[Callable[[int, dict], bool]] = None) -> None:
        self.dist = dist or DistContext()
        self.allow_corrupt = allow_corrupt
        self.on_epoch_end = on_epoch_end
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.echo = echo if self.dist.is_main else (lambda message: None)
        self.last_path, self.best_path = self.run_dir / LAST_FILE, self.run_dir / BEST_FILE
        if self.dist.enabled:  # the process group first: rank 0 shares what it reads below
            check_batch_sizes(recipe.data.batch_size, recipe.data.eval_batch_size,
                              self.dist.world_size)
            init_process_group(self.dist, select_device(recipe.train.device, self.dist))
        self.lock = RunLock(self.run_dir)  # before anything is read or written there
        on_main(self.dist, self.lock.acquire)
        try:
            self._build(recipe, resume)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, recipe: Recipe, resume: bool) -> None:
        """Everything the recipe describes, built while holding the run's lock."""
        last = on_main(self.dist,  # fail before slow work
                       lambda: checked_last(self.run_dir, resume, self.dist.world_size,
                                            self.allow_corrupt))
        on_main(self.dist, lambda: remove_stale_temporaries(self.run_dir))  # we hold the lock
        self.git_rev = git_revision()  # the code this process runs, even if the tree changes
        self.device = select_device(recipe.train.device, self.dist)
        self.threads = ThreadChooser(recipe.train.threads, self.device,
                                     processes_sharing(self.dist.local_world_size))
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        self.corpus = main_first(self.dist, lambda: load_corpus(recipe.data))
        recipe.model.vocab_size = self.corpus.vocab_size
        if note := undefined_char_metrics_note(self.corpus):  # said once, at the start
            self.echo(note)
        if last is not None:
            check_vocab(self.corpus, last["vocab"], str(self.last_path))
            check_data_unchanged(last, self.corpus, self.last_path)
            adopt_config(last["config"], recipe, self.last_path, self.echo)
        check_memory(recipe, self.device)
        self.model = LanguageModel(recipe.model).to(self.device)
        data, ranks = recipe.data, self.dist.world_size
        self.compiled = compile_for_training(
            self.model, recipe.train.compile, self.device,
            (data.bptt, data.batch_size // ranks, data.eval_batch_size // ranks), self.echo)
        self.step_loss = step_loss(self.model, recipe.optim, self.dist, self.device)
        self.schedule = Schedule(recipe.optim)
        self.optimizer = build_optimizer(recipe.optim, self.model.parameters())
        self.progress, self.carried = Progress(), None
        self.train_batches, self.eval_batches = run_batches(recipe, self.corpus, self.dist)
        self.resumed = last is not None
        self._saved_step: Optional[int] = None  # step of the last.pt on disk
        if last is not None:
            self.optimizer, self.progress, self.carried = restore_training(
                last, recipe, self.model, self.schedule, self.dist, self.device, self.last_path)
            self._saved_step = self.progress.step
            self.progress.checkpoint_corrupt |= bool(last.get(CORRUPT_KEY))
            self.echo(f"Resuming {self.run_dir} at epoch {self.progress.epoch}, step "
                      f"{self.progress.step}.")
        elif resume:
            self.echo(f"--resume: no checkpoint in {self.run_dir} yet; starting the run from "
                      "the beginning.")
        self._config_pending = self.resumed  # a resume rewrites config.yaml with last.pt
        self.tracker: Any = NullTracker()
        on_main(self.dist, self._open_run_dir)
        if last is not None:
            self._restore_rng(last["rng"])  # last, so that nothing above draws from it
        elif self.dist.enabled:  # each rank its own noise; the weights are drawn already
            seed_everything(rank_seed(recipe.train.seed, self.dist.rank),
                            recipe.train.deterministic)
        self.stop = StopControl(recipe.train, self.dist, self.run_dir, self.echo)

    def _open_run_dir(self) -> None:
        with self._guarded(self.run_dir):
            self.tracker = open_run_dir(self.run_dir, self.recipe, self.resumed,
                                        self.progress.metrics_bytes)
        if self.tracker.wandb_where:
            self.echo(self.tracker.wandb_where)

    def _restore_rng(self, saved: Any) -> None:
        try:
            restore_rng(saved, self.dist, self.last_path)
        except CheckpointError:
            self.tracker.finish(exit_code=1)
            raise

    # -- training ------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end (or until stopped early), then write ``results.json``.

        Raises `Interrupted` after SIGINT/SIGTERM and TrainingError when the loss diverges;
        the W&B run is closed in every case.
        """
        exit_code, threads_before = 1, torch.get_num_threads()
        failed = True  # an error is on its way out: a second one must not replace it
        try:
            with self.stop.catching_signals(), self._guarded(self.run_dir):
                self._run_start, self._wall_before = time.monotonic(), self.progress.wall_seconds
                self.echo(f"Training on {self.device} with {self.model.num_parameters():,} "
                          f"parameters; run directory {self.run_dir}")
                if self.threads.fixed is not None:
                    self.echo(self.threads.fixed.line("every step"))
                while self._epochs_left():
                    self._use_threads("training")  # timed again at an epoch's start if aged
                    self._train_epoch()
                    self._update_wall_time()
                    metrics = self._end_epoch()
                    if self.dist.enabled:
                        self.stop.agree()
                    self.stop.stop_if_requested()
                    if self.on_epoch_end and self.on_epoch_end(self.progress.epoch - 1, metrics):
                        break
                self._update_wall_time()
                results = self._final_results()
            exit_code, failed = 0, False
        except Interrupted as stop:
            exit_code = 128 + stop.signum
            raise
        finally:
            try:
                torch.set_num_threads(threads_before)  # the process's own count again
                self._finish_tracker(exit_code, failed)
            finally:
                self.lock.release()
        return results

    def _finish_tracker(self, exit_code: int, failed: bool) -> None:
        """Close metrics.jsonl and W&B. Closing flushes, so on a full disk it fails again:
        after an error that is already reported, that second failure is dropped; otherwise it
        is a RunWriteError like any failed write."""
        try:
            with self._guarded(self.run_dir / METRICS_FILE):
                self.tracker.finish(exit_code=exit_code)
        except Exception:
            if not failed:
                raise

    def _epochs_left(self) -> bool:
        cfg, progress = self.recipe.train, self.progress
        if progress.epoch > cfg.epochs:
            return False
        if cfg.early_stopping and progress.epochs_without_improvement >= cfg.early_stopping:
            return False
        # max_steps reached: stop once the epoch it was reached in has been closed (evaluated)
        return not (cfg.max_steps and progress.step >= cfg.max_steps and progress.position == 0)

    def _train_epoch(self) -> None:
        cfg, progress, batches = self.recipe.train, self.progress, self.train_batches
        done = (progress.position if not batches.carries_state else
                sum(1 for start, _ in batches.windows(progress.epoch) if start < progress.position))
        bar = tqdm(batches.iterate(progress.epoch, progress.position),
                   total=batches.num_batches(progress.epoch), initial=done,
                   desc=f"epoch {progress.epoch}", leave=False, dynamic_ncols=True,
                   mininterval=1.0, disable=None if self.dist.is_main else True)
        if progress.position == 0:
            self.carried = None
        try:
            for batch in bar:
                if cfg.max_steps and progress.step >= cfg.max_steps:
                    break
                started = time.monotonic()
                loss, tokens, grad_norm, lr = self._train_step(batch)
                position = (batch.position + batch.inputs.shape[0] if batches.carries_state
                            else batch.position + 1)
                seconds = time.monotonic() - started
                progress.count_step(loss, tokens, seconds, position)
                if self.threads.drifted(seconds):
                    self._use_threads("training")
                if progress.step % cfg.log_every == 0:
                    bar.set_postfix(**log_train(self.tracker, progress, lr, grad_norm))
                if self.stop.requested() is not None:
                    self._save_last()
                    self.stop.stop_if_requested()
                if self.stop.checkpoint_due(progress.step):
                    self._save_last()
        finally:
            bar.close()

    def _train_step(self, batch: Batch) -> tuple[float, int, float, float]:
        """One optimizer step; returns the window's mean loss, its token count, the gradient
        norm before clipping and the base learning rate."""
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        state = self.carried if self.train_batches.carries_state else None
        loss, objective, state = self.step_loss.train()(inputs, targets, state)
        self.carried = detach_state(state)
        value, tokens = loss.item(), targets.numel()
        if self.dist.enabled:  # the global batch's mean loss, the same on every rank
            nll, tokens = self.stop.agree(value * tokens, tokens)
            value = nll / tokens
        step = self.progress.step + 1
        if not math.isfinite(value):
            raise self._diverged(f"the training loss became {value} at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()  # data parallel: DDP averages the gradients over the ranks here
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.recipe.optim.clip if self.recipe.optim.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
        if not math.isfinite(grad_norm):
            raise self._diverged(f"the gradient norm became {grad_norm} at step {step}")
        try:
            lr = scaled_step(self.optimizer, batch.lr_scale)
        except RuntimeError as err:  # e.g. Adam's step size beyond the float range
            if "overflow" not in str(err):
                raise
            raise self._diverged(f"the optimizer step at step {step} overflowed "
                                 f"({str(err).strip().splitlines()[0]})") from None
        return value, tokens, grad_norm, lr

    def _update_wall_time(self) -> None:
        self.progress.wall_seconds = self._wall_before + time.monotonic() - self._run_start

    # -- threads -------------------------------------------------------------------------
    def _use_threads(self, work: str) -> None:
        """Set the thread count for "training", "valid" or "test" (see `ThreadChooser`),
        timing the work's own steps at the run's batch shape when a choice is due."""
        data, ranks = self.recipe.data, self.dist.world_size
        if work == "training":
            step = training_step(self.model, data.bptt, data.batch_size // ranks, self.device)
        else:  # each rank scores its columns of valid; test is scored whole
            batch = data.test_batch_size if work == "test" else data.eval_batch_size // ranks
            step = scoring_step(self.model, data.bptt, batch, self.device)
        self.threads.use(work, step, self._report_threads)

    def _report_threads(self, work: str, choice: ThreadChoice,
                        previous: Optional[ThreadChoice]) -> None:
        """Log every timed choice; print it when it is the first or the count changed."""
        self.tracker.log({"event": "threads", "work": work, **choice.as_dict()},
                         self.progress.step)
        if previous is None or previous.threads != choice.threads:
            self.echo(choice.line(work))

    # -- evaluation ----------------------------------------------------------------------
    def _evaluate(self, split: str, mc_samples: int = 0) -> dict:
        """The split's metrics, with the seconds its scoring took (``<split>_s``)."""
        self._use_threads(split)
        batches = self.eval_batches[split]
        started = time.monotonic()
        shown = shown_progress(batches.iterate(), batches.num_batches(), f"scoring {split}",
                               enabled=self.dist.is_main)
        nll, tokens = total_nll(self.model, shown, batches.carries_state, self.device,
                                mc_samples)
        if split != "test":  # each rank scored its columns; the test split is scored whole
            nll, tokens = sum_across_ranks(self.dist, nll, tokens)
        metrics = split_metrics(nll, int(tokens), self.corpus.splits[split], split)
        return {**metrics, f"{split}_s": time.monotonic() - started}

    def _end_epoch(self) -> dict:
        """Validate (NT-ASGD: with the averaged weights), step the schedule, log and save;
        returns the validation metrics."""
        progress = self.progress
        with averaged_weights(self.model, self.optimizer):
            metrics = self._evaluate("valid")
        progress.valid_seconds += metrics["valid_s"]
        problem = validation_divergence(metrics["valid_loss"], self.corpus.vocab_size)
        if problem:
            raise self._diverged(f"{problem} after step {progress.step}")
        lr = self.optimizer.param_groups[0]["lr"]
        improved = progress.record_validation(metrics["valid_loss"])
        change = self.schedule.step(metrics["valid_loss"], self.optimizer)
        if change == "averaging":
            self.optimizer = build_optimizer(self.recipe.optim, self.model.parameters(),
                                             averaging=True)
        report_epoch(self.tracker, self.echo, self.recipe, progress, metrics, lr, change, improved)
        progress.next_epoch()
        self.carried = None
        if improved:
            self._save_best()  # before last.pt: see the module docstring
        self._save_last()
        return metrics

    def _final_results(self) -> dict:
        """Score best.pt on both evaluation splits; write and return results.json's content.

        A signal stops the scoring at once; each split's scores are kept as soon as they are
        known (scores.partial.json), so that a resume scores only the splits left."""
        corrupt = on_main(self.dist, lambda: load_best_weights(
            self.model, self.best_path, self.device, self.allow_corrupt))
        broadcast_module(self.dist, self.model)  # rank 0 read best.pt
        key = {"step": self.progress.step, "best_epoch": self.progress.best_epoch}
        # data parallel every rank scores every split (collectives), so nothing is reused
        scored = {} if self.dist.enabled else read_partial_scores(self.run_dir, key)
        results: dict = {}
        with self.stop.stopping_at_once():
            for split in ("valid", "test"):
                if split not in scored:
                    scored[split] = self._evaluate(split)
                    on_main(self.dist, lambda: write_partial_scores(self.run_dir, key, scored))
                results.update(scored[split])
                self.echo(f"scored {split} with best.pt in {results[f'{split}_s']:.1f} s")
        self.progress.valid_seconds += results["valid_s"]
        results["valid_s"] = self.progress.valid_seconds  # every epoch's validation too
        self._update_wall_time()  # the whole run, its final scoring included
        if self.corpus.tokenizer == "word":
            results = {k: v for k, v in results.items() if not k.endswith("_word_ppl")}
        results.update(optimal_perplexities(self.recipe))
        results.update(eval_protocol(self.recipe.data))
        results.update(run_facts(self.progress, self.model.num_parameters(), self.device,
                                 self.dist.world_size, self.git_rev))
        if corrupt or self.progress.checkpoint_corrupt:
            results["checkpoint_corrupt"] = True
        results["threads"] = self.threads.summary()
        results.update(self.compiled.facts())
        report_results(self.tracker, self.progress, results)
        if self.dist.is_main:
            with self._guarded(self.run_dir / RESULTS_FILE):
                write_results(self.run_dir, results)
                (self.run_dir / PARTIAL_FILE).unlink(missing_ok=True)
        self.echo(results_line(results, self.run_dir / RESULTS_FILE))
        return results
