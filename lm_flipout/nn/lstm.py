"""The LSTM stack whose input and recurrent matrices can carry `WeightNoise`, with
``torch.nn.LSTM``'s interface: its arguments, parameter names, state shapes and input layouts
(batch-first, unbatched, `PackedSequence`), so a trained ``torch.nn.LSTM`` loads into it and
back.

Gates follow ``torch.nn.LSTM`` (order i, f, g, o; two biases). The edge converts the input
to (T, B, F) once per call (`lm_flipout.nn.packing`); the reverse direction of a
bidirectional layer runs on each sequence reversed within its length. When no sequence sees
its own weights (no noise, or shared noise) and no hidden-state mask, recurrent-dropout or
zoneout mask applies, the fused ``torch.nn.LSTM`` kernel runs with the perturbed weights
passed in functionally, unless a backend is named (see `lm_flipout.nn.backends`); otherwise
the recurrence runs step by step on the chosen backend, with the input product for all steps
done first as one matmul. Recurrent dropout and zoneout run on the backends that implement
them (the reference; the CPU backend refuses them, so automatic choice runs the reference);
in eval, recurrent dropout is the plain cell (fused path), while zoneout's expectation still
runs step by step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .backends import Backend, BackendChoice, requested_backend
from .cell import CellOptions
from .cell_masks import CallMasks, CellMasks
from .dropout import LockedDropout, NaiveDropout, activation_dropout, check_rate
from .functional import lstm_layer
from .independent import independent_recurrence
from .noise import NoiseSample, WeightNoise
from .packing import (
    Layout,
    restore_layout,
    reverse_within_lengths,
    sample_rows,
    segments,
    time_major,
)

State = tuple[Union[Tensor, list[Tensor]], Union[Tensor, list[Tensor]]]


@dataclass
class LayerSamples:
    """The noise one layer drew in one forward call (None where that matrix is clean)."""

    input: Optional[NoiseSample] = None
    recurrent: Optional[NoiseSample] = None


def per_sequence_term(x: Tensor, weight: Tensor, sample: NoiseSample) -> Tensor:
    """The noise part of x Wᵀ for x (..., B, in) under a per-sequence estimator: flipout's
    ((x ∘ s) ΔŴᵀ) ∘ r (paper eq. 5) or, for ``independent``, x ΔW_nᵀ with each sequence's
    own (out, in) ΔW_n."""
    if sample.independent:  # ΔW_n: (B, out, in)
        return torch.einsum("...bi,boi->...bo", x, sample.delta(weight))
    return F.linear(x * sample.in_signs, sample.delta(weight)) * sample.out_signs


def batch_weight(weight: Tensor, sample: Optional[NoiseSample]) -> Tensor:
    """The weight every sequence of the batch shares: W̄ + ΔW for a shared sample, else W̄
    (no noise, or noise that is per sequence and applied on top)."""
    if sample is not None and sample.shared:
        return weight + sample.delta(weight)
    return weight


def perturbed_linear(
    x: Tensor, weight: Tensor, sample: Optional[NoiseSample], bias: Optional[Tensor] = None
) -> Tensor:
    """``x Wᵀ (+ bias)`` for x (..., B, in) under the sample's estimator (flipout: paper
    eq. 5); the bias goes into the same product (one pass over the output, not two)."""
    out = F.linear(x, batch_weight(weight, sample), bias)
    if sample is None or sample.shared:
        return out
    return out + per_sequence_term(x, weight, sample)


class LayerWeights(NamedTuple):
    """The parameters of one direction of one layer (``weight_ih_l{k}``, ``weight_hh_l{k}``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}``, with ``_reverse`` for the reverse direction); the
    biases are None for ``bias=False``."""

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Optional[Tensor] = None
    bias_hh: Optional[Tensor] = None

    @property
    def bias(self) -> Tensor:
        """b = b_ih + b_hh, the one bias of the cell (zeros without biases)."""
        if self.bias_ih is None:
            return self.weight_ih.new_zeros(self.weight_ih.shape[0])
        return self.bias_ih + self.bias_hh


class LSTMLayer(nn.Module):
    """One direction of one LSTM layer: its weight noise, hidden-state dropout and
    ``cell_masks`` (recurrent dropout and zoneout, `CellMasks`); the weights it runs are its
    stack's parameters, passed in as `LayerWeights`. ``backend`` (a name or `Backend`) runs
    every call on that backend instead of choosing.

    Sampling schedule: in training every forward call, i.e. every truncated-BPTT window,
    draws its weight noise afresh (one base perturbation ΔŴ for the batch; for flipout, one
    sign pair (r, s) per sequence), held over the window's time steps; the locked-dropout
    masks of the stack are drawn afresh per call in the same way. The hidden state carries
    over from one window to the next, the noise and masks do not. In eval the layer uses W̄
    unless Monte-Carlo sampling is on."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        recurrent_noise: Optional[WeightNoise] = None,
        input_noise: Optional[WeightNoise] = None,
        hidden_dropout: float = 0.0,
        backend: BackendChoice = None,
        cell_masks: Optional[CellMasks] = None,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.backend = backend
        self.recurrent_noise, self.input_noise = recurrent_noise, input_noise
        self.hidden_dropout = LockedDropout(hidden_dropout)
        self.cell_masks = cell_masks if cell_masks is not None else CellMasks()
        self.sample_in_eval = False

    def draw(self, batch_size: int, weights: LayerWeights) -> LayerSamples:
        """Fresh noise for one forward call (training, or eval with MC sampling)."""
        if not (self.training or self.sample_in_eval):
            return LayerSamples()
        return LayerSamples(
            input=(self.input_noise.sample(weights.weight_ih, batch_size)
                   if self.input_noise else None),
            recurrent=(self.recurrent_noise.sample(weights.weight_hh, batch_size)
                       if self.recurrent_noise else None),
        )

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor], samples: LayerSamples,
        weights: LayerWeights, batch_sizes: Optional[Tensor] = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (T, B, in), state (B, H) each → outputs (T, B, H) and the final (h, c).

        With ``batch_sizes`` (a packed batch, padded in sorted order: see
        `lm_flipout.nn.packing`) each run of steps with the same number of sequences is one
        call on that prefix of the batch, with the same noise and masks; a sequence that has
        ended keeps its state and has zero outputs."""
        hidden_mask = (
            self.hidden_dropout.mask(x.shape[1], self.hidden_size, x)
            if self.hidden_dropout.active
            else None
        )
        masks = (self.cell_masks.draw(x.shape[0], x.shape[1], self.hidden_size, x)
                 if self.cell_masks.in_use else CallMasks())
        backend = requested_backend(self.backend)  # chosen once for the whole call
        if batch_sizes is None:
            return self._run(x, state, samples, weights, hidden_mask, masks, backend)
        h, c = state
        pieces = []
        for start, stop, rows in segments(batch_sizes):
            part = slice(0, rows)
            y, (h_part, c_part) = self._run(
                x[start:stop, part], (h[part], c[part]),
                LayerSamples(sample_rows(samples.input, part),
                             sample_rows(samples.recurrent, part)),
                weights, None if hidden_mask is None else hidden_mask[part],
                CallMasks(*(None if m is None else m[start:stop, part] for m in masks)),
                backend)
            pieces.append(F.pad(y, (0, 0, 0, x.shape[1] - rows)))
            h, c = torch.cat([h_part, h[rows:]]), torch.cat([c_part, c[rows:]])
        return torch.cat(pieces), (h, c)

    def _run(
        self, x: Tensor, state: tuple[Tensor, Tensor], samples: LayerSamples,
        weights: LayerWeights, hidden_mask: Optional[Tensor], masks: CallMasks,
        backend: Optional[Backend],
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One call of the recurrence on the fused kernel or a backend."""
        per_sequence = any(s is not None and not s.shared
                           for s in (samples.input, samples.recurrent))
        masked = hidden_mask is not None or any(m is not None for m in masks)
        # the fused op under torch.compile saves optional tensors AOTAutograd cannot take: a
        # compiled layer runs the reference cell, which Inductor fuses itself
        if (backend is None and not per_sequence and not masked
                and not torch.compiler.is_compiling()):
            return self._fused_forward(x, state, samples, weights)
        bias = weights.bias
        if samples.recurrent is not None and samples.recurrent.independent:
            input_terms = perturbed_linear(x, weights.weight_ih, samples.input, bias)
            options = CellOptions(hidden_mask=hidden_mask, **masks._asdict())
            return independent_recurrence(input_terms, state, weights.weight_hh,
                                          samples.recurrent, options)
        extra, flipout = None, {}
        if samples.input is not None and not samples.input.shared:
            extra = per_sequence_term(x, weights.weight_ih, samples.input)
        if samples.recurrent is not None and not samples.recurrent.shared:  # flipout
            flipout = dict(unit=samples.recurrent.unit,
                           out_signs=samples.recurrent.out_signs,
                           in_signs=samples.recurrent.in_signs)
        return lstm_layer(x, batch_weight(weights.weight_ih, samples.input), bias, state,
                          batch_weight(weights.weight_hh, samples.recurrent),
                          mask=hidden_mask, extra=extra, backend=backend, **flipout,
                          **masks._asdict())

    def _fused_forward(
        self, x: Tensor, state: tuple[Tensor, Tensor], samples: LayerSamples,
        weights: LayerWeights,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``torch.nn.LSTM``'s kernel (what its forward calls) on one layer and direction."""
        params = [batch_weight(weights.weight_ih, samples.input),
                  batch_weight(weights.weight_hh, samples.recurrent)]
        has_biases = weights.bias_ih is not None
        if has_biases:
            params += [weights.bias_ih, weights.bias_hh]
        h0, c0 = state
        y, h, c = torch.lstm(x, (h0[None], c0[None]), params, has_biases, 1, 0.0,
                             self.training, False, False)
        return y, (h[0], c[0])


# a parameter's key in checkpoints written before the stack used torch.nn.LSTM's names
_EARLIER_KEY = re.compile(r"layers\.(?P<layer>\d+)\.fused\.(?P<name>(weight|bias)_(ih|hh))_l0")


class LSTM(nn.Module):
    """``torch.nn.LSTM`` with optional weight noise and cell regularizers.

    ``output, (h_n, c_n) = lstm(input, (h_0, c_0))`` with ``torch.nn.LSTM``'s arguments,
    shapes and parameter names: input (T, B, input_size), or (B, T, input_size) with
    ``batch_first``, or unbatched (T, input_size), or a `PackedSequence` (sorted or not,
    which gives a `PackedSequence` output); h and c (num_layers * num_directions, B, H), or
    (num_layers * num_directions, H) for unbatched input; output (..., num_directions * H).
    ``dropout`` is ``torch.nn.LSTM``'s: a fresh mask per element and step on the outputs of
    every layer but the last. ``proj_size`` is refused (use ``output_size`` or a Linear).

    The rest is this toolkit's: ``recurrent_noise`` and ``input_noise`` (`WeightNoise`) on
    W_hh and W_ih; ``hidden_dropout`` (locked, on h_{t-1}); ``between_dropout`` between layers
    of ``dropout_kind`` (locked per sequence, or naive); ``output_size`` gives the last layer
    its own size (AWD-LSTM style tying), and h and c are then lists of per-layer (B, size)
    tensors. ``backend`` (a name or `Backend`, see `lm_flipout.nn.backends`) is given to every
    layer. ``cell_dropout`` is recurrent dropout on the cell update (Semeniuta et al. 2016), a
    fresh mask per step unless ``cell_dropout_per_step=False``; ``zoneout_cell`` and
    ``zoneout_hidden`` are zoneout's rates on c and h (Krueger et al. 2017); see `CellMasks`.
    Every forward call (one truncated-BPTT window) draws fresh weight noise, flipout signs
    and locked-dropout masks, each direction its own, while the state passed in carries over
    (see `LSTMLayer`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        recurrent_noise: Optional[WeightNoise] = None,
        input_noise: Optional[WeightNoise] = None,
        hidden_dropout: float = 0.0,
        between_dropout: float = 0.0,
        dropout_kind: str = "locked",
        output_size: Optional[int] = None,
        backend: BackendChoice = None,
        cell_dropout: float = 0.0,
        cell_dropout_per_step: bool = True,
        zoneout_cell: float = 0.0,
        zoneout_hidden: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LSTM: {name}={value!r} must be a positive integer.")
        for name, noise in (("recurrent_noise", recurrent_noise), ("input_noise", input_noise)):
            if noise is not None and not isinstance(noise, WeightNoise):
                raise ValueError(f"LSTM: {name} must be a WeightNoise or None, got {noise!r}.")
        if proj_size:
            raise ValueError(
                f"LSTM: proj_size={proj_size!r} is not supported: the flipout cell has no "
                "projection of h. Use proj_size=0, and output_size=N for a last layer of N "
                "units, or a torch.nn.Linear on the outputs.")
        between = activation_dropout(dropout_kind, between_dropout)
        if check_rate(dropout, "LSTM: dropout") and between_dropout:
            raise ValueError(
                f"LSTM: dropout={dropout!r} and between_dropout={between_dropout!r} both drop "
                "the outputs between layers; give one of them (dropout is torch.nn.LSTM's "
                "per-element dropout, between_dropout follows dropout_kind).")
        sizes = [hidden_size] * num_layers
        if output_size is not None:
            sizes[-1] = output_size
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout, self.proj_size = float(dropout), 0
        self.sizes = sizes
        self._weight_names: list[tuple[str, ...]] = []
        layers = []
        directions = self.num_directions
        for index, (n_in, n_out) in enumerate(
                zip([input_size] + [directions * size for size in sizes[:-1]], sizes)):
            for direction in range(directions):
                suffix = f"l{index}" + ("_reverse" if direction else "")
                shapes = {f"weight_ih_{suffix}": (4 * n_out, n_in),
                          f"weight_hh_{suffix}": (4 * n_out, n_out)}
                if bias:
                    shapes.update({f"bias_ih_{suffix}": (4 * n_out,),
                                   f"bias_hh_{suffix}": (4 * n_out,)})
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape)))
                self._weight_names.append(tuple(shapes))
                layers.append(LSTMLayer(n_in, n_out, recurrent_noise, input_noise,
                                        hidden_dropout, backend,
                                        CellMasks(cell_dropout, zoneout_cell, zoneout_hidden,
                                                  cell_dropout_per_step)))
        self.layers = nn.ModuleList(layers)  # layer * num_directions + direction, as h_n
        self.between = NaiveDropout(dropout) if dropout else between
        self.last_samples: list[LayerSamples] = []
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def flatten_parameters(self) -> None:
        """Nothing to do: kept so that code written for ``torch.nn.LSTM`` runs unchanged (the
        weights stay separate tensors, as the noise is drawn per matrix)."""

    def extra_repr(self) -> str:
        defaults = dict(num_layers=1, bias=True, batch_first=False, dropout=0.0,
                        bidirectional=False)
        changed = [f"{key}={getattr(self, key)}" for key, default in defaults.items()
                   if getattr(self, key) != default]
        return ", ".join([f"{self.input_size}, {self.hidden_size}", *changed])

    def layer_weights(self, index: int) -> LayerWeights:
        """The parameters of ``layers[index]`` (layer * num_directions + direction)."""
        return LayerWeights(*(getattr(self, name) for name in self._weight_names[index]))

    def initial_state(self, batch_size: int, like: Tensor) -> State:
        zeros = [like.new_zeros(batch_size, layer.hidden_size) for layer in self.layers]
        return self._pack(zeros), self._pack([z.clone() for z in zeros])

    def _pack(self, per_layer: list[Tensor]) -> Union[Tensor, list[Tensor]]:
        return torch.stack(per_layer) if len(set(self.sizes)) == 1 else per_layer

    def forward(
        self,
        input: Union[Tensor, PackedSequence],
        hx: Optional[State] = None,
        samples: Optional[Sequence[LayerSamples]] = None,
    ) -> tuple[Union[Tensor, PackedSequence], State]:
        """Run the stack. ``samples`` re-uses an earlier draw (see ``last_samples``: one
        `LayerSamples` per entry of ``layers``, rows in the caller's batch order)."""
        x, layout = self._time_major(input)
        batch_size = x.shape[1]
        h0, c0 = self._entry_state(hx, layout, batch_size, x)
        if samples is None:
            samples = [layer.draw(batch_size, self.layer_weights(index))
                       for index, layer in enumerate(self.layers)]
        if len(samples) != len(self.layers):
            raise ValueError(f"LSTM: samples must hold one LayerSamples per layer and "
                             f"direction ({len(self.layers)}), got {len(samples)}.")
        self.last_samples = list(samples)
        order = layout.sorted_indices
        if order is not None:  # a packed batch runs in sorted order
            samples = [LayerSamples(sample_rows(s.input, order), sample_rows(s.recurrent, order))
                       for s in samples]
        hs, cs = [], []
        for depth in range(self.num_layers):
            if depth > 0:
                x = self.between(x)
            outputs = []
            for direction in range(self.num_directions):
                index = depth * self.num_directions + direction
                x_d = reverse_within_lengths(x, layout.lengths) if direction else x
                y, (h, c) = self.layers[index](x_d, (h0[index], c0[index]), samples[index],
                                               self.layer_weights(index), layout.batch_sizes)
                outputs.append(reverse_within_lengths(y, layout.lengths) if direction else y)
                hs.append(h)
                cs.append(c)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        return restore_layout(x, layout), (self._exit_state(hs, layout),
                                           self._exit_state(cs, layout))

    def _time_major(self, input: Union[Tensor, PackedSequence]) -> tuple[Tensor, Layout]:
        """The input as (T, B, input_size) and its layout, or a ValueError."""
        if not isinstance(input, (Tensor, PackedSequence)) or (
                isinstance(input, Tensor) and input.dim() not in (2, 3)):
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(
                f"LSTM: input x must have shape (T, B, {self.input_size}), "
                f"(B, T, {self.input_size}) with batch_first, (T, {self.input_size}) "
                f"unbatched, or be a PackedSequence; got {shape}.")
        x, layout = time_major(input, self.batch_first)
        if x.shape[2] != self.input_size:
            raise ValueError(f"LSTM: input x must have {self.input_size} features in its last "
                             f"dimension, got shape {tuple(x.shape)} (as (T, B, features)).")
        return x, layout

    def _entry_state(self, hx: Optional[State], layout: Layout, batch_size: int,
                     like: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(h_0, c_0) as per-entry lists of (B, size) tensors, in the run's batch order."""
        if hx is None:
            h0, c0 = self.initial_state(batch_size, like)
            return list(h0), list(c0)
        entries = len(self.layers)
        batch = "" if layout.unbatched else f"{batch_size}, "
        expected = f"({entries}, {batch}{self.hidden_size})"
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise ValueError(f"LSTM: the state must be a pair (h_0, c_0), each of shape "
                             f"{expected}; got {type(hx).__name__}.")
        state = []
        for part in hx:
            if len(part) != entries:
                raise ValueError(f"LSTM: state (h_0, c_0) must each have shape {expected} "
                                 f"(num_layers * num_directions first), got {len(part)} entries.")
            rows = [t.unsqueeze(0) if layout.unbatched else t for t in part]
            for t, layer in zip(rows, self.layers):
                if tuple(t.shape) != (batch_size, layer.hidden_size):
                    raise ValueError(
                        f"LSTM: state (h_0, c_0) must each have shape {expected} for input "
                        f"batch {batch_size}; got an entry of shape "
                        f"{tuple(t.shape[1:] if layout.unbatched else t.shape)}.")
            if layout.sorted_indices is not None:
                rows = [t.index_select(0, layout.sorted_indices) for t in rows]
            state.append(rows)
        return state[0], state[1]

    def _exit_state(self, per_entry: list[Tensor], layout: Layout) -> Union[Tensor, list[Tensor]]:
        """Final states back in the caller's batch order and layout."""
        if layout.unsorted_indices is not None:
            per_entry = [t.index_select(0, layout.unsorted_indices) for t in per_entry]
        if layout.unbatched:
            per_entry = [t.squeeze(0) for t in per_entry]
        return self._pack(per_entry)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Keys of checkpoints written before the stack took ``torch.nn.LSTM``'s names
        (``layers.{k}.fused.weight_ih_l0``) load as ``weight_ih_l{k}``."""
        for key in [k for k in state_dict if k.startswith(prefix + "layers.")]:
            earlier = _EARLIER_KEY.fullmatch(key[len(prefix):])
            if earlier:
                name = f"{prefix}{earlier['name']}_l{earlier['layer']}"
                state_dict[name] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self, forget_bias: float = 0.0, orthogonal: bool = False) -> None:
        """``nn.LSTM``'s uniform init (bound 1/√size of each layer), then optional orthogonal
        recurrent gate blocks and a forget-gate bias (split evenly between the two biases)."""
        if forget_bias and not self.bias:
            raise ValueError(f"LSTM: forget_bias={forget_bias!r} needs biases (bias=True).")
        for index, layer in enumerate(self.layers):
            weights, size = self.layer_weights(index), layer.hidden_size
            with torch.no_grad():
                for weight in weights:
                    if weight is not None:
                        weight.uniform_(-1 / math.sqrt(size), 1 / math.sqrt(size))
                if orthogonal:
                    for block in weights.weight_hh.split(size, dim=0):
                        nn.init.orthogonal_(block)
                if forget_bias:
                    for bias in (weights.bias_ih, weights.bias_hh):
                        bias[size : 2 * size] = forget_bias / 2


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows."""
    h, c = state
    if isinstance(h, Tensor):
        return h.detach(), c.detach()
    return [t.detach() for t in h], [t.detach() for t in c]
