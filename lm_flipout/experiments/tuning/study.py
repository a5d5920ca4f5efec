"""The Optuna study behind ``lm-flipout tune``: storage, sampler and pruner, and the loop that
hands trials to this process until the study holds the requested number of finished or
pruned trials.

Storage: by default an Optuna journal file (``study.journal``) in the study's directory,
which several processes on one machine may share; ``--storage URL`` takes any Optuna
storage URL (e.g. PostgreSQL), for processes on several machines.

Nothing is lost or counted twice: a process claims a trial by holding an exclusive lock on
``claims/trial-NNNN.lock`` for as long as it trains it; asking Optuna for a new trial and
claiming an interrupted one happen under one study-wide lock. A trial left running by a
killed process (on this machine, in this directory: no one holds its claim) is taken up
again under its own number, with the parameters it was given, and resumes from its last.pt.
Where ``fcntl`` is missing (Windows) there are no locks: run one process per study there.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Callable, Optional

from ...errors import ConfigError, first_line
from ...training import Interrupted
from .space import SearchSpace, pruner_name

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

JOURNAL_FILE = "study.journal"
STUDY_LOCK = "tune.lock"
CLAIMS_DIR = "claims"
HOST_ATTR, DIR_ATTR = "host", "study_dir"
ORPHAN_SECONDS = 60.0


def default_storage(study_dir: Path) -> Any:
    """The journal file in the study's directory."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study_dir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(study_dir / JOURNAL_FILE)))


def make_sampler(space: SearchSpace, seed: int) -> Any:
    import optuna

    if space.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(space: SearchSpace) -> Any:
    """Optuna's median or successive-halving pruner (or none), with the file's arguments."""
    import optuna

    name = pruner_name(space.study.pruner)
    kwargs = space.study.pruner[name] if isinstance(space.study.pruner, dict) else None
    classes = {"median": optuna.pruners.MedianPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "none": optuna.pruners.NopPruner}
    try:
        return classes[name](**(kwargs or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"Search space {space.path}: study.pruner {name} does not accept "
            f"{kwargs!r} ({err}). See Optuna's {classes[name].__name__} for its arguments."
        ) from None


def open_study(name: str, storage: Any, space: SearchSpace, seed: int) -> Any:
    """Create the study, or load it when it exists; a study started with another space is
    refused, so that one study never mixes two searches."""
    import optuna

    for attempt in range(3):  # processes creating one database's tables at once may collide
        try:
            study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                        direction="minimize", sampler=make_sampler(space, seed),
                                        pruner=make_pruner(space))
            break
        except ImportError as err:  # e.g. a PostgreSQL URL without its driver
            raise ConfigError(
                f"The storage {storage!r} needs a package that is not installed ({err}). "
                "Install it, e.g. `pip install 'psycopg[binary]'` for PostgreSQL.") from None
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors, from any backend
            if not isinstance(storage, str):
                raise
            if attempt == 2:
                raise ConfigError(
                    f"Cannot open the study storage {storage!r}: {first_line(err)}. Check the "
                    "URL and that the database server is running.") from None
            time.sleep(1.0 + random.random())
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space.as_plain())
    elif stored != space.as_plain():
        raise ConfigError(
            f"The study {name!r} was started with another search space than {space.path}. "
            "Nothing was trained. Run it with the space it began with, or start a new study "
            "with train.run_name=NAME."
        )
    return study


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block, waiting for it if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


