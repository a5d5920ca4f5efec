"""A suite's plot: validation perplexity against epoch, one line per row (the mean over its
seeds) with a band of ± one standard deviation where two or more seeds reached the epoch."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write
from .comparison import RowStats


def plot_curves(name: str, rows: list[RowStats], path: Path) -> None:
    """Write the plot to ``path`` as PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        curves = [(row.label, row.mean_curve()) for row in rows]
        banded = False
        for label, curve in curves:
            if not curve:
                continue
            epochs = [epoch for epoch, _ in curve]
            means = [est.mean for _, est in curve]
            (line,) = ax.plot(epochs, means, marker="o", markersize=3, label=label)
            spread = [(epoch, est) for epoch, est in curve if est.sd is not None]
            if spread:
                banded = True
                ax.fill_between([epoch for epoch, _ in spread],
                                [est.mean - est.sd for _, est in spread],
                                [est.mean + est.sd for _, est in spread],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        if any(curve for _, curve in curves):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no finished epochs yet", ha="center", va="center",
                    transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation perplexity (per token)")
        ax.set_title(f"{name}: mean over seeds, band ± one sd" if banded else name)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        with atomic_write(path) as handle:
            fig.savefig(handle, format="png")
    finally:
        plt.close(fig)
