"""A suite's Markdown report, built only from its run directories: with one run per row, a
table of each run's results.json beside the paper's numbers; over several seeds, each row's
mean ± sd and 95% interval, its paired difference to the baseline row, and the per-seed
values. Both end with how the report was made and the plot of validation perplexity."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write
from .comparison import METRICS, RowStats, baseline_label, compare, several_seeds
from .plot import plot_curves
from .rows import Row
from .statistics import Estimate
from .suite import PAPER_METRICS, Suite

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
    lines = _header(header)
    for row in rows:
        name = _link(row, link_from)
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


def _link(row: Row, link_from: Path) -> str:
    link = Path(os.path.relpath(Path(row.run.recipe_path).resolve(), link_from.resolve()))
    return f"[{row.run.label}]({link.as_posix()})"


def row_changes(suite: Suite, rows: list[Row], link_from: Path) -> list[str]:
    """Where the suite names a base recipe: per row, the settings in which it differs from
    that base (its regularizer, in a suite whose rows differ only in that)."""
    if suite.base is None:
        return []
    link = Path(os.path.relpath(Path(suite.base).resolve(), link_from.resolve())).as_posix()
    lines = [f"What each row changes relative to the suite's base recipe "
             f"[{Path(suite.base).name}]({link}):", ""]
    shown: set[str] = set()
    for row in rows:
        if row.run.label in shown:
            continue  # one line per row, not per seed
        shown.add(row.run.label)
        changes = ", ".join(f"`{key}={_show(value)}`" for key, value in row.run.changes.items())
        lines.append(f"- {row.run.label}: {changes or 'nothing (the base itself)'}")
    return lines


def _show(value: object) -> str:
    """A setting as it is written in a ``key=value`` override."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _mean_sd(metric: str, est: Estimate) -> str:
    show = FORMATS[metric]
    return show(est.mean) if est.sd is None else f"{show(est.mean)} ± {show(est.sd)}"


def _interval(metric: str, est: Estimate) -> str:
    show = FORMATS[metric]
    return "" if est.low is None else f"[{show(est.low)}, {show(est.high)}]"


def _shown_metrics(stats: list[RowStats], quoted: list[str]) -> list[str]:
    """Perplexity always; bits per character where a run reports it or the paper quotes it."""
    return [m for m in METRICS if m.endswith("_ppl") or m in quoted
            or any(m in row.estimates for row in stats)]


