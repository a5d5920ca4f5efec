"""Data-parallel training under ``torchrun``: PyTorch distributed does the communication and
`torch.nn.parallel.DistributedDataParallel` (DDP) the gradient all-reduce.

``torchrun --nproc_per_node=K train.py RECIPE`` starts K processes and describes them through
RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; a plain ``python train.py`` (or torchrun
with one process) is rank 0 of 1 and touches no process group. Backend: NCCL with one GPU
per process (cuda:LOCAL_RANK) on CUDA, gloo on CPU.

What the ranks share and what each has of its own:

* shared: the initial weights (every rank builds the model from the run seed, and DDP
  broadcasts rank 0's anyway), the averaged and then clipped gradients and so every optimizer
  step, the optimizer and schedule state, the batch order and the variable-BPTT window lengths
  (they depend only on the run seed and the epoch), the stop decision after a signal, and the
  evaluation results (NLL sums and token counts are all-reduced);
* per rank: the batch columns (batch sizes are global; rank r of W takes the columns
  [rB/W, (r+1)B/W) of every batch, see `lm_flipout.data.batching`), the LSTM state carried
  between windows for those columns, and the random numbers: after the model is built each
  rank reseeds its generators with `rank_seed`, so its dropout masks, its flipout sign vectors
  and its base perturbation ΔŴ are its own. The weight noise is therefore drawn once per rank
  and forward pass: the ``shared`` estimator shares ΔW among the sequences of one rank, and
  flipout uses one base ΔŴ per rank with per-sequence signs, which is still an unbiased
  flipout estimator whose sequences stay pseudo-independent.

Only rank 0 touches the run directory (checkpoints, config.yaml, metrics.jsonl,
results.json) and W&B; it gathers every rank's RNG state and carried LSTM state into last.pt
and hands them back out on resume, so the other ranks need neither a shared file system nor
write access. A resume needs the same number of processes as the run that wrote last.pt.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DataError, UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the data-parallel processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # index on this machine (the GPU it uses)
    local_world_size: int = 1  # processes on this machine

    @property
    def enabled(self) -> bool:
        """True for a data-parallel run of two or more processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes files and logs."""
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(self.world_size // max(self.local_world_size, 1), 1)


def from_environment(environ: Optional[Mapping[str, str]] = None) -> DistContext:
    """The context torchrun describes in the environment; one process when WORLD_SIZE is
    unset or 1."""
    env = os.environ if environ is None else environ

    def number(name: str, default: Optional[int]) -> int:
        text = env.get(name)
        if text is None:
            if default is None:
                raise UserError(
                    f"WORLD_SIZE={env.get('WORLD_SIZE')} is set but {name} is not, so this process "
                    "does not know its place among the data-parallel processes. Start "
                    "data-parallel training with torchrun (e.g. torchrun --nproc_per_node=2 "
                    "train.py RECIPE), or unset WORLD_SIZE for a single process."
                )
            return default
        try:
            return int(text)
        except ValueError:
            raise UserError(f"The environment variable {name}={text!r} is not a whole number; "
                            "torchrun sets it. Unset it or start the run with torchrun.") from None

    world_size = number("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext()
    rank = number("RANK", None)
    local_rank = number("LOCAL_RANK", None)
    local_world_size = number("LOCAL_WORLD_SIZE", world_size)
    if not (0 <= rank < world_size and 0 <= local_rank < local_world_size):
        raise UserError(
            f"torchrun's environment is inconsistent: RANK={rank}, LOCAL_RANK={local_rank}, "
            f"WORLD_SIZE={world_size}, LOCAL_WORLD_SIZE={local_world_size}. Start the run with "
            "torchrun rather than setting these variables by hand."
        )
    return DistContext(rank, world_size, local_rank, local_world_size)


def check_batch_sizes(batch_size: int, eval_batch_size: int, world_size: int) -> None:
    """Raise DataError unless both (global) batch sizes split evenly across the processes."""
    for key, value in (("data.batch_size", batch_size), ("data.eval_batch_size", eval_batch_size)):
        if value % world_size:
            raise DataError(
                f"{key}={value} is not divisible by the {world_size} data-parallel processes, "
                "so the batch cannot be split evenly among them (batch sizes are global: each "
                f"process takes {key}/{world_size} sequences). Set {key} to a multiple of "
                f"{world_size}, or start a different number of processes."
            )


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo otherwise); a no-op for one process."""
    if not ctx.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # object collectives use the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown(ranks_end_together: bool = False) -> None:
    """Leave the process group, if this process joined one.

    ``ranks_end_together``: every rank is known to reach this call (training returned
    normally, or all ranks raise rank 0's error). Then gloo ranks first meet at a barrier,
    because a rank that tears its connections down while a peer is still finishing the last
    collective makes that peer abort. Otherwise (one rank failed on its own) no barrier: it
    could wait for a rank that is stuck in a collective, and torchrun stops the others once
    this one exits.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if ranks_end_together and dist.get_backend() == "gloo":
        dist.barrier()
    dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for the generators of ``rank``, derived from the run seed (every rank,
    rank 0 included, gets one unrelated to the stream that initialised the weights)."""
    digest = hashlib.sha256(f"lm_flipout.rank:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across_ranks(ctx: DistContext, *values: float) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64; identical on every rank)."""
    if not ctx.enabled:
        return list(values)
    total = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=_collective_device())
    dist.all_reduce(total)
    return total.tolist()


def gather_to_main(ctx: DistContext, value: Any) -> Optional[list[Any]]:
    """Every rank's ``value`` in rank order on rank 0 (None elsewhere)."""
    if not ctx.enabled:
        return [value]
    gathered: Optional[list[Any]] = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling, else a RuntimeError that names it."""
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 (whatever fails to pickle is described instead)
        copy = None
    if type(copy) is type(error) and str(copy) == str(error):
        return copy
    return RuntimeError(f"rank 0 failed with {type(error).__name__}: {error}")


def on_main(ctx: DistContext, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only and return its result on every rank; when it raises, every
    rank raises the same error (marked ``raised_on_main``, on rank 0 too), so no rank waits
    for a collective that will never come."""
    if not ctx.enabled:
        return work()
    payload: list[Any] = [None]
    if ctx.is_main:
        try:
            payload = [(True, work())]
        except Exception as err:
            dist.broadcast_object_list([(False, _portable(err))], src=0)
            err.raised_on_main = True
            raise
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        value.raised_on_main = True
        raise value
    return value


def main_first(ctx: DistContext, work: Callable[[], T]) -> T:
    """Run ``work`` on each machine's first process before the others (which then find the
    data cache filled); an error there reaches the others when they repeat the work."""
    if not ctx.enabled:
        return work()
    if ctx.local_rank == 0:
        try:
            return work()
        finally:
            dist.barrier()
    dist.barrier()
    return work()


def broadcast_module(ctx: DistContext, module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)
