"""The suite's W&B summary run: one run in the suite's group holding the comparison (a
``wandb.Table`` per row, one per seed) and the plot, so the dashboard shows the comparison
without opening every run. It is offline unless the runs' W&B mode says otherwise, and the
same run is continued each time the report is rebuilt."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from ..tracking import start_wandb
from .comparison import METRICS, RowStats, baseline_label, compare
from .rows import Row
from .suite import Suite


def log_summary(suite: Suite, name: str, rows: list[Row], plot: Path,
                reports_dir: Path) -> Optional[Path]:
    """Log the summary run with the W&B settings of the suite's first run (its mode,
    project, entity and dir, after the command line's overrides). Its files and id live in
    ``<reports_dir>/<name>_wandb``, which is returned; None when W&B is disabled."""
    settings = rows[0].run.recipe.wandb
    if settings.mode == "disabled":
        return None
    settings = dataclasses.replace(settings, group=suite.group, tags=["suite-summary"],
                                   name=f"{name} summary")
    stats = compare(suite, rows)
    config = {"suite": name, "description": suite.description, "paper_source":
              suite.paper_source, "baseline": baseline_label(suite),
              "rows": [row.label for row in stats]}
    run_dir = reports_dir / f"{name}_wandb"
    run = start_wandb(settings, run_dir, config, resume=True)
    import wandb  # start_wandb has imported it or said how to install it

    try:
        comparison_columns, comparison = comparison_table(stats)
        seed_columns, per_seed = seed_table(stats)
        run.log({"comparison": wandb.Table(columns=comparison_columns, data=comparison),
                 "per_seed": wandb.Table(columns=seed_columns, data=per_seed),
                 "valid_ppl_plot": wandb.Image(str(plot))})
    finally:
        run.finish()
    return run_dir


def _metrics(stats: list[RowStats]) -> list[str]:
    return [m for m in METRICS if any(m in row.estimates for row in stats)]


def comparison_table(stats: list[RowStats]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the comparison: per metric the mean, sd and 95% interval over
    seeds, the paired difference to the baseline with its interval, and the verdict."""
    metrics = _metrics(stats)
    columns = ["run", "seeds finished", "seeds planned"]
    for metric in metrics:
        columns += [f"{metric} {part}" for part in
                    ("mean", "sd", "ci low", "ci high", "paper", "diff", "diff ci low",
                     "diff ci high", "diff p", "diff holm p", "verdict")]
    data = []
    for row in stats:
        cells: list[Any] = [row.label, len(row.finished), len(row.runs)]
        for metric in metrics:
            est, diff = row.estimates.get(metric), row.differences.get(metric)
            d = diff.difference if diff else None
            cells += [est and est.mean, est and est.sd, est and est.low, est and est.high,
                      row.runs[0].run.paper.get(metric),
                      d and d.mean, d and d.low, d and d.high, diff and diff.p_value,
                      diff and diff.holm_p, diff.verdict if diff else ""]
        data.append(cells)
    return columns, data


def seed_table(stats: list[RowStats]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the per-seed values."""
    metrics = _metrics(stats)
    columns = ["run", "seed", "status", *metrics, "epochs", "best epoch", "wall s", "run dir"]
    data = []
    for row in stats:
        for run in row.runs:
            res = run.results or {}
            data.append([row.label, run.run.recipe.train.seed, run.status,
                         *(res.get(m) for m in metrics), res.get("epochs"),
                         res.get("best_epoch"), res.get("wall_s"), str(run.run.run_dir)])
    return columns, data
