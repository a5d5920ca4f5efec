"""The layouts ``torch.nn.LSTM`` accepts, converted to and from the (T, B, F) tensors the
backends run: batch-first, unbatched (T, F) and `PackedSequence` input.

A packed batch runs padded in its sorted order (longest first), so the sequences still
running at a step are a prefix of the batch: the recurrence runs one segment of steps per
distinct batch size, on that prefix, and a sequence that has ended keeps its state. Each
sequence's final state is thus the one at its own last step, and outputs past its length
are zero, as in ``torch.nn.LSTM``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .noise import NoiseSample

Rows = Union[slice, Tensor]


@dataclass(frozen=True)
class Layout:
    """How the caller's input was laid out: ``batch_first``, ``unbatched`` (T, F), or packed
    with its ``batch_sizes`` (per step), ``lengths`` (sorted order) and sort permutation."""

    batch_first: bool = False
    unbatched: bool = False
    batch_sizes: Optional[Tensor] = None
    lengths: Optional[Tensor] = None
    sorted_indices: Optional[Tensor] = None
    unsorted_indices: Optional[Tensor] = None

    @property
    def packed(self) -> bool:
        return self.batch_sizes is not None


def time_major(input: Union[Tensor, PackedSequence], batch_first: bool) -> tuple[Tensor, Layout]:
    """The input as (T, B, F), and its `Layout`. A packed batch comes out padded with zeros,
    in sorted order (longest sequence first)."""
    if isinstance(input, PackedSequence):
        padded, lengths = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes))
        return padded, Layout(batch_sizes=input.batch_sizes, lengths=lengths,
                              sorted_indices=input.sorted_indices,
                              unsorted_indices=input.unsorted_indices)
    if input.dim() == 2:
        return input.unsqueeze(1), Layout(unbatched=True)
    if batch_first and input.dim() == 3:
        return input.transpose(0, 1), Layout(batch_first=True)
    return input, Layout()


def restore_layout(output: Tensor, layout: Layout) -> Union[Tensor, PackedSequence]:
    """Outputs (T, B, F) back in the caller's layout (a packed input gives a packed output
    with the input's batch sizes and sort permutation)."""
    if layout.packed:
        data = pack_padded_sequence(output, layout.lengths).data
        return PackedSequence(data, layout.batch_sizes, layout.sorted_indices,
                              layout.unsorted_indices)
    if layout.unbatched:
        return output.squeeze(1)
    return output.transpose(0, 1) if layout.batch_first else output


def segments(batch_sizes: Tensor) -> list[tuple[int, int, int]]:
    """(start, stop, batch) for each run of steps with the same number of sequences."""
    sizes = batch_sizes.tolist()
    runs, start = [], 0
    for step in range(1, len(sizes) + 1):
        if step == len(sizes) or sizes[step] != sizes[start]:
            runs.append((start, step, sizes[start]))
            start = step
    return runs


def reverse_within_lengths(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """x (T, B, F) with each sequence's first ``lengths[b]`` steps in reverse order and its
    padding left in place (its own inverse); without lengths, the whole time axis flipped."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0]).unsqueeze(1)  # (T, 1)
    lengths = lengths.unsqueeze(0)  # (1, B)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps).to(x.device)
    return x.gather(0, index.unsqueeze(2).expand_as(x))


def sample_rows(sample: Optional[NoiseSample], rows: Rows) -> Optional[NoiseSample]:
    """The part of a noise draw that belongs to the sequences ``rows`` of the batch: their
    flipout signs, or their own unit noise for ``independent``; shared noise is everyone's,
    and so is a sign tensor of one row."""
    if sample is None or sample.shared:
        return sample
    if sample.independent:
        return dataclasses.replace(sample, unit=sample.unit[rows])
    return dataclasses.replace(sample, out_signs=_rows(sample.out_signs, rows),
                               in_signs=_rows(sample.in_signs, rows))


def _rows(tensor: Tensor, rows: Rows) -> Tensor:
    return tensor if tensor.shape[0] == 1 else tensor[rows]
