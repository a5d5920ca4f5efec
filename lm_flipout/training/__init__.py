"""Training a recipe in a run directory (`Trainer`), resuming it exactly, and using the
trained run afterwards (`load_trained_run`, `load_trained_model`,
`evaluate_checkpoint`)."""

from .environment import select_device
from .loop import Trainer
from .resume import RESUME_MAY_CHANGE
from .run_dir import RESULTS_FILE, AlreadyFinished, read_results
from .stopping import Interrupted
from .trained_run import evaluate_checkpoint, load_trained_model, load_trained_run
from .write_failures import RunWriteError

__all__ = [
    "RESULTS_FILE", "RESUME_MAY_CHANGE", "AlreadyFinished", "Interrupted", "RunWriteError",
    "Trainer", "evaluate_checkpoint", "load_trained_model", "load_trained_run", "read_results",
    "select_device",
]
