"""Token ids -> (T, B) batches of inputs and next-token targets.

Stream mode (`StreamBatches`, carries_state=True): the split is laid out as B parallel
contiguous streams and walked in truncated-BPTT windows; the model's state carries from one
window to the next. Windows have length `bptt` or, with variable_bptt, AWD-LSTM's random
lengths: base = bptt with probability 0.95 else bptt/2, length = round(N(base, 5)), at least
5, at most bptt+20, and never past the end. Lengths are drawn from a torch.Generator seeded
from (seed, epoch) alone, so resuming needs only (seed, epoch, position): the window
schedule is recomputed and the pass continues at the window starting at `position`, giving
exactly the windows an uninterrupted pass would.

Sequence mode (`SequenceBatches`, carries_state=False): independent sequences of bptt+1
tokens; sequence k holds tokens [k*bptt, k*bptt + bptt] (consecutive sequences share one
boundary token, so every token but the first is a target exactly once). Each epoch they are
shuffled by a generator seeded from (seed, epoch) and grouped B at a time (an incomplete
last group is dropped); `position` is the batch index, and resuming needs only
(seed, epoch, position).

Data parallelism: batch sizes are global. Rank r of W takes the batch columns
[r*B/W, (r+1)*B/W) of every batch, so the ranks' batches side by side equal the
single-process batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Union

import torch

from lm_flipout.data.config import DataConfig
from lm_flipout.errors import DataError

MIN_VARIABLE_LEN = 5
MAX_EXTRA_LEN = 20
HALF_BASE_PROB = 0.05
LEN_STD = 5.0


@dataclass(frozen=True)
class Batch:
    """One step's data."""

    inputs: torch.Tensor  # (T, B) token ids
    targets: torch.Tensor  # (T, B): the token after each input
    lr_scale: float  # multiply the learning rate by this (T / bptt for variable windows, else 1)
    position: int  # stream mode: stream row of inputs[0]; sequence mode: batch index


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from (seed, epoch)."""
    digest = hashlib.sha256(f"lm_flipout.batching:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _local_columns(batch_size: int, rank: int, world_size: int, batch_key: str) -> tuple[int, int]:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if batch_size % world_size:
        raise DataError(
            f"{batch_key}={batch_size} is not divisible by the {world_size} data-parallel "
            f"processes, so the batch cannot be split evenly. Set {batch_key} to a multiple "
            f"of {world_size}."
        )
    local = batch_size // world_size
    return rank * local, (rank + 1) * local


def make_streams(
    tokens: torch.Tensor,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    batch_key: str = "data.batch_size",
) -> torch.Tensor:
    """(n_rows, batch_size // world_size) stream layout: the tail beyond n_rows*batch_size is
    dropped, column b of the global layout holds tokens [b*n_rows, (b+1)*n_rows), and rank r
    keeps the global columns [r*B/W, (r+1)*B/W)."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    lo, hi = _local_columns(batch_size, rank, world_size, batch_key)
    n_rows = tokens.numel() // batch_size
    layout = tokens[: n_rows * batch_size].view(batch_size, n_rows).t()
    return layout[:, lo:hi].contiguous()


def window_schedule(
    n_rows: int, bptt: int, variable: bool = False, seed: int = 0, epoch: int = 0
) -> list[tuple[int, int]]:
    """(start row, length) of every BPTT window of one pass over `n_rows` stream rows."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch)) if variable else None
    windows = []
    start = 0
    while start < n_rows - 1:
        length = bptt
        if gen is not None:
            base = bptt if torch.rand((), generator=gen).item() >= HALF_BASE_PROB else bptt / 2
            drawn = round(base + LEN_STD * torch.randn((), generator=gen).item())
            length = min(max(MIN_VARIABLE_LEN, drawn), bptt + MAX_EXTRA_LEN)
        length = min(length, n_rows - 1 - start)
        windows.append((start, length))
        start += length
    return windows


def _too_small(
    split: str, n_tokens: int, batch_size: int, bptt: int, batch_key: str, need: str
) -> DataError:
    return DataError(
        f"The {split} split has {n_tokens} tokens, too few for {batch_key}={batch_size} and "
        f"data.bptt={bptt}: {need}. Lower {batch_key} or data.bptt, or use a larger {split} split."
    )


class StreamBatches:
    """Truncated-BPTT windows over parallel streams (see module docstring)."""

    carries_state = True

    def __init__(
        self,
        tokens: torch.Tensor,
        batch_size: int,
        bptt: int,
        *,
        variable: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        batch_key: str = "data.batch_size",
    ) -> None:
        self.streams = make_streams(tokens, batch_size, rank, world_size, batch_key)
        self.bptt, self.variable, self.seed, self.split = bptt, variable, seed, split
        if self.streams.size(0) < bptt + 1:
            need = (
                f"each of the {batch_size} streams needs at least bptt+1={bptt + 1} tokens "
                f"({batch_size * (bptt + 1)} in all)"
            )
            raise _too_small(split, tokens.numel(), batch_size, bptt, batch_key, need)

    def windows(self, epoch: int = 0) -> list[tuple[int, int]]:
        """(position, length) of each batch of `epoch`."""
        return window_schedule(self.streams.size(0), self.bptt, self.variable, self.seed, epoch)

    def num_batches(self, epoch: int = 0) -> int:
        """Number of batches in `epoch`."""
        return len(self.windows(epoch))

    def iterate(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, beginning with the window at row `start` (a position
        previously yielded by this pass, or the end of the pass)."""
        windows = self.windows(epoch)
        starts = [s for s, _ in windows]
        end = windows[-1][0] + windows[-1][1]
        if start == end:
            return
        if start not in starts:
            raise DataError(
                f"Cannot resume the {self.split} pass of epoch {epoch} at position {start}: no "
                f"BPTT window starts there (seed {self.seed}, {self.streams.size(0)} rows). The "
                "checkpoint was written with different data settings (data.bptt, data.batch_size, "
                "data.variable_bptt or the corpus itself); resume with the run's own settings."
            )
        for pos, length in windows[starts.index(start) :]:
            lr_scale = length / self.bptt if self.variable else 1.0
            inputs = self.streams[pos : pos + length]
            targets = self.streams[pos + 1 : pos + 1 + length]
            yield Batch(inputs, targets, lr_scale, pos)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()


class SequenceBatches:
    """Shuffled independent fixed-length sequences (see module docstring)."""

    carries_state = False

    def __init__(
        self,
        tokens: torch.Tensor,
        batch_size: int,
        seq_len: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        batch_key: str = "data.batch_size",
    ) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        self.lo, self.hi = _local_columns(batch_size, rank, world_size, batch_key)
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.shuffle, self.seed, self.split = shuffle, seed, split
        self.n_sequences = max(tokens.numel() - 1, 0) // seq_len
        if self.n_sequences < batch_size:
            need = (
                f"one batch needs {batch_size} sequences of bptt+1={seq_len + 1} tokens "
                f"({batch_size * seq_len + 1} in all)"
            )
            raise _too_small(split, tokens.numel(), batch_size, seq_len, batch_key, need)
        self._offsets = torch.arange(seq_len + 1)

    def num_batches(self, epoch: int = 0) -> int:
        """Number of batches per epoch (the same every epoch)."""
        return self.n_sequences // self.batch_size

    def order(self, epoch: int = 0) -> torch.Tensor:
        """Sequence indices in the order `epoch` visits them."""
        if not self.shuffle:
            return torch.arange(self.n_sequences)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.n_sequences, generator=gen)

    def iterate(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from batch index `start` on."""
        n = self.num_batches(epoch)
        if not 0 <= start <= n:
            raise DataError(
                f"Cannot resume the {self.split} pass of epoch {epoch} at batch {start}: the pass "
                f"has {n} batches. The checkpoint was written with different data settings "
                "(data.bptt, data.batch_size or the corpus itself); resume with the run's own "
                "settings."
            )
        order = self.order(epoch)
        for j in range(start, n):
            chosen = order[j * self.batch_size + self.lo : j * self.batch_size + self.hi]
            rows = self.tokens[(chosen * self.seq_len).unsqueeze(1) + self._offsets].t()
            yield Batch(rows[:-1], rows[1:], 1.0, j)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()


def make_batches(
    tokens: torch.Tensor,
    cfg: DataConfig,
    *,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
) -> Union[StreamBatches, SequenceBatches]:
    """Batches as `cfg` asks. Training: data.batch_size, data.bptt_mode, data.variable_bptt
    and shuffling. Evaluation: data.test_batch_size for the "test" split, else
    data.eval_batch_size; fixed windows, no shuffling, and streams that carry the state across
    the whole split unless data.eval_protocol is "reset" (independent sequences)."""
    if train:
        batch_size, batch_key = cfg.batch_size, "data.batch_size"
    elif split == "test":
        batch_size, batch_key = cfg.test_batch_size, "data.test_batch_size"
    else:
        batch_size, batch_key = cfg.eval_batch_size, "data.eval_batch_size"
    common = dict(seed=seed, rank=rank, world_size=world_size, split=split, batch_key=batch_key)
    independent = cfg.bptt_mode == "sequences" if train else cfg.eval_protocol == "reset"
    if independent:
        return SequenceBatches(tokens, batch_size, cfg.bptt, shuffle=train, **common)
    variable = cfg.variable_bptt and train
    return StreamBatches(tokens, batch_size, cfg.bptt, variable=variable, **common)
