"""Train the runs of a suite that have not finished, then write its report.

    python -m lm_flipout.experiments.compare recipes/suites/ptb_word_cpu.yaml [key=value ...]
    python -m lm_flipout.experiments.compare recipes/suites/ptb_word_cpu.yaml --report-only

Every run is its own ``train.py`` subprocess rather than a Trainer in this process: a run
then starts from a clean interpreter (global RNG and deterministic-algorithm flags, W&B's
per-process run, signal handlers, memory), a crash or divergence in one run cannot take the
others down, and the command that trains a row is exactly the one a user would type to
reproduce it. The cost is a few seconds of start-up per run.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..cli import fail
from ..errors import UserError
from .report import write_report
from .rows import collect_rows
from .suite import PlannedRun, check_seeds, load_suite, plan_runs
from .summary import log_summary

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"

EPILOG = """A suite file (recipes/suites/*.yaml) names a W&B group and lists recipes, each with an
optional row label and the paper's numbers:

  group: ptb_word_cpu
  baseline: unregularized
  runs:
    - recipe: ../ptb/word_cpu_unregularized.yaml   # relative to the suite file
      label: unregularized
      paper: {valid_ppl: 132.23, test_ppl: 128.97}
  seeds: [1, 2, 3]          # optional, suite-wide; a row may list its own; --seeds overrides both

Each run trains in the directory train.py would use (<train.out_dir>/<train.run_name>, by default
checkpoints/<recipe name>); with seeds, each (row, seed k) is its own run with train.seed=k in
that directory + "-seed<k>", its W&B run tagged seed:<k>. A run with results.json is finished
and skipped; one with last.pt is resumed; the others start. Every run gets wandb.group=<the
suite's group>, then the overrides given here. A run that fails is reported and the others still run; Ctrl-C stops the suite after
the current run has saved last.pt, and the same command later resumes it.

The report is <reports-dir>/<suite name>.md (valid/test perplexity and bits per character,
parameters, tokens/s, wall time, beside the paper's numbers) and <suite name>_valid_ppl.png
(validation perplexity per epoch), built from the runs' results.json and metrics.jsonl only.
Over several seeds it gives each row's mean ± standard deviation and 95% t interval, the
paired difference to the baseline row over matching seeds with a verdict (better, worse, not
resolved), the per-seed values, and mean curves with bands. Unless W&B is disabled, the
report's tables and plot are also logged as one summary run in the suite's W&B group.

examples:
  python -m lm_flipout.experiments.compare recipes/suites/ptb_word_cpu.yaml
  python -m lm_flipout.experiments.compare recipes/suites/ptb_word_medium.yaml train.device=cuda:1
  python -m lm_flipout.experiments.compare recipes/suites/ptb_char_cpu.yaml --seeds 1,2,3
  python -m lm_flipout.experiments.compare recipes/suites/ptb_word_cpu.yaml --report-only"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lm_flipout.experiments.compare",
        description="Train every run of a comparison suite that has not finished, then write "
                    "its Markdown report and validation-perplexity plot.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    name = Path(args.suite).stem
    command = shlex.join(["python", "-m", "lm_flipout.experiments.compare", args.suite,
                          *args.overrides])
    try:
        suite, recipe_paths = load_suite(args.suite)
        runs = plan_runs(suite, recipe_paths, args.overrides, args.seeds)
        failed: list[str] = []
        if not args.report_only:
            stopped = train_unfinished(runs, failed)
            if stopped is not None:
                return stopped
        rows = collect_rows(runs, frozenset(failed))
        report, plot = write_report(suite, name, rows, command, Path(args.reports_dir))
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
                "(the output of train.py above says why). The report lists them as failed. Fix "
                "the cause and run the same command again: finished runs are skipped and the "
                "failed ones resume from their last.pt where they have one."
            )
    except UserError as error:
        return fail(error)
    return 0


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


def train_unfinished(runs: list[PlannedRun], failed: list[str]) -> Optional[int]:
    """Train each run without results.json, appending the names of failed runs to
    ``failed``. Returns an exit status if the user stopped the suite, else None."""
    for i, run in enumerate(runs, 1):
        if run.finished:
            print(f"[{i}/{len(runs)}] {run.name}: finished, skipped ({run.run_dir}/results.json)")
            continue
        how = "resuming from last.pt" if run.started else "starting"
        cmd = [sys.executable, str(TRAIN_SCRIPT), run.recipe_path, *run.overrides, "--resume"]
        print(f"[{i}/{len(runs)}] {run.name}: {how} in {run.run_dir}\n  "
              f"{shlex.join(['python', 'train.py', *cmd[2:]])}", flush=True)
        status, signum = _train(cmd)
        if signum is not None:
            print(f"Suite stopped during {run.name}. Run the same command again to resume it "
                  "(finished runs are skipped).", file=sys.stderr)
            return 128 + signum
        if status != 0:
            failed.append(run.name)
            print(f"[{i}/{len(runs)}] {run.name}: train.py failed with exit status {status}; "
                  "going on with the other runs.", file=sys.stderr, flush=True)
    return None


def _train(cmd: list[str]) -> tuple[int, Optional[int]]:
    """Run train.py; returns its exit status and the signal that stopped the suite, if any.

    Ctrl-C reaches the child from the terminal itself (same process group), so SIGINT is
    only noted here; SIGTERM, sent to this process alone, is passed on. Either way the child
    finishes its step and writes last.pt before it exits.
    """
    received: list[int] = []
    proc = subprocess.Popen(cmd)

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGTERM:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status, (received[0] if received else None)


if __name__ == "__main__":
    sys.exit(main())
