"""What training tells the user: the events of metrics.jsonl and W&B ("train", "valid",
"epoch", "test"), the console line of each epoch, and the run facts in results.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..config import Recipe
from ..data import DataConfig
from ..data.synthetic_source import ensure_synthetic_corpus
from .state import Progress


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700))


def log_train(tracker: Any, progress: Progress, lr: float, grad_norm: float) -> dict[str, str]:
    """Log the training loss since the last "train" event; returns the progress bar's fields."""
    mean, speed = progress.take_log_window()
    tracker.log({"event": "train", "epoch": progress.epoch, "loss": mean, "ppl": _ppl(mean),
                 "lr": lr, "grad_norm": grad_norm, "tokens_per_s": speed}, progress.step)
    return {"loss": f"{mean:.3f}", "ppl": f"{_ppl(mean):.1f}", "lr": f"{lr:.3g}",
            "tok_s": f"{speed:,.0f}"}


def report_epoch(tracker: Any, echo: Callable[[str], None], recipe: Recipe,
                 progress: Progress, metrics: dict[str, float], lr: float,
                 change: Optional[str], improved: bool) -> None:
    """Log the "valid" and "epoch" events of the epoch in progress and print its line;
    ``change`` is what the schedule did ("lr", "averaging" or None)."""
    train_ppl, speed = _ppl(progress.train_loss), progress.tokens_per_second
    tracker.log({"event": "valid", "epoch": progress.epoch, "lr": lr, **metrics}, progress.step)
    tracker.log({"event": "epoch", "epoch": progress.epoch, "train_loss": progress.train_loss,
                 "train_ppl": train_ppl, "valid_ppl": metrics["valid_ppl"],
                 "best_valid_ppl": _ppl(progress.best_valid_loss), "lr": lr,
                 "tokens_per_s": speed, "wall_s": progress.wall_seconds}, progress.step)
    note = {"lr": f" | lr x{recipe.optim.plateau_factor:g}",
            "averaging": " | switched to averaged SGD"}.get(change or "", "")
    bpc = f" | bpc {metrics['valid_bpc']:.3f}" if "valid_bpc" in metrics else ""
    scored = f" | scored in {metrics['valid_s']:.1f} s" if "valid_s" in metrics else ""
    echo(f"epoch {progress.epoch:3d} | step {progress.step} | train ppl {train_ppl:.2f} | "
         f"valid ppl {metrics['valid_ppl']:.2f}{bpc}{scored} | "
         f"lr {lr:.3g} | {speed:,.0f} tok/s{' | best' if improved else ''}{note}")


def report_results(tracker: Any, progress: Progress, results: dict[str, Any]) -> None:
    """Log the final "test" event and set the W&B run summary."""
    tracker.log({"event": "test", **results}, progress.step)
    tracker.summary({"best_valid_ppl": results["valid_ppl"], **results})


def results_line(results: dict[str, Any], path: Path) -> str:
    """The console's last line: the final scores (bits per character where defined, the
    corpus's optimum for the synthetic corpus) and where results.json is."""
    bpc = f" | test bpc {results['test_bpc']:.3f}" if "test_bpc" in results else ""
    optimum = (f" | optimal test ppl {results['optimal_test_ppl']:.2f}"
               if "optimal_test_ppl" in results else "")
    return (f"done | valid ppl {results['valid_ppl']:.2f} | test ppl {results['test_ppl']:.2f} "
            f"(batch {results['test_batch_size']}){bpc}{optimum} | {path}")


def run_facts(progress: Progress, params: int, device: torch.device,
              processes: int, git_rev: str) -> dict[str, Any]:
    """How the run went, for results.json next to its scores; ``git_rev`` is the revision the
    finishing process started from (a resume records its own). ``train_s`` is the time spent
    in training steps, ``wall_s`` the whole run's, over all its processes' lifetimes."""
    return {
        "params": params,
        "tokens_per_s": progress.tokens_per_second,
        "train_s": progress.train_seconds,
        "wall_s": progress.wall_seconds,
        "git_rev": git_rev,
        "epochs": progress.epoch - 1,
        "best_epoch": progress.best_epoch,
        "steps": progress.step,
        "device": str(device),
        "processes": processes,
    }


def eval_protocol(data: DataConfig) -> dict[str, Any]:
    """How results.json's valid and test scores were measured: batch sizes, and whether the
    state was carried across the whole split (else reset every data.bptt tokens)."""
    return {"eval_carries_state": data.eval_protocol == "carry",
            "valid_batch_size": data.eval_batch_size, "test_batch_size": data.test_batch_size}


def optimal_perplexities(recipe: Recipe) -> dict[str, float]:
    """For the synthetic corpus, the Bayes-optimal perplexity of each evaluation split (the
    floor no model can beat); nothing for other corpora."""
    if recipe.data.source != "synthetic":
        return {}
    optimal = ensure_synthetic_corpus(recipe.data)["splits"]
    return {"optimal_valid_ppl": optimal["valid"]["optimal_perplexity"],
            "optimal_test_ppl": optimal["test"]["optimal_perplexity"]}
