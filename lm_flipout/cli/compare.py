"""``lm-flipout compare SUITE [key=value ...]``: train every run of a comparison suite that
has not finished, then write its report."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, UserError
from ..experiments.compare import train_unfinished
from ..experiments.report import write_report
from ..experiments.rows import collect_rows
from ..experiments.suite import PlannedRun, Suite, check_seeds, load_suite, plan_runs
from ..experiments.summary import log_summary
from . import fail, parse_in_any_order

PROG = "lm-flipout compare"

EPILOG = """A suite file (recipes/suites/*.yaml) names a W&B group and lists recipes, each with an
optional row label and the paper's numbers:

  group: ptb_word_cpu
  base: ../ptb/word_cpu.yaml  # optional: rows build on it; the report lists what each changes
  baseline: unregularized
  runs:
    - recipe: ../ptb/word_cpu_unregularized.yaml   # relative to the suite file
      label: unregularized
      paper: {valid_ppl: 132.23, test_ppl: 128.97}
    - label: WD p=0.3         # no recipe: the base, with these dotted keys set
      overrides: {model.noise: {family: dropconnect, p: 0.3}}
  seeds: [1, 2, 3]          # optional, suite-wide; a row may list its own; --seeds overrides both

Each run trains in the directory `lm-flipout train` would use (<train.out_dir>/<train.run_name>,
by default checkpoints/<recipe name>; for a row with overrides, <recipe name>-<label>); with
seeds, each (row, seed k) is its own run with train.seed=k in that directory + "-seed<k>", its
W&B run tagged seed:<k>. A row's overrides apply before those given here. A run with
results.json is finished and skipped; one that another process is training (its run.lock) is
skipped too, so two compare processes on one suite share its runs (on a CPU, their runs divide
the cores between them: see train.threads); one with last.pt is resumed;
the others start. Every run gets wandb.group=<the suite's group>, then the
overrides given here. A run that fails is reported and the others still run; Ctrl-C stops the
suite after the current run has saved last.pt, and the same command later resumes it. Options
and key=value overrides may come in any order.

A tuned suite (a tune: section with trials, the shared space and optionally pruner, sampler,
seed and trial_overrides; each row may add its own keys under space:) first completes each
row's study, the one `lm-flipout tune` would run for the row (<run name>-tune/, resumed when
it exists), then trains each row's best parameters with the seeds in <run name>-best[-seed<k>];
the report adds each row's search.

The report is <reports-dir>/<suite name>.md (valid/test perplexity and bits per character,
parameters, tokens/s, wall time, beside the paper's numbers) and <suite name>_valid_ppl.png
(validation perplexity per epoch), built from the runs' results.json and metrics.jsonl only.
Over several seeds it gives each row's mean ± standard deviation and 95% t interval, the
paired difference to the baseline row over matching seeds with a verdict (better, worse, not
resolved), the per-seed values, and mean curves with bands. Unless W&B is disabled, the
report's tables and plot are also logged as one summary run in the suite's W&B group.

examples:
  {prog} recipes/suites/ptb_word_cpu.yaml
  {prog} recipes/suites/ptb_word_medium.yaml train.device=cuda:1
  {prog} recipes/suites/ptb_char_cpu.yaml --seeds 1,2,3
  {prog} recipes/suites/ptb_word_cpu.yaml --report-only
  {prog} recipes/suites/ptb_word_cpu_tuned.yaml
  {prog} recipes/suites/ptb_word_cpu.yaml --report-only --baseline 'Gaussian shared'"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the compare command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train every run of a comparison suite that has not finished, then write "
                    "its Markdown report and validation-perplexity plot.",
        epilog=EPILOG.replace("{prog}", prog),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="path of the suite YAML file (see recipes/suites/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted recipe overrides applied to every run, e.g. train.device=cpu")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; rebuild the report from the run directories")
    parser.add_argument("--seeds", type=seed_list, metavar="K,K,...",
                        help="train every row once per seed, e.g. 1,2,3 (replaces the suite's "
                             "and its rows' seeds: lists)")
    parser.add_argument("--reports-dir", default="reports", metavar="DIR",
                        help="where the report and plot go (default: reports)")
    parser.add_argument("--baseline", metavar="LABEL",
                        help="pair the differences against this row instead of the suite's "
                             "baseline; the report is then <suite>-vs-<label>.md")
    return parser


def seed_list(text: str) -> list[int]:
    """``--seeds 1,2,3`` as a list of ints (checked like a suite's seeds: list)."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 1,2,3") from None
    try:
        check_seeds(seeds, "--seeds")
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return seeds


def choose_baseline(suite: Suite, label: str) -> str:
    """Make the row labelled ``label`` the suite's baseline; returns the label as a file-name
    part. ConfigError when no row has that label."""
    labels = [str(run.label) for run in suite.runs]
    if label not in labels:
        raise ConfigError(f"--baseline {label!r} is not the label of one of the suite's rows: "
                          f"{', '.join(repr(known) for known in labels)}. Quote it as listed.")
    suite.baseline = label
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "baseline"


def tune_rows(suite: Suite, args: argparse.Namespace, recipe_paths: list[str],
              command: str) -> tuple[Optional[int], list[PlannedRun], tuple[list[str], set[str]]]:
    """A tuned suite: check every row's space, complete each row's study (unless
    ``--report-only``), and plan the rows' runs at their best parameters. Returns an exit
    status if the user stopped it, the runs, the report's tuning section and the labels of
    the rows whose studies are complete (the others' runs wait for them)."""
    from ..experiments.tuned_suite import plan_studies, read_studies, run_studies, tuning_lines

    assert suite.tune is not None
    studies = plan_studies(suite, args.suite, recipe_paths, args.overrides)
    if not args.report_only:
        try:
            import optuna  # noqa: F401 - checked before anything trains
        except ImportError:
            raise UserError("A tuned suite needs Optuna, which is not installed. Install it "
                            "with `pip install optuna` (or `pip install -e .[tune]`).") from None
        from tqdm import tqdm

        from ..training import Interrupted

        try:
            run_studies(studies, suite.tune.trials, command, echo=tqdm.write)
        except Interrupted as stop:
            print(f"\nStopped; the trial's last.pt is kept. Continue with:\n  {command}",
                  file=sys.stderr)
            return 128 + stop.signum, [], ([], set())
        except KeyboardInterrupt:
            print(f"\nInterrupted. Continue with:\n  {command}", file=sys.stderr)
            return 130, [], ([], set())
    best = read_studies(studies, suite.tune.trials)
    waiting = [row.label for row in studies if row.label not in best]
    if waiting and not args.report_only:
        print(f"The studies of {', '.join(waiting)} are not complete (other processes are "
              "training their trials, or every trial was pruned); their seeds train once they "
              "are: run the same command again.", file=sys.stderr)
    runs = plan_runs(suite, recipe_paths, args.overrides, args.seeds, best)
    return None, runs, (tuning_lines(suite.tune, studies), set(best))


def parse_args(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The command line, options and overrides in any order."""
    return parse_in_any_order(build_parser(prog), argv)


def main(argv: Sequence[str], prog: str = PROG) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv, prog)
    name = Path(args.suite).stem
    # the command that trains what the report shows (--report-only rebuilds the same report)
    seeds = ["--seeds", ",".join(map(str, args.seeds))] if args.seeds else []
    baseline = ["--baseline", args.baseline] if args.baseline else []
    command = shlex.join([*shlex.split(prog), args.suite, *args.overrides, *seeds, *baseline])
    try:
        suite, recipe_paths = load_suite(args.suite)
        if args.baseline:
            name = f"{name}-vs-{choose_baseline(suite, args.baseline)}"
        runs = plan_runs(suite, recipe_paths, args.overrides, args.seeds)
        tuning = None
        if suite.tune is not None:  # each row's study first, then its seeds at its best
            stopped, runs, tuning = tune_rows(suite, args, recipe_paths, command)
            if stopped is not None:
                return stopped
        failed: list[str] = []
        if not args.report_only:
            tuned = {row.label for row in runs} if tuning is None else tuning[1]
            stopped = train_unfinished([run for run in runs if run.label in tuned], failed)
            if stopped is not None:
                return stopped
        rows = collect_rows(runs, frozenset(failed))
        report, plot = write_report(suite, name, rows, command, Path(args.reports_dir),
                                    tuning[0] if tuning else None)
        print(f"Report: {report} (plot: {plot})")
        where = log_summary(suite, name, rows, plot, Path(args.reports_dir))
        if where is not None:
            print(f"W&B summary run: {where}")
        for row in rows:
            if row.config_changes:
                print(f"note: {row.run.name} finished with settings that differ from its recipe "
                      f"now ({', '.join(row.config_changes)}); the report shows that run. Delete "
                      f"{row.run.run_dir} to train it again.", file=sys.stderr)
        if failed:
            raise UserError(
                f"{len(failed)} of {len(runs)} runs of the suite failed: {', '.join(failed)} "
                "(the training output above says why). The report lists them as failed. Fix "
                "the cause and run the same command again: finished runs are skipped and the "
                "failed ones resume from their last.pt where they have one."
            )
    except UserError as error:
        return fail(error)
    return 0
