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
from .report import collect_rows, write_report
from .suite import PlannedRun, Suite, load_suite, plan_runs, run_overrides

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"

EPILOG = """A suite file (recipes/suites/*.yaml) names a W&B group and lists recipes, each with an
optional row label and the paper's numbers:

  group: ptb_word_cpu
  baseline: unregularized
  runs:
    - recipe: ../ptb/word_cpu_unregularized.yaml   # relative to the suite file
      label: unregularized
      paper: {valid_ppl: 132.23, test_ppl: 128.97}

Each run trains in the directory train.py would use (<train.out_dir>/<train.run_name>, by default
checkpoints/<recipe name>). A run with results.json is finished and skipped; one with last.pt is
resumed; the others start. Every run gets wandb.group=<the suite's group>, then the overrides
given here. A run that fails is reported and the others still run; Ctrl-C stops the suite after
the current run has saved last.pt, and the same command later resumes it.

The report is <reports-dir>/<suite name>.md (valid/test perplexity and bits per character,
parameters, tokens/s, wall time, beside the paper's numbers) and <suite name>_valid_ppl.png
(validation perplexity per epoch), built from the runs' results.json and metrics.jsonl only.

examples:
  python -m lm_flipout.experiments.compare recipes/suites/ptb_word_cpu.yaml
  python -m lm_flipout.experiments.compare recipes/suites/ptb_word_medium.yaml train.device=cuda:1
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
        runs = plan_runs(suite, recipe_paths, args.overrides)
        failed: list[str] = []
        if not args.report_only:
            stopped = train_unfinished(suite, runs, args.overrides, failed)
            if stopped is not None:
                return stopped
        rows = collect_rows(runs, frozenset(failed))
        report, plot = write_report(suite, name, rows, command, Path(args.reports_dir))
        print(f"Report: {report} (plot: {plot})")
        for row in rows:
            if row.config_changes:
                print(f"note: {row.run.label} finished with settings that differ from its recipe "
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


def train_unfinished(suite: Suite, runs: list[PlannedRun], overrides: list[str],
                     failed: list[str]) -> Optional[int]:
    """Train each run without results.json, appending the labels of failed runs to
    ``failed``. Returns an exit status if the user stopped the suite, else None."""
    for i, run in enumerate(runs, 1):
        if run.finished:
            print(f"[{i}/{len(runs)}] {run.label}: finished, skipped ({run.run_dir}/results.json)")
            continue
        how = "resuming from last.pt" if run.started else "starting"
        cmd = [sys.executable, str(TRAIN_SCRIPT), run.recipe_path,
               *run_overrides(suite, overrides), "--resume"]
        print(f"[{i}/{len(runs)}] {run.label}: {how} in {run.run_dir}\n  "
              f"{shlex.join(['python', 'train.py', *cmd[2:]])}", flush=True)
        status, signum = _train(cmd)
        if signum is not None:
            print(f"Suite stopped during {run.label}. Run the same command again to resume it "
                  "(finished runs are skipped).", file=sys.stderr)
            return 128 + signum
        if status != 0:
            failed.append(run.label)
            print(f"[{i}/{len(runs)}] {run.label}: train.py failed with exit status {status}; "
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
