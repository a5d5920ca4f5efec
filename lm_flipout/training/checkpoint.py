"""Checkpoints: atomic save, safe load, and the random-number state for exact resume.

A checkpoint is a dict of state dicts and plain data. It is written to a temporary file
next to the target and renamed over it, so a crash leaves either the old or the new file.
It is read with ``torch.load(weights_only=True)``, so loading never runs code from the file.

Each checkpoint carries the sha256 of its own contents (key ``"sha256"``): every tensor's
dtype, shape and bytes and every plain value (`content_digest`, as the token cache). It lives
inside the file, as an ordinary string entry, so ``torch.load(weights_only=True)`` still
reads the file and a copy stays checkable without a sidecar file that copies tend to lose; it
covers the contents rather than the file's bytes, since a digest of a file cannot be stored
inside that file. PyTorch checks no checksum when it reads tensor data, so a byte flipped
there would otherwise load silently. `load_checkpoint` refuses a mismatch (CheckpointError
naming the run's other checkpoint when that one is intact) unless ``allow_corrupt``;
checkpoints written before the digest existed load unchecked.
"""

from __future__ import annotations

import os
import pickle
import random
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..atomic import atomic_write
from ..data.cache import content_digest
from ..errors import CheckpointError, first_line

FORMAT_KEY = "format"
FORMAT = "lm_flipout/1"
CHECKSUM_KEY = "sha256"
# Set (True) in a state that `load_checkpoint` read despite a checksum mismatch.
CORRUPT_KEY = "checksum_mismatch"

PathLike = Union[str, os.PathLike]

# Types that torch.load(weights_only=True) accepts without extra allow-listing.
_PLAIN_TYPES = (
    type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device
)


def _check_plain(value: Any, key: str) -> None:
    """Raise TypeError if ``value`` holds anything weights_only loading would refuse."""
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN_TYPES):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_plain(k, f"{key}[{k!r}] (key)")
            _check_plain(v, f"{key}[{k!r}]")
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]")
        return
    raise TypeError(
        f"save_checkpoint: {key} is a {type(value).__module__}.{type(value).__qualname__}; "
        "checkpoints hold only tensors, state dicts and plain Python data. "
        "Store its state_dict() or convert it to plain types."
    )


def save_checkpoint(state: Mapping[str, Any], path: PathLike) -> None:
    """Write ``state`` (plus the format marker) to ``path`` atomically.

    Raises TypeError when ``state`` holds an object that ``weights_only`` loading refuses,
    so such a bug shows at save time rather than at resume.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}.")
    _check_plain(state, "state")
    payload = dict(state)
    payload[FORMAT_KEY] = FORMAT
    payload[CHECKSUM_KEY] = content_digest(payload)
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def load_checkpoint(
    path: PathLike, map_location: Union[str, torch.device, None] = "cpu", *,
    allow_corrupt: bool = False,
) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (without the format marker and digest).

    The one loader every command uses. Every way the file can be unusable (missing,
    truncated, not a torch file, foreign objects, another program's checkpoint, contents
    that no longer match their sha256) is a CheckpointError that names the file and what to
    do. With ``allow_corrupt`` a checksum mismatch only warns (on stderr) and the returned
    state holds ``CORRUPT_KEY: True``, so that callers can mark what they compute from it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint {path} does not exist. Check the path: a run keeps its checkpoints "
            "as <out_dir>/<run_name>/last.pt and best.pt."
        )
    if path.is_dir():
        raise CheckpointError(
            f"Checkpoint {path} is a directory, not a file. Pass the .pt file inside it, "
            "e.g. last.pt or best.pt."
        )
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"Checkpoint {path} cannot be read. Check its permissions.")
    problem = _format_problem(path)
    if problem:
        raise CheckpointError(problem)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated: OSError, RuntimeError, EOFError; foreign: Unpickling
        raise CheckpointError(_unreadable_message(path, err)) from None
    if not isinstance(state, dict) or FORMAT_KEY not in state:
        raise CheckpointError(
            f"Checkpoint {path} is a readable PyTorch file but not an lm_flipout checkpoint "
            f"(it has no '{FORMAT_KEY}' marker; it holds a {type(state).__name__}). It may be a "
            "bare state_dict or another project's checkpoint. Use a last.pt or best.pt written "
            "by lm_flipout training."
        )
    if state[FORMAT_KEY] != FORMAT:
        raise CheckpointError(
            f"Checkpoint {path} has format {state[FORMAT_KEY]!r}, but this version of lm_flipout "
            f"reads {FORMAT!r}. Load it with the lm_flipout version that wrote it, or retrain."
        )
    stored = state.pop(CHECKSUM_KEY, None)  # absent in checkpoints from before it existed
    if stored is not None and stored != content_digest(state):
        message = corrupt_message(path)
        if not allow_corrupt:
            raise CheckpointError(message + " To load it anyway, pass "
                                  "--allow-corrupt-checkpoint; what is computed from it is "
                                  "then marked.")
        print(f"warning: {message} Loading it anyway (--allow-corrupt-checkpoint); results "
              "computed from it are marked \"checkpoint_corrupt\": true.", file=sys.stderr)
        state[CORRUPT_KEY] = True
    del state[FORMAT_KEY]
    return state


def corrupt_message(path: Path) -> str:
    """Why ``path`` was refused, and which of the run's checkpoints (best.pt, last.pt)
    beside it is intact."""
    other = path.with_name("last.pt" if path.name == "best.pt" else "best.pt")
    if other == path or not other.is_file():
        alternative = ("No other checkpoint of the run is beside it; restore the file from a "
                       "backup or train again.")
    elif not _intact(other):
        alternative = (f"The run's other checkpoint {other} is damaged too; restore them from "
                       "a backup or train again.")
    elif other.name == "best.pt":
        alternative = (f"The run's {other} is intact: evaluate that one (a run resumes only "
                       "from last.pt, so restore last.pt from a backup or start a new run "
                       "under another train.run_name to train further).")
    else:
        alternative = (f"The run's {other} is intact: use that one (evaluating it scores the "
                       "latest weights rather than the best epoch's).")
    return (f"Checkpoint {path} changed on disk after it was written: its contents no longer "
            f"match the sha256 stored in it (a flipped bit, a damaged copy or an edit). "
            f"{alternative}")


def _intact(path: Path) -> bool:
    """Whether ``path`` loads and matches its checksum."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable file counts as damaged here
        return False
    if not isinstance(state, dict):
        return False
    stored = state.pop(CHECKSUM_KEY, None)
    return stored is None or stored == content_digest(state)


