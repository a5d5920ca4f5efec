"""Run logging: one JSON object per event in ``metrics.jsonl``, optional console lines, and
Weights & Biases (offline by default), whose own console messages are silenced.

``wandb`` is imported only when a run is started in mode ``offline`` or ``online``, so mode
``disabled`` works on machines without it. Offline mode writes the W&B run under
``<run_dir>/wandb/`` and never contacts a server; ``wandb sync`` uploads it later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .config import Recipe, WandbConfig, from_dict, to_dict
from .errors import UserError, first_line

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_id.txt"

# JSON has no NaN or infinity; metrics.jsonl writes them as these strings (read_metrics
# turns them back into floats), so a diverged loss stays visible instead of becoming null.
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class Tracker:
    """Writes a run's metrics to ``<run_dir>/metrics.jsonl`` and to W&B.

    ``config`` is the resolved recipe (a `Recipe` or its dict), logged as the W&B config;
    ``wandb_config`` defaults to its ``wandb`` section. With ``resume=True`` metrics.jsonl is
    appended to and the W&B run whose id is in ``<run_dir>/wandb_id.txt`` is continued;
    otherwise metrics.jsonl starts empty and a new W&B run begins. ``echo`` (e.g. ``print``
    or ``tqdm.write``) also receives each event as one readable line.
    """

    def __init__(
        self,
        run_dir: Union[str, Path],
        config: Union[Recipe, Mapping[str, Any]],
        wandb_config: Optional[WandbConfig] = None,
        *,
        resume: bool = False,
        echo: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        is_recipe = dataclasses.is_dataclass(config)
        self.config: dict[str, Any] = to_dict(config) if is_recipe else dict(config)
        if wandb_config is None:
            wandb_config = from_dict(WandbConfig, self.config.get("wandb"), "Tracker's config")
        self.wandb_config = wandb_config
        self.echo = echo
        self._metrics = (self.run_dir / METRICS_FILE).open("a" if resume else "w", encoding="utf-8")
        self._summary: dict[str, Any] = {}
        self.wandb_run: Any = None
        self.wandb_where: Optional[str] = None  # a console line: where the W&B run is
        if wandb_config.mode != "disabled":
            try:
                self.wandb_run = start_wandb(wandb_config, self.run_dir, self.config, resume)
            except BaseException:
                self._metrics.close()
                raise
            self.wandb_where = wandb_where(self.wandb_run, wandb_config.mode)

    def log(self, metrics: Mapping[str, Any], step: int) -> dict[str, Any]:
        """Record one event at optimizer step ``step`` and return the line as written.

        ``metrics`` may hold an ``"event"`` name ("train", "valid", "epoch", ...); W&B gets
        the other keys prefixed by it (``valid/ppl``) and ``step`` as their x-axis.
        """
        if self._metrics.closed:
            raise RuntimeError("Tracker.log called after finish().")
        if "step" in metrics:
            raise ValueError("Tracker.log: pass the step as the `step` argument, not in metrics.")
        event = metrics.get("event")
        record: dict[str, Any] = {} if event is None else {"event": str(event)}
        record["step"] = int(step)
        for key, value in metrics.items():
            if key != "event":
                record[key] = _plain(value, key)
        line = json.dumps(_json_safe(record), allow_nan=False, ensure_ascii=False)
        with self._naming_metrics():
            self._metrics.write(line + "\n")
            self._metrics.flush()
        if self.echo is not None:
            self.echo(format_event(record))
        if self.wandb_run is not None:
            prefix = f"{event}/" if event is not None else ""
            payload = {f"{prefix}{k}": v for k, v in record.items() if k not in ("event", "step")}
            payload["step"] = record["step"]
            self.wandb_run.log(payload)
        return record

    def metrics_bytes(self) -> int:
        """The length of metrics.jsonl so far; a checkpoint stores it so that a resume can
        cut off the lines logged after that checkpoint."""
        if not self._metrics.closed:
            with self._naming_metrics():
                self._metrics.flush()
        return (self.run_dir / METRICS_FILE).stat().st_size

    @contextlib.contextmanager
    def _naming_metrics(self) -> Iterator[None]:
        """A failed write to metrics.jsonl (e.g. a full disk) names the file it failed on."""
        try:
            yield
        except OSError as err:
            if err.filename is None:
                err.filename = str(self.run_dir / METRICS_FILE)
            raise

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Set final values (best validation perplexity, test perplexity, ...) in the W&B run
        summary; returns everything set so far as plain data."""
        plain = {key: _plain(value, key) for key, value in values.items()}
        self._summary.update(plain)
        if self.wandb_run is not None:
            self.wandb_run.summary.update(plain)
        return dict(self._summary)

    def finish(self, exit_code: int = 0) -> None:
        """Close metrics.jsonl and end the W&B run (safe to call twice).

        W&B's service writes the last records in the background; they are on disk once the
        process exits (wandb's atexit hook) or after ``wandb.teardown()``. When closing
        metrics.jsonl fails (its last lines cannot be flushed to a full disk), the W&B run is
        still ended and then the OSError raised.
        """
        try:
            if not self._metrics.closed:
                with self._naming_metrics():
                    self._metrics.close()
        finally:
            if self.wandb_run is not None:
                run, self.wandb_run = self.wandb_run, None
                run.finish(exit_code=exit_code)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def start_wandb(
    settings: WandbConfig, run_dir: Path, config: dict[str, Any], resume: bool
) -> Any:
    """Start (or with ``resume`` continue) the W&B run of ``run_dir``."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            f"W&B logging is on (wandb.mode={settings.mode}) but the wandb package is not "
            "installed. Install it with `pip install wandb`, or turn W&B off with the "
            "override wandb.mode=disabled."
        ) from None
    id_file = run_dir / WANDB_ID_FILE
    if resume and id_file.is_file():
        run_id = id_file.read_text(encoding="utf-8").strip()
    elif os.environ.get("WANDB_RUN_ID"):  # chosen by a W&B sweep agent: join that run
        run_id = os.environ["WANDB_RUN_ID"]
    else:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    wandb_dir = Path(settings.dir) if settings.dir else run_dir
    wandb_dir.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            group=settings.group,
            tags=list(settings.tags) or None,
            name=settings.name or run_dir.name,
            dir=str(wandb_dir),
            config=config,
            id=run_id,
            resume="allow",
            mode=settings.mode,  # explicit, so WANDB_MODE in the environment cannot override it
            settings=quiet_settings(wandb),
        )
    except wandb.errors.Error as err:
        raise UserError(
            f"W&B could not start in mode {settings.mode!r}: {first_line(err)}. For online "
            "logging run `wandb login` first; otherwise set wandb.mode=offline (logs locally, "
            "upload later with `wandb sync`) or wandb.mode=disabled."
        ) from None
    run_dir.mkdir(parents=True, exist_ok=True)  # a suite's summary run has no run directory yet
    id_file.write_text(run.id + "\n", encoding="utf-8")
    # Metrics use our optimizer step as x-axis rather than W&B's own step, which must grow:
    # after a resume the steps since the last checkpoint are logged again, and W&B would
    # drop them if they were passed as `step=`.
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


def quiet_settings(wandb: Any) -> Any:
    """W&B settings that keep its own console messages (the banner, and the run summary of
    some 30 lines at the end) out of the run's output, whose last line is the result; the
    Tracker says in one line where the W&B run is. None where wandb cannot take them."""
    try:
        return wandb.Settings(silent=True)
    except Exception:  # a wandb without the setting: its messages stay
        return None


def wandb_where(run: Any, mode: str) -> str:
    """One console line: where the W&B run is, and for an offline run how to upload it."""
    if mode == "offline":
        folder = Path(run.dir).parent  # <dir>/wandb/offline-run-<time>-<id>; run.dir is files/
        return f"W&B logs offline to {folder} (`wandb sync {folder}` uploads it)"
    return f"W&B run: {run.url}"


def read_metrics(path: Union[str, Path]) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl (or of the one in run dir ``path``), with the strings
    "NaN", "Infinity" and "-Infinity" turned back into floats."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    with path.open(encoding="utf-8") as handle:
        return [_restore_non_finite(json.loads(line)) for line in handle if line.strip()]


def format_event(record: Mapping[str, Any]) -> str:
    """One console line for an event, e.g. ``valid | step 1200 | loss 4.531 | ppl 92.87``."""
    parts = [str(record["event"])] if "event" in record else []
    for key, value in record.items():
        if key == "event":
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key} {shown}")
    return " | ".join(parts)


def _plain(value: Any, key: str) -> Any:
    """Tensors and NumPy scalars become Python numbers; containers are converted inside."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    to_list = getattr(value, "tolist", None)  # torch.Tensor, numpy arrays and scalars
    if callable(to_list):
        return _plain(to_list(), key)
    raise TypeError(f"Tracker: metric {key!r} is a {type(value).__name__}; log numbers or strings.")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _restore_non_finite(value: Any) -> Any:
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _restore_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_non_finite(v) for v in value]
    return value