class Claim:
    """This process's claim on one trial: an exclusive lock on ``claims/trial-NNNN.lock``,
    taken at once or not at all (``held``), and let go by `release` or the process's end."""

    def __init__(self, study_dir: Path, number: int) -> None:
        path = study_dir / CLAIMS_DIR / f"trial-{number:04d}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: Optional[IO[str]] = open(path, "a+", encoding="utf-8")
        self.held = True
        if fcntl is not None:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.release()
                self.held = False

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def next_trial(study: Any, study_dir: Path, total: int, seed: Optional[int] = None
               ) -> tuple[Optional[Any], Optional[Claim]]:
    """The trial this process trains next with its claim: an interrupted one of this
    machine first, else a new one while finished, pruned and running trials number fewer
    than ``total``. (None, None) when nothing is left for this process.

    With a ``seed``, a new trial's parameters are drawn by a sampler seeded with ``seed``
    plus the trial's number: processes sharing a study then draw different parameters (each
    with the study's seed alone would repeat the others' first draws), and a study run by one
    process draws the same ones every time."""
    import optuna
    from optuna.trial import TrialState

    host, folder = socket.gethostname(), str(study_dir.resolve())
    with locked(study_dir / STUDY_LOCK):
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        if done >= total:
            return None, None
        running = [t for t in trials if t.state == TrialState.RUNNING]
        for frozen in running:
            if not _ours(frozen, host, folder):
                continue
            claim = Claim(study_dir, frozen.number)
            if claim.held:  # its process is gone
                # FrozenTrial keeps its storage id private; Trial(study, id) is how Optuna
                # itself reopens a running trial
                trial = optuna.trial.Trial(study, frozen._trial_id)
                trial.set_user_attr(HOST_ATTR, host)
                trial.set_user_attr(DIR_ATTR, folder)
                return trial, claim
            claim.release()
        if done + len(running) >= total:
            return None, None  # the rest are being trained by other processes
        trial = study.ask()
        if seed is not None:  # parameters are drawn later, by the trial's suggest calls
            study.sampler = type(study.sampler)(seed=seed + trial.number)
        trial.set_user_attr(HOST_ATTR, host)
        trial.set_user_attr(DIR_ATTR, folder)
        claim = Claim(study_dir, trial.number)
        return trial, claim


def _ours(frozen: Any, host: str, folder: str) -> bool:
    """Whether a running trial is this machine's and this directory's to take up when no one
    holds its claim. One without a host was asked for by a process killed before it could
    note its host; after `ORPHAN_SECONDS` any process may take it up."""
    if HOST_ATTR not in frozen.user_attrs:
        started = frozen.datetime_start
        return started is not None and (datetime.now() - started).total_seconds() > ORPHAN_SECONDS
    return (frozen.user_attrs[HOST_ATTR], frozen.user_attrs.get(DIR_ATTR)) == (host, folder)


def count_states(study: Any) -> dict[str, int]:
    """How many trials are complete, pruned, running and failed."""
    counts = {"complete": 0, "pruned": 0, "running": 0, "fail": 0, "waiting": 0}
    for frozen in study.get_trials(deepcopy=False):
        counts[frozen.state.name.lower()] += 1
    return counts


def best_value(study: Any) -> Optional[float]:
    from optuna.trial import TrialState

    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.value is not None]
    return min(values) if values else None


def run_study(study: Any, study_dir: Path, total: int,
              train_one: Callable[[Any], tuple[str, Optional[float]]],
              after_each: Callable[[], None] = lambda: None, seed: Optional[int] = None) -> None:
    """Train trials (``train_one(trial)`` returns its state and value; ``after_each`` runs
    once it is recorded) until none is left for this process; a progress bar shows trials
    done, pruned and the best so far. ``seed``: see `next_trial`."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    def shown(bar: Any) -> None:
        counts = count_states(study)
        bar.n = counts["complete"] + counts["pruned"]
        best = best_value(study)
        bar.set_postfix(pruned=counts["pruned"], best="-" if best is None else f"{best:.2f}")
        bar.refresh()

    bar = tqdm(total=total, desc="trials", unit="trial", dynamic_ncols=True)
    try:
        shown(bar)
        while True:
            trial, claim = next_trial(study, study_dir, total, seed)
            if trial is None:
                break
            try:
                state, value = train_one(trial)
                if state == "pruned":
                    study.tell(trial.number, state=TrialState.PRUNED)
                else:
                    study.tell(trial.number, value)
            except (Interrupted, KeyboardInterrupt):
                raise  # the trial stays running; the next run of the command resumes it
            except BaseException:
                study.tell(trial.number, state=TrialState.FAIL)
                raise
            finally:
                claim.release()
            after_each()
            shown(bar)
    finally:
        bar.close()