def _format_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a checkpoint, judged by its first bytes, or None for a zip file
    (the format lm_flipout writes; torch reads it, and reports truncation)."""
    with path.open("rb") as handle:
        head = handle.read(2)
    if not head:
        return (
            f"Checkpoint {path} is empty (0 bytes), probably from an interrupted copy. "
            "Copy it again or use the run's other checkpoint (last.pt or best.pt)."
        )
    if head == b"PK":
        return None
    if head[:1] == b"\x80":  # the pickle protocol marker
        return (
            f"Checkpoint {path} is a plain Python pickle or a PyTorch file in the old format "
            "(before PyTorch 1.6). lm_flipout does not read these: loading one can run code "
            "from the file, and lm_flipout never wrote them. Use a last.pt or best.pt from an "
            "lm_flipout run."
        )
    return (
        f"{path} is not a PyTorch checkpoint file (it does not start like one). Pass a last.pt "
        "or best.pt written by lm_flipout training."
    )


def _unreadable_message(path: Path, err: Exception) -> str:
    if isinstance(err, pickle.UnpicklingError) and zipfile.is_zipfile(path):
        return (
            f"Checkpoint {path} contains Python objects other than tensors and plain data, so "
            "it was not loaded (loading it could run code from the file). It was not written by "
            "lm_flipout; use a last.pt or best.pt from an lm_flipout run."
        )
    return (
        f"Checkpoint {path} is truncated or corrupted ({first_line(err)}), e.g. an incomplete "
        "copy or a disk that filled up. Copy it again or use the run's other checkpoint "
        "(last.pt or best.pt)."
    )


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run uses, as weights_only-loadable data:
    Python ``random``, NumPy's global generator, torch CPU and each CUDA device."""
    version, mt_words, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt_words), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 words, exact in int64
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators captured by `rng_state`.

    CUDA states are restored for the devices present (a run resumed on fewer GPUs cannot be
    bit-exact anyway); tensors may arrive on any device and are moved to the CPU first.
    """
    missing = [key for key in ("python", "numpy", "torch", "cuda") if key not in state]
    if missing:
        raise CheckpointError(
            f"The checkpoint's RNG state lacks {', '.join(missing)}; it was not written by "
            "lm_flipout.training.checkpoint.rng_state(). Resume from a checkpoint written by "
            "lm_flipout."
        )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = torch.as_tensor(npy["keys"]).cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state).cpu(), device)
