"""A suite's report, built only from its run directories: a Markdown table of each run's
results.json beside the paper's numbers, and a plot of validation perplexity per epoch
from each run's metrics.jsonl."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..atomic import atomic_write
from ..config import changed_settings, recipe_to_dict
from ..tracking import read_metrics
from ..training import RESUME_MAY_CHANGE
from .suite import PAPER_METRICS, PlannedRun, Suite

# Settings that may differ between a finished run and its recipe without changing the
# experiment: set from the corpus, naming where things are logged and stored, or those a
# resume accepts except the ones that decide how long and how fast the run trained.
_IGNORED_DIFFERENCES = ("model.vocab_size", "wandb.", *sorted(
    RESUME_MAY_CHANGE - {"train.epochs", "train.max_steps", "train.early_stopping", "optim.lr",
                         "optim.clip"}))


@dataclass
class Row:
    """What the report shows for one run."""

    run: PlannedRun
    status: str  # finished | unfinished | not started | failed
    results: Optional[dict] = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, valid ppl)
    config_changes: list[str] = field(default_factory=list)  # run's config vs the recipe now


def collect_rows(runs: list[PlannedRun], failed: frozenset = frozenset()) -> list[Row]:
    """Read each run's directory; ``failed`` holds labels whose training failed just now."""
    rows = []
    for run in runs:
        results = run.results()
        if results is not None:
            status = "finished"
        elif run.label in failed:
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
    changed = changed_settings(ran, recipe_to_dict(run.recipe))
    return [f"{k}={old!r} (recipe: {new!r})" for k, (old, new) in changed.items()
            if not k.startswith(_IGNORED_DIFFERENCES)]


# ----------------------------------------------------------------------------- Markdown


def _ppl(value: float) -> str:
    return f"{value:.2f}"


def _bpc(value: float) -> str:
    return f"{value:.3f}"


