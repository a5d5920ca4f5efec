"""The LSTM stack whose input and recurrent matrices can carry `WeightNoise`.

Gates follow ``torch.nn.LSTM`` (order i, f, g, o; two biases), so weights copy across.
When no sequence sees its own weights (no noise, or shared noise) and no hidden-state mask,
recurrent-dropout or zoneout mask applies, the fused ``torch.nn.LSTM`` kernel runs with the
perturbed weights passed in functionally, unless a backend is named (see
`lm_flipout.nn.backends`); otherwise the recurrence runs step by step on the chosen backend,
with the input product for all steps done first as one matmul. Recurrent dropout and zoneout
run on the backends that implement them (the reference; the CPU backend refuses them, so
automatic choice runs the reference); in eval, recurrent dropout is the plain cell (fused
path), while zoneout's expectation still runs step by step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .backends import BackendChoice, requested_backend
from .cell import CellOptions
from .cell_masks import CallMasks, CellMasks
from .dropout import LockedDropout, activation_dropout
from .functional import lstm_layer
from .independent import independent_recurrence
from .noise import NoiseSample, WeightNoise

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


class LSTMLayer(nn.Module):
    """One LSTM layer. Parameters live in a one-layer ``nn.LSTM`` used as the fused path;
    ``backend`` (a name or `Backend`) runs every call on that backend instead of choosing;
    ``cell_masks`` draws recurrent-dropout and zoneout masks (`CellMasks`).

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
        self.fused = nn.LSTM(input_size, hidden_size, num_layers=1)
        self.recurrent_noise, self.input_noise = recurrent_noise, input_noise
        self.hidden_dropout = LockedDropout(hidden_dropout)
        self.cell_masks = cell_masks if cell_masks is not None else CellMasks()
        self.sample_in_eval = False

    @property
    def weight_ih(self) -> Tensor:
        return self.fused.weight_ih_l0

    @property
    def weight_hh(self) -> Tensor:
        return self.fused.weight_hh_l0

    @property
    def bias(self) -> Tensor:
        return self.fused.bias_ih_l0 + self.fused.bias_hh_l0

    def draw(self, batch_size: int) -> LayerSamples:
        """Fresh noise for one forward call (training, or eval with MC sampling)."""
        if not (self.training or self.sample_in_eval):
            return LayerSamples()
        return LayerSamples(
            input=self.input_noise.sample(self.weight_ih, batch_size) if self.input_noise else None,
            recurrent=(
                self.recurrent_noise.sample(self.weight_hh, batch_size)
                if self.recurrent_noise
                else None
            ),
        )

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor], samples: LayerSamples
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (T, B, in), state (B, H) each → outputs (T, B, H) and the final (h, c)."""
        hidden_mask = (
            self.hidden_dropout.mask(x.shape[1], self.hidden_size, x)
            if self.hidden_dropout.active
            else None
        )
        masks = (self.cell_masks.draw(x.shape[0], x.shape[1], self.hidden_size, x)
                 if self.cell_masks.in_use else CallMasks())
        per_sequence = any(s is not None and not s.shared
                           for s in (samples.input, samples.recurrent))
        backend = requested_backend(self.backend)  # chosen once for the whole call
        masked = hidden_mask is not None or any(m is not None for m in masks)
        # the fused op under torch.compile saves optional tensors AOTAutograd cannot take: a
        # compiled layer runs the reference cell, which Inductor fuses itself
        if (backend is None and not per_sequence and not masked
                and not torch.compiler.is_compiling()):
            return self._fused_forward(x, state, samples)
        if samples.recurrent is not None and samples.recurrent.independent:
            input_terms = perturbed_linear(x, self.weight_ih, samples.input, self.bias)
            options = CellOptions(hidden_mask=hidden_mask, **masks._asdict())
            return independent_recurrence(input_terms, state, self.weight_hh,
                                          samples.recurrent, options)
        extra, flipout = None, {}
        if samples.input is not None and not samples.input.shared:
            extra = per_sequence_term(x, self.weight_ih, samples.input)
        if samples.recurrent is not None and not samples.recurrent.shared:  # flipout
            flipout = dict(unit=samples.recurrent.unit,
                           out_signs=samples.recurrent.out_signs,
                           in_signs=samples.recurrent.in_signs)
        return lstm_layer(x, batch_weight(self.weight_ih, samples.input), self.bias, state,
                          batch_weight(self.weight_hh, samples.recurrent), mask=hidden_mask,
                          extra=extra, backend=backend, **flipout, **masks._asdict())

    def _fused_forward(
        self, x: Tensor, state: tuple[Tensor, Tensor], samples: LayerSamples
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        weights = {"weight_ih_l0": batch_weight(self.weight_ih, samples.input),
                   "weight_hh_l0": batch_weight(self.weight_hh, samples.recurrent)}
        h0, c0 = state
        y, (h, c) = functional_call(self.fused, weights, (x, (h0[None], c0[None])), strict=False)
        return y, (h[0], c[0])


class LSTM(nn.Module):
    """A stack of `LSTMLayer`s with optional weight noise and dropout between layers.

    ``y, (h, c) = lstm(x, state)``: x (T, B, input_size), y (T, B, last hidden size),
    h and c (num_layers, B, hidden_size); when the last layer has its own ``output_size``
    (AWD-LSTM style tying) h and c are lists of per-layer (B, size) tensors instead.
    ``backend`` (a name or `Backend`, see `lm_flipout.nn.backends`) is given to every layer.
    Every forward call (one truncated-BPTT window) draws fresh weight noise, flipout signs
    and locked-dropout masks, while the state passed in carries over (see `LSTMLayer`).
    ``cell_dropout`` is recurrent dropout on the cell update (Semeniuta et al. 2016), a fresh
    mask per step unless ``cell_dropout_per_step=False``; ``zoneout_cell`` and
    ``zoneout_hidden`` are zoneout's rates on c and h (Krueger et al. 2017); see `CellMasks`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
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
        sizes = [hidden_size] * num_layers
        if output_size is not None:
            sizes[-1] = output_size
        self.input_size = input_size
        self.sizes = sizes
        self.layers = nn.ModuleList(
            LSTMLayer(n_in, n_out, recurrent_noise, input_noise, hidden_dropout, backend,
                      CellMasks(cell_dropout, zoneout_cell, zoneout_hidden,
                                cell_dropout_per_step))
            for n_in, n_out in zip([input_size] + sizes[:-1], sizes)
        )
        self.between = activation_dropout(dropout_kind, between_dropout)
        self.last_samples: list[LayerSamples] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def initial_state(self, batch_size: int, like: Tensor) -> State:
        zeros = [like.new_zeros(batch_size, size) for size in self.sizes]
        return self._pack(zeros), self._pack([z.clone() for z in zeros])

    def _pack(self, per_layer: list[Tensor]) -> Union[Tensor, list[Tensor]]:
        return torch.stack(per_layer) if len(set(self.sizes)) == 1 else per_layer

    def forward(
        self,
        x: Tensor,
        state: Optional[State] = None,
        samples: Optional[Sequence[LayerSamples]] = None,
    ) -> tuple[Tensor, State]:
        """Run the stack. ``samples`` re-uses an earlier draw (see ``last_samples``)."""
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"LSTM: input x must have shape (T, B, {self.input_size}), got {tuple(x.shape)}."
            )
        batch_size = x.shape[1]
        h0, c0 = state if state is not None else self.initial_state(batch_size, x)
        for size, h_l, c_l in zip(self.sizes, h0, c0):
            if tuple(h_l.shape) != (batch_size, size) or tuple(c_l.shape) != (batch_size, size):
                raise ValueError(
                    f"LSTM: state (h, c) must have shape ({self.num_layers}, {batch_size}, size) "
                    f"for input batch {batch_size}; got h {tuple(h_l.shape)}, c {tuple(c_l.shape)}."
                )
        if samples is None:
            samples = [layer.draw(batch_size) for layer in self.layers]
        self.last_samples = list(samples)
        hs, cs = [], []
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = self.between(x)
            x, (h, c) = layer(x, (h0[index], c0[index]), samples[index])
            hs.append(h)
            cs.append(c)
        return x, (self._pack(hs), self._pack(cs))

    def reset_parameters(self, forget_bias: float = 0.0, orthogonal: bool = False) -> None:
        """``nn.LSTM``'s uniform init, then optional orthogonal recurrent gate blocks and a
        forget-gate bias (split evenly between the two biases)."""
        for layer in self.layers:
            layer.fused.reset_parameters()
            size = layer.hidden_size
            with torch.no_grad():
                if orthogonal:
                    for block in layer.weight_hh.split(size, dim=0):
                        nn.init.orthogonal_(block)
                if forget_bias:
                    for bias in (layer.fused.bias_ih_l0, layer.fused.bias_hh_l0):
                        bias[size : 2 * size] = forget_bias / 2


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows."""
    h, c = state
    if isinstance(h, Tensor):
        return h.detach(), c.detach()
    return [t.detach() for t in h], [t.detach() for t in c]
