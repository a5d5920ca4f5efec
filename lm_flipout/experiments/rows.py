"""What a suite's report reads from each run directory: results.json, the validation curve
from metrics.jsonl, and the settings in which the run's config.yaml differs from its recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..config import changed_settings, recipe_to_dict, with_defaults
from ..tracking import read_metrics
from ..training import RESUME_MAY_CHANGE
from .suite import PlannedRun

# Settings that may differ between a finished run and its recipe without changing the
# experiment: set from the corpus, naming where things are logged and stored, or those a
# resume accepts except the ones that decide how long and how fast the run trained.
_IGNORED_DIFFERENCES = ("model.vocab_size", "wandb.", *sorted(
    RESUME_MAY_CHANGE - {"train.epochs", "train.max_steps", "train.early_stopping", "optim.lr",
                         "optim.clip"}))


@dataclass
class Row:
    """What the report shows for one run (one seed of a suite row)."""

    run: PlannedRun
    status: str  # finished | unfinished | not started | failed
    results: Optional[dict] = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, valid ppl)
    config_changes: list[str] = field(default_factory=list)  # run's config vs the recipe now


def collect_rows(runs: list[PlannedRun], failed: frozenset = frozenset()) -> list[Row]:
    """Read each run's directory; ``failed`` holds the names of runs whose training failed
    just now."""
    rows = []
    for run in runs:
        results = run.results()
        if results is not None:  # a non-finite number is stored as null: shown as missing
            results = {key: value for key, value in results.items() if value is not None}
            status = "finished"
        elif run.name in failed:
            status = "failed"
        else:
            status = "unfinished" if run.started else "not started"
        rows.append(Row(run, status, results, _valid_curve(run.run_dir),
                        config_changes(run) if results is not None else []))
    return rows


def _valid_curve(run_dir: Path) -> list[tuple[int, float]]:
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    by_epoch = {event["epoch"]: event["valid_ppl"] for event in read_metrics(run_dir)
                if event.get("event") == "valid" and "valid_ppl" in event}
    return sorted(by_epoch.items())


def config_changes(run: PlannedRun) -> list[str]:
    """Settings in which the run's own config.yaml differs from its recipe as resolved now,
    e.g. a run finished with train.epochs=1 that the suite would otherwise take as final."""
    path = run.run_dir / "config.yaml"
    if not path.is_file():
        return []
    ran = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    changed = changed_settings(with_defaults(ran), recipe_to_dict(run.recipe))
    return [f"{k}={old!r} (recipe: {new!r})" for k, (old, new) in changed.items()
            if not k.startswith(_IGNORED_DIFFERENCES)]
