"""A suite's runs gathered into its rows: per row and metric the estimate over its finished
seeds and the paired difference to the baseline row, and per row the mean validation curve.
The Markdown report and the W&B summary run both show these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .rows import Row
from .statistics import Estimate, PairedDifference, corrected, estimate, paired_difference
from .suite import PAPER_METRICS, Suite

METRICS = PAPER_METRICS  # the results.json keys a report summarises (lower is better)


@dataclass
class RowStats:
    """One suite row over its seeds."""

    label: str
    runs: list[Row]  # one per seed, in the suite's seed order
    estimates: dict[str, Estimate] = field(default_factory=dict)  # metric -> over seeds
    differences: dict[str, PairedDifference] = field(default_factory=dict)  # vs baseline

    @property
    def finished(self) -> list[Row]:
        return [row for row in self.runs if row.results is not None]

    def values(self, metric: str) -> dict[Optional[int], float]:
        """The metric of each finished seed that reports it, by seed."""
        return {row.run.seed: row.results[metric] for row in self.finished
                if metric in row.results}

    def mean_curve(self) -> list[tuple[int, Estimate]]:
        """Validation perplexity per epoch over the seeds that reached that epoch."""
        by_epoch: dict[int, list[float]] = {}
        for row in self.runs:
            for epoch, ppl in row.curve:
                by_epoch.setdefault(epoch, []).append(ppl)
        return [(epoch, estimate(values)) for epoch, values in sorted(by_epoch.items())]


def several_seeds(rows: list[Row]) -> bool:
    """Whether some suite row has more than one run (the report then summarises seeds)."""
    labels = [row.run.label for row in rows]
    return len(set(labels)) < len(labels)


def baseline_label(suite: Suite) -> str:
    """The row the others are compared to: the suite's baseline, else its first row."""
    return suite.baseline or str(suite.runs[0].label)


def compare(suite: Suite, rows: list[Row]) -> list[RowStats]:
    """Group the runs by row (in suite order) and compute each row's estimates and its
    paired differences to the baseline row, whose verdicts hold after Holm's correction over
    the rows compared for each metric."""
    stats: dict[str, RowStats] = {}
    for row in rows:
        stats.setdefault(row.run.label, RowStats(row.run.label, [])).runs.append(row)
    base = stats.get(baseline_label(suite))
    for row_stats in stats.values():
        for metric in METRICS:
            values = row_stats.values(metric)
            if not values:
                continue
            row_stats.estimates[metric] = estimate(list(values.values()))
            if base is not None and row_stats is not base:
                difference = paired_difference(values, base.values(metric))
                if difference is not None:
                    row_stats.differences[metric] = difference
    for metric in METRICS:  # Holm's correction over the rows compared with the baseline
        compared = [row for row in stats.values() if metric in row.differences]
        for row, diff in zip(compared, corrected([r.differences[metric] for r in compared])):
            row.differences[metric] = diff
    return list(stats.values())