def seed_tables(suite: Suite, stats: list[RowStats], link_from: Path) -> list[str]:
    """Per row over its seeds, the paired differences to the baseline, the per-seed values."""
    quoted = [m for m in PAPER_METRICS if any(m in r.runs[0].run.paper for r in stats)]
    shown = _shown_metrics(stats, quoted)
    header = ["run", "seeds"]
    for metric in shown:
        header += [HEADERS[metric], f"{HEADERS[metric]} 95% CI"]
        header += [f"paper {HEADERS[metric]}"] if metric in quoted else []
    header += ["params", "tokens/s", "wall time (sum over seeds)"]
    lines = _header(header)
    for row in stats:
        done = [r.results for r in row.finished]
        cells = [_link(row.runs[0], link_from), f"{len(done)} of {len(row.runs)}"]
        for metric in shown:
            est = row.estimates.get(metric)
            cells += [_mean_sd(metric, est), _interval(metric, est)] if est else ["—", ""]
            if metric in quoted:
                paper = row.runs[0].run.paper.get(metric)
                cells.append(FORMATS[metric](paper) if paper is not None else "")
        speeds = [r["tokens_per_s"] for r in done if "tokens_per_s" in r]
        cells += [f"{done[0]['params']:,}" if done and "params" in done[0] else "—",
                  f"{sum(speeds) / len(speeds):,.0f}" if speeds else "—",
                  _wall(sum(r.get("wall_s", 0.0) for r in done)) if done else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    base = baseline_label(suite)
    lines += ["", f"Paired differences to {base} (row − {base} over the seeds both finished; "
              "lower is better). The 95% t interval of the mean difference and the paired t "
              "test's p are per comparison. " + _family_note(stats, shown, base), ""]
    lines += _header(["run", "metric", "seeds", "difference", "95% CI (per comparison)",
                      "p", "Holm p", "verdict"])
    for row in stats:
        for metric in shown if row.label != base else []:
            diff = row.differences.get(metric)
            if diff is None:
                lines.append(f"| {row.label} | {HEADERS[metric]} | 0 | — |  |  |  | no seed "
                             "finished in both rows |")
                continue
            est, show = diff.difference, FORMATS[metric]
            relative = (est.mean / diff.baseline_mean * 100) if diff.baseline_mean else 0.0
            signed = ("+" if est.mean >= 0 else "") + show(est.mean)
            lines.append(f"| {row.label} | {HEADERS[metric]} | {est.n} | {signed} "
                         f"({relative:+.1f}%) | {_interval(metric, est)} | {_p(diff.p_value)} | "
                         f"{_p(diff.holm_p)} | {diff.verdict} |")
    lines += ["", "Per seed:", ""]
    lines += _header(["run", "seed", "status", *(HEADERS[m] for m in shown), "tokens/s",
                      "wall time", "epochs (best)"])
    for row in stats:
        for run in row.runs:
            res = run.results or {}
            cells = [row.label, str(run.run.recipe.train.seed), run.status,
                     *(FORMATS[m](res[m]) if m in res else "—" for m in shown),
                     f"{res['tokens_per_s']:,.0f}" if "tokens_per_s" in res else "—",
                     _wall(res["wall_s"]) if "wall_s" in res else "—",
                     f"{res['epochs']} ({res['best_epoch']})" if "epochs" in res else "—"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _p(value: Optional[float]) -> str:
    return "" if value is None else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _family_note(stats: list[RowStats], shown: list[str], base: str) -> str:
    """How the verdicts control the error over the rows compared with the baseline."""
    family = max((sum(1 for row in stats if row.label != base and metric in row.differences
                      and row.differences[metric].p_value is not None) for metric in shown),
                 default=0)
    if family < 2:
        return ("A verdict of better or worse means the interval excludes zero (a single "
                "comparison per metric, so no correction applies).")
    return (f"A verdict of better or worse holds after Holm's correction over the {family} rows "
            "compared with the baseline for each metric (Holm p below 0.05: the chance of any "
            "false verdict among them is at most 5%); a difference whose interval alone "
            "excludes zero but whose Holm p does not is not resolved after correction.")


def _header(header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]


def markdown(suite: Suite, name: str, rows: list[Row], command: str, plot: Path,
             reports_dir: Path, tuning: Optional[list[str]] = None) -> str:
    """The report: description, table, how it was made, notes on unfinished runs, plot;
    ``tuning``: a tuned suite's section on its studies, after the tables."""
    lines = [f"# {name}", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    seeds = several_seeds(rows)
    if seeds:
        lines += seed_tables(suite, compare(suite, rows), reports_dir) + [""]
    else:
        lines += table(suite, rows, reports_dir) + [""]
    changes = row_changes(suite, rows, reports_dir)
    if changes:
        lines += changes + [""]
    if tuning:
        lines += tuning + [""]
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
    notes = [f"- {row.run.name}: {row.status}" + (f" (last.pt in {row.run.run_dir}; rerun the "
             "suite to resume it)" if row.status == "unfinished" else "") + "."
             for row in rows if row.status != "finished"]
    notes += [f"- {row.run.name} ran with settings that differ from its recipe now: "
              f"{', '.join(row.config_changes)}." for row in rows if row.config_changes]
    at_budget = [row.run.name for row in rows if _best_at_last_epoch(row.results or {})]
    if at_budget:
        notes.append("- Best at the last epoch of the budget, so still improving when it ended "
                     f"(a longer budget may do better): {', '.join(at_budget)}.")
    if notes:
        lines += ["Notes:", ""] + notes + [""]
    caption = "Validation perplexity per epoch"
    if seeds:
        caption += ": mean over the seeds that reached each epoch, band ± one standard deviation"
    lines += [f"![{caption}]({plot.name})", ""]
    return "\n".join(lines)


def _best_at_last_epoch(results: dict) -> bool:
    """Whether a finished run's best validation epoch was its last: early stopping never
    fired, the epoch budget (or a step limit) ended it."""
    return "best_epoch" in results and results.get("epochs") == results["best_epoch"]


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
    protocols = {row.run.name: _protocol(row.results) for row in rows if row.results}
    if not protocols:
        return ""
    if len(set(protocols.values())) == 1:
        return f"Evaluation protocol: {next(iter(protocols.values()))}."
    return "Evaluation protocols: " + "; ".join(f"{name}: {text}"
                                                for name, text in protocols.items()) + "."


def write_report(suite: Suite, name: str, rows: list[Row], command: str,
                 reports_dir: Path, tuning: Optional[list[str]] = None) -> tuple[Path, Path]:
    """Write ``<reports_dir>/<name>.md`` and ``<name>_valid_ppl.png``; returns both paths."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    report, plot = reports_dir / f"{name}.md", reports_dir / f"{name}_valid_ppl.png"
    plot_curves(name, compare(suite, rows), plot)
    with atomic_write(report) as handle:
        text = markdown(suite, name, rows, command, plot, reports_dir, tuning)
        handle.write(text.encode("utf-8"))
    return report, plot
