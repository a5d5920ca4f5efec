"""The recipe schema: one dataclass per section, every default here or in the section's own
module (`ModelConfig` in model.py, `DataConfig` in data/config.py).

Each section checks itself in ``validate()``, which the converter (`from_dict`) runs right
after building it; a failed check is a ConfigError (or DataError) that names the dotted key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ..checks import check_range
from ..data import DataConfig
from ..errors import ConfigError
from ..model import ModelConfig


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (the recipe's ``optim:`` section)."""

    name: Literal["sgd", "nt_asgd", "adam", "amsgrad"] = "sgd"
    lr: float = 20.0
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip: float = 0.25  # gradient-norm clipping; 0 = off
    plateau_factor: float = 0.25  # SGD: lr *= factor when validation stops improving
    # non-monotonic window (AWD-LSTM): SGD divides lr (then waits nonmono + 1 epochs of new
    # history before it may cut again); nt_asgd starts averaging
    nonmono: int = 5
    ar: float = 0.0  # activation regularization (AWD-LSTM alpha)
    tar: float = 0.0  # temporal activation regularization (AWD-LSTM beta)

    def validate(self) -> None:
        """Raise ConfigError naming `optim.<key>` for the first setting that cannot work."""
        check_range("optim.lr", self.lr, low=0.0, low_open=True)
        check_range("optim.weight_decay", self.weight_decay, low=0.0)
        check_range("optim.momentum", self.momentum, low=0.0, high=1.0)
        if len(self.betas) != 2:
            raise ConfigError(
                f"optim.betas={self.betas!r} must hold exactly two numbers (Adam's beta1 and "
                "beta2), e.g. [0.9, 0.999]."
            )
        for i, beta in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", beta, low=0.0, high=1.0)
        check_range("optim.clip", self.clip, low=0.0, hint="Use 0 to turn clipping off.")
        check_range(
            "optim.plateau_factor", self.plateau_factor, low=0.0, low_open=True, high=1.0,
            high_open=False, hint="It multiplies the learning rate, e.g. 0.25.",
        )
        check_range("optim.nonmono", self.nonmono, low=1)
        check_range("optim.ar", self.ar, low=0.0)
        check_range("optim.tar", self.tar, low=0.0)


@dataclass
class TrainConfig:
    """The training run itself (the recipe's ``train:`` section)."""

    epochs: int = 40
    seed: int = 1111
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # CPU threads: auto = the fastest count, timed on a few steps of the run's own model at
    # the start and again now and then (lm_flipout.training.threads); or a number
    threads: Union[int, Literal["auto"]] = "auto"
    out_dir: str = "checkpoints"
    run_name: Optional[str] = None  # default: the recipe file's stem (set by load_recipe)
    checkpoint_every_s: float = 60.0  # write last.pt at least this often within an epoch
    checkpoint_every_steps: int = 0  # and/or every N steps (0 = off)
    early_stopping: int = 0  # stop after N epochs without a validation improvement (0 = off)
    log_every: int = 50  # steps between metrics.jsonl lines
    max_steps: int = 0  # stop after N optimizer steps in total (0 = off; for smoke tests)
    # torch.compile the LSTM stack: true, false, or auto (on for CUDA, off for CPU and MPS)
    compile: Literal[True, False, "auto"] = "auto"

    def validate(self) -> None:
        """Raise ConfigError naming `train.<key>` for the first setting that cannot work."""
        check_range("train.epochs", self.epochs, low=1)
        check_range("train.seed", self.seed, low=0, high=2**32, hint="NumPy seeds are 32-bit.")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"train.device={self.device!r} is not a device. Use auto (CUDA when available), "
                "cpu, cuda, cuda:N (e.g. cuda:1) or mps."
            )
        if self.threads != "auto":
            check_range("train.threads", self.threads, low=1,
                        hint="Use auto to choose the fastest count by timing a few steps.")
        if not self.out_dir:
            raise ConfigError("train.out_dir is empty. Give the directory that holds run folders.")
        name = self.run_name
        problem = None if name is None else folder_name_problem(name)
        if problem:
            raise ConfigError(
                f"train.run_name={name[:80]!r}{'...' if len(name) > 80 else ''} cannot be a "
                f"folder name inside train.out_dir: {problem}. A run name is one folder name of "
                f"at most {MAX_NAME_BYTES} bytes (UTF-8) without slashes or control characters, "
                "e.g. train.run_name=ptb-medium-flipout-seed2; or null for the recipe file's name."
            )
        check_range("train.checkpoint_every_s", self.checkpoint_every_s, low=0.0)
        check_range("train.checkpoint_every_steps", self.checkpoint_every_steps, low=0)
        check_range("train.early_stopping", self.early_stopping, low=0)
        check_range("train.log_every", self.log_every, low=1)
        check_range("train.max_steps", self.max_steps, low=0)


# The longest file name Linux, macOS and Windows file systems all allow (in bytes).
MAX_NAME_BYTES = 255


def folder_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be one path component (a run directory inside train.out_dir), or
    None when it can."""
    if not name or name in (".", ".."):
        return "it is empty or a special folder (. or ..)"
    if re.search(r"[/\\]", name):
        return "it holds a slash"
    control = re.search(r"[\x00-\x1f\x7f]", name)
    if control:
        return f"it holds the control character {control.group()!r}"
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long"
    return None


def is_folder_name(name: str) -> bool:
    """Whether ``name`` is one path component (a run directory inside train.out_dir)."""
    return folder_name_problem(name) is None


@dataclass
class WandbConfig:
    """Weights & Biases logging (the recipe's ``wandb:`` section)."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "lm_flipout"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    name: Optional[str] = None  # default: train.run_name
    dir: Optional[str] = None  # default: the run directory

    def validate(self) -> None:
        """Raise ConfigError naming `wandb.<key>` for the first setting W&B would refuse."""
        if not self.project:
            raise ConfigError("wandb.project is empty. Name the W&B project, e.g. lm_flipout.")
        for i, tag in enumerate(self.tags):
            if not 1 <= len(tag) <= 64:
                raise ConfigError(
                    f"wandb.tags[{i}]={tag!r} has {len(tag)} characters; W&B accepts tags of "
                    "1 to 64 characters. Shorten or remove it."
                )


@dataclass
class Recipe:
    """One experiment: everything `train.py` needs, and what a run saves as config.yaml.

    No rule spans two sections, so the recipe has no checks beyond its sections' own.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
