"""What the study writes: the CSV of estimates, ``slopes.json``, the figure (one log-log panel
per gate block), the W&B run and the lines printed at the end."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...nn.noise import ESTIMATORS
from .statistics import GATES

LINE_STYLES = {"shared": ":", "flipout": "-", "independent": "--"}
COLORS = {"shared": "tab:red", "flipout": "tab:blue", "independent": "tab:green"}
CSV_FIELDS = ("estimator", "batch_size", "gate", "variance", "ci_low", "ci_high")


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per (estimator, batch size, gate)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in CSV_FIELDS})


def write_slopes(summary: dict[str, Any], settings: dict[str, Any], path: Path) -> None:
    """The run's settings and the `summarize` slopes and ratios, as JSON."""
    report = json.dumps({"settings": settings, **summary}, indent=2)
    path.write_text(report + "\n", encoding="utf-8")


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Log-log variance curves, one panel per gate block, with confidence bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimators = sorted({r["estimator"] for r in rows}, key=ESTIMATORS.index)
    figure, axes = plt.subplots(1, len(GATES), figsize=(13, 3.4), sharex=True)
    for axis, gate in zip(axes, GATES):
        for estimator in estimators:
            picked = sorted((r for r in rows if r["estimator"] == estimator and r["gate"] == gate),
                            key=lambda r: r["batch_size"])
            sizes = [r["batch_size"] for r in picked]
            axis.plot(sizes, [r["variance"] for r in picked], LINE_STYLES[estimator],
                      color=COLORS[estimator], label=estimator, linewidth=1.6)
            axis.fill_between(sizes, [r["ci_low"] for r in picked], [r["ci_high"] for r in picked],
                              color=COLORS[estimator], alpha=0.15, linewidth=0)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(f"{gate} gate block of $W_h$", fontsize=10)
        axis.set_xlabel("batch size")
        axis.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("gradient variance (per weight)")
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def log_to_wandb(out_dir: Path, mode: str, config: dict[str, Any], summary: dict[str, Any],
                 figure: Path) -> None:
    """Log the slopes and the figure as a W&B run (files under ``out_dir/wandb``)."""
    from ...config import WandbConfig
    from ...tracking import Tracker

    settings = WandbConfig(mode=mode, group="gradient_variance", name=out_dir.name)
    flat = {f"{kind}/{est}/{gate}": value for kind in ("slope", "slope_top")
            for est, gates in summary[kind].items() for gate, value in gates.items()}
    with Tracker(out_dir, {"variance": config}, settings) as tracker:
        tracker.log({"event": "variance", **flat}, step=0)
        tracker.summary(flat)
        if tracker.wandb_run is not None:
            import wandb

            tracker.wandb_run.log({"variance/figure": wandb.Image(str(figure)), "step": 0})


def print_summary(out: Path, summary: dict[str, Any]) -> None:
    """Where the outputs went and the fitted slope of every estimator and gate."""
    print(f"wrote {out / 'variance.csv'}, {out / 'variance.png'}, {out / 'slopes.json'}")
    for estimator, gates in summary["slope"].items():
        shown = ", ".join(f"{gate} {value:.3f}" for gate, value in gates.items())
        print(f"slope {estimator}: {shown}")
