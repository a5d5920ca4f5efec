"""Train the runs of a suite that have not finished (the command is ``lm-flipout compare``,
in `lm_flipout.cli.compare`).

Every run is its own ``lm-flipout train`` subprocess rather than a Trainer in this process:
a run then starts from a clean interpreter (global RNG and deterministic-algorithm flags,
W&B's per-process run, signal handlers, memory), a crash or divergence in one run cannot take
the others down, and the command that trains a row is exactly the one a user would type to
reproduce it. The cost is a few seconds of start-up per run.

Whether a run is finished, or being trained by another process (its run lock), is checked
just before it would start, so two ``compare`` processes on one suite share its runs. Each
run is told (LM_FLIPOUT_PROCESSES) how many of the suite's runs train on this machine at its
start, itself included, so that they divide the cores between them (see
`lm_flipout.training.threads`).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..training.run_lock import lock_holder
from ..training.threads import PROCESSES_VARIABLE
from .suite import PlannedRun

# The folder that holds this lm_flipout package: the training subprocesses import the same copy.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def train_command(run: PlannedRun) -> list[str]:
    """The arguments after ``python -m lm_flipout train`` that train (or resume) one run:
    its recipe with the run's overrides (the suite's group, the command line's, its seed)."""
    return [run.recipe_path, *run.overrides, "--resume"]


def train_unfinished(runs: list[PlannedRun], failed: list[str]) -> Optional[int]:
    """Train each run without results.json, appending the names of failed runs to
    ``failed``. Returns an exit status if the user stopped the suite, else None."""
    for i, run in enumerate(runs, 1):
        if run.finished:
            print(f"[{i}/{len(runs)}] {run.name}: finished, skipped ({run.run_dir}/results.json)")
            continue
        holder = lock_holder(run.run_dir)
        if holder is not None:  # another `compare` (or `train`) on the same suite has it
            print(f"[{i}/{len(runs)}] {run.name}: being trained by another process ({holder}), "
                  "skipped", flush=True)
            continue
        how = "resuming from last.pt" if run.started else "starting"
        args = train_command(run)
        print(f"[{i}/{len(runs)}] {run.name}: {how} in {run.run_dir}\n  "
              f"{shlex.join(['python', '-m', 'lm_flipout', 'train', *args])}", flush=True)
        status, signum = _train(args, processes=1 + _training_here(runs))
        if signum is not None:
            print(f"Suite stopped during {run.name}. Run the same command again to resume it "
                  "(finished runs are skipped).", file=sys.stderr)
            return 128 + signum
        if status != 0 and lock_holder(run.run_dir) is not None:  # lost a race to start it
            print(f"[{i}/{len(runs)}] {run.name}: another process started it first, skipped",
                  flush=True)
        elif status != 0:
            failed.append(run.name)
            print(f"[{i}/{len(runs)}] {run.name}: training failed with exit status {status}; "
                  "going on with the other runs.", file=sys.stderr, flush=True)
    return None


def _training_here(runs: list[PlannedRun]) -> int:
    """How many of ``runs`` a process on this machine is training now."""
    here = f" on host {socket.gethostname()}"
    return sum(1 for run in runs if (lock_holder(run.run_dir) or "").endswith(here))


def _train(args: list[str], processes: int = 1) -> tuple[int, Optional[int]]:
    """Run ``lm-flipout train ARGS`` in a new interpreter, one of ``processes`` training on
    this machine (unless LM_FLIPOUT_PROCESSES is set already); returns its exit status and
    the signal that stopped the suite, if any.

    Ctrl-C reaches the child from the terminal itself (same process group), so SIGINT is
    only noted here; SIGTERM, sent to this process alone, is passed on. Either way the child
    finishes its step and writes last.pt before it exits.
    """
    received: list[int] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get("PYTHONPATH")]))
    env.setdefault(PROCESSES_VARIABLE, str(processes))
    proc = subprocess.Popen([sys.executable, "-m", "lm_flipout", "train", *args], env=env)

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


if __name__ == "__main__":  # the command line is the one entry point; this module calls down
    sys.exit("`python -m lm_flipout.experiments.compare` is now `lm-flipout compare` (or "
             "`python -m lm_flipout compare`), with the same arguments.")
