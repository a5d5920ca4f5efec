"""The run directory ``<train.out_dir>/<train.run_name>`` and its rules.

It holds config.yaml, last.pt, best.pt, metrics.jsonl and, once the run has finished,
results.json. A fresh start refuses a directory that holds a run; ``--resume`` on a finished
run trains nothing (`AlreadyFinished`); a resume cuts metrics.jsonl back to what last.pt
knows about. While the final scoring runs, scores.partial.json keeps the splits scored so far,
so that a resume after a stop scores only the rest. Only rank 0 touches the directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_write
from ..config import Recipe, save_recipe
from ..errors import TrainingError
from ..tracking import METRICS_FILE, Tracker

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
PARTIAL_FILE = "scores.partial.json"
# The temporary files `atomic_write` leaves when killed while writing a run file.
_STALE_TEMPORARY = re.compile(
    r"\.(?:%s)\.[A-Za-z0-9_]+\.tmp" % "|".join(
        re.escape(name) for name in (LAST_FILE, BEST_FILE, RESULTS_FILE, CONFIG_FILE,
                                     PARTIAL_FILE)))


class AlreadyFinished(Exception):
    """``--resume`` on a run that has its results.json; nothing is trained."""

    def __init__(self, run_dir: Path, results: dict) -> None:
        super().__init__(str(run_dir))
        self.run_dir, self.results = run_dir, results

    def __reduce__(self):  # picklable, so that rank 0 can hand it to the other ranks
        return type(self), (self.run_dir, self.results)


class NullTracker:
    """Stands in for the Tracker on ranks other than 0, which log nothing."""

    wandb_where = None

    def log(self, metrics: dict, step: int) -> dict:
        return {}

    def metrics_bytes(self) -> int:
        return 0

    def summary(self, values: dict) -> dict:
        return {}

    def finish(self, exit_code: int = 0) -> None:
        pass


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


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Raise `AlreadyFinished` for a resume of a finished run, TrainingError for a fresh
    start in a directory that holds a run."""
    if resume:
        results = read_results(run_dir)
        if results is not None:
            raise AlreadyFinished(run_dir, results)
        return
    found = [name for name in (LAST_FILE, BEST_FILE, RESULTS_FILE) if (run_dir / name).exists()]
    if found:
        raise TrainingError(
            f"The run directory {run_dir} already holds a run ({', '.join(found)}). "
            "Nothing was changed. Continue it with --resume, or start a new run under another "
            "name with train.run_name=NAME (or train.out_dir=DIR)."
        )


def open_run_dir(run_dir: Path, recipe: Recipe, resumed: bool, metrics_bytes: int) -> Tracker:
    """Create the directory and (fresh runs) config.yaml; start metrics.jsonl afresh, or on
    a resume cut it to the ``metrics_bytes`` last.pt recorded; return the run's Tracker.

    A resume rewrites config.yaml only with its first checkpoint (`write_config`), so a
    resume that fails at once leaves the directory as it was."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resumed:
        write_config(run_dir, recipe)
    metrics = run_dir / METRICS_FILE
    if not resumed or not metrics.exists():
        metrics.write_text("")
    else:
        with open(metrics, "r+b") as handle:
            handle.truncate(metrics_bytes)  # drop lines logged after last.pt
    return Tracker(run_dir, recipe, resume=resumed)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of run files (``.last.pt.XXXX.tmp`` ...) that a killed
    write left in ``run_dir``; returns them. Call it only while holding the run's lock, as
    the files of a process still writing would look the same."""
    removed = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            if _STALE_TEMPORARY.fullmatch(path.name) and path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def read_partial_scores(run_dir: Path, key: dict[str, Any]) -> dict[str, dict]:
    """The splits scored by an earlier, stopped final scoring of the same training state
    (``key``), by split name; empty when there are none or they belong to another state."""
    try:
        saved = json.loads((run_dir / PARTIAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("key") != key:
        return {}
    scores = saved.get("scores")
    return dict(scores) if isinstance(scores, dict) else {}


def write_partial_scores(run_dir: Path, key: dict[str, Any], scores: dict[str, dict]) -> None:
    """Keep the splits scored so far (see `read_partial_scores`)."""
    with atomic_write(run_dir / PARTIAL_FILE) as handle:
        handle.write(json.dumps({"key": key, "scores": scores}).encode() + b"\n")


def write_config(run_dir: Path, recipe: Recipe) -> None:
    save_recipe(recipe, run_dir / CONFIG_FILE)


def strict_json(results: dict[str, Any]) -> str:
    """``results`` as strict JSON, a non-finite number (which JSON cannot hold) as null."""
    plain = {key: None if isinstance(value, float) and not math.isfinite(value) else value
             for key, value in results.items()}
    return json.dumps(plain, indent=2, allow_nan=False)


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    """results.json, which marks the run as finished, as `strict_json`."""
    with atomic_write(run_dir / RESULTS_FILE) as handle:
        handle.write(strict_json(results).encode() + b"\n")