def _wall(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


FORMATS = {"valid_ppl": _ppl, "test_ppl": _ppl, "valid_bpc": _bpc, "test_bpc": _bpc}
HEADERS = {"valid_ppl": "valid ppl", "test_ppl": "test ppl", "valid_bpc": "valid bpc",
           "test_bpc": "test bpc"}


def table(suite: Suite, rows: list[Row], link_from: Path) -> list[str]:
    """The Markdown table: each metric that a run reports or the paper quotes (bits per
    character is absent where no run defines it), followed by the paper's where quoted."""
    quoted = [m for m in PAPER_METRICS if any(m in row.run.paper for row in rows)]
    shown = [m for m in PAPER_METRICS if m in quoted or any(m in (row.results or {})
                                                            for row in rows)]
    baseline = next((row for row in rows if row.run.label == suite.baseline), None)
    base_test = (baseline.results or {}).get("test_ppl") if baseline else None
    header = ["run"]
    for metric in shown:
        header.append(HEADERS[metric])
        if metric in quoted:
            header.append(f"paper {HEADERS[metric]}")
    if base_test is not None:
        header.append(f"test ppl vs {suite.baseline}")
    header += ["params", "tokens/s", "wall time", "epochs (best)"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        link = Path(os.path.relpath(Path(row.run.recipe_path).resolve(), link_from.resolve()))
        name = f"[{row.run.label}]({link.as_posix()})"
        if row.status != "finished":
            name += f" ({row.status})"
        res = row.results or {}
        cells = [name]
        for metric in shown:
            cells.append(FORMATS[metric](res[metric]) if metric in res else "—")
            if metric in quoted:
                paper = row.run.paper.get(metric)
                cells.append(FORMATS[metric](paper) if paper is not None else "")
        if base_test is not None:
            cells.append(f"{(res['test_ppl'] / base_test - 1) * 100:+.1f}%"
                         if "test_ppl" in res and row is not baseline else "")
        cells += [f"{res['params']:,}" if "params" in res else "—",
                  f"{res['tokens_per_s']:,.0f}" if "tokens_per_s" in res else "—",
                  _wall(res["wall_s"]) if "wall_s" in res else "—",
                  f"{res['epochs']} ({res['best_epoch']})" if "epochs" in res else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(suite: Suite, name: str, rows: list[Row], command: str, plot: Path,
             reports_dir: Path) -> str:
    """The report: description, table, how it was made, notes on unfinished runs, plot."""
    lines = [f"# {name}", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    lines += table(suite, rows, reports_dir) + [""]
    finished = [row.results for row in rows if row.results is not None]
    facts = [f"Generated by `{command}` from each run's results.json and metrics.jsonl; "
             f"W&B group `{suite.group}`."]
    if suite.paper_source:
        facts.append(f"Paper numbers: {suite.paper_source}.")
    if finished:
        devices = sorted({str(r.get("device", "unknown")) for r in finished})
        revisions = sorted({str(r.get("git_rev", "unknown")) for r in finished})
        total = sum(r.get("wall_s", 0.0) for r in finished)
        facts.append(f"{len(finished)} of {len(rows)} runs finished, {_wall(total)} of wall time "
                     f"in all, on {', '.join(devices)}, git {', '.join(revisions)}.")
    lines += [" ".join(facts), "",
              "Perplexity and bits per character are those of each run's best validation "
              "epoch (best.pt); tokens/s counts training tokens per second of training steps; "
              "wall time includes evaluation. " + protocol_note(rows), ""]
    notes = [f"- {row.run.label}: {row.status}" + (f" (last.pt in {row.run.run_dir}; rerun the "
             "suite to resume it)" if row.status == "unfinished" else "") + "."
             for row in rows if row.status != "finished"]
    notes += [f"- {row.run.label} ran with settings that differ from its recipe now: "
              f"{', '.join(row.config_changes)}." for row in rows if row.config_changes]
    if notes:
        lines += ["Notes:", ""] + notes + [""]
    lines += [f"![Validation perplexity per epoch]({plot.name})", ""]
    return "\n".join(lines)


def _protocol(results: dict) -> str:
    if "eval_carries_state" not in results:
        return ("not recorded (written before results.json recorded it: valid and test at "
                "data.eval_batch_size, the state reset every data.bptt tokens in sequences mode)")
    state = ("the state carried across the whole split" if results["eval_carries_state"] else
             "the state reset every data.bptt tokens")
    return (f"valid at batch size {results['valid_batch_size']}, test at batch size "
            f"{results['test_batch_size']}, {state}")


def protocol_note(rows: list[Row]) -> str:
    """How the finished runs' numbers were measured, in one sentence (per run where the runs
    differ)."""
    protocols = {row.run.label: _protocol(row.results) for row in rows if row.results}
    if not protocols:
        return ""
    if len(set(protocols.values())) == 1:
        return f"Evaluation protocol: {next(iter(protocols.values()))}."
    return "Evaluation protocols: " + "; ".join(f"{label}: {text}"
                                                for label, text in protocols.items()) + "."


# ----------------------------------------------------------------------------- plot


def plot_curves(name: str, rows: list[Row], path: Path) -> None:
    """Validation perplexity against epoch, one line per run, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for row in rows:
            if row.curve:
                epochs, ppl = zip(*row.curve)
                ax.plot(epochs, ppl, marker="o", markersize=3, label=row.run.label)
        if any(row.curve for row in rows):
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
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        with atomic_write(path) as handle:
            fig.savefig(handle, format="png")
    finally:
        plt.close(fig)


def write_report(suite: Suite, name: str, rows: list[Row], command: str,
                 reports_dir: Path) -> tuple[Path, Path]:
    """Write ``<reports_dir>/<name>.md`` and ``<name>_valid_ppl.png``; returns both paths."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    report, plot = reports_dir / f"{name}.md", reports_dir / f"{name}_valid_ppl.png"
    plot_curves(name, rows, plot)
    with atomic_write(report) as handle:
        handle.write(markdown(suite, name, rows, command, plot, reports_dir).encode("utf-8"))
    return report, plot
