"""The stack as a drop-in torch.nn.LSTM: every layout (batch-first, unbatched, packed sorted
or not), bidirectional, stacked and given a state, against torch.nn.LSTM with the same
weights; flipout per sequence and per direction in those layouts against a torch.nn.LSTM
run on each sequence alone with that sequence's own weights (Wen et al. 2018, eq. 4)."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence, pad_packed_sequence

from lm_flipout.nn import LSTM, WeightNoise, use_backend
from lm_flipout.nn.packing import reverse_within_lengths, segments

I, H = 3, 4
LENGTHS = [3, 5, 2, 5]  # unsorted, with a tie and a sequence shorter than the rest


def make_input(kind: str, batch_first: bool, generator: torch.Generator):
    """(input for both LSTMs, batch size) for one layout."""
    if kind == "unbatched":
        return torch.randn(5, I, generator=generator), None
    sequences = [torch.randn(n, I, generator=generator) for n in LENGTHS]
    if kind == "packed unsorted":
        return pack_sequence(sequences, enforce_sorted=False), len(LENGTHS)
    if kind == "packed sorted":
        ordered = sorted(sequences, key=len, reverse=True)
        return pack_sequence(ordered, enforce_sorted=True), len(LENGTHS)
    x = torch.randn(5, len(LENGTHS), I, generator=generator)
    return (x.transpose(0, 1).contiguous() if batch_first else x), len(LENGTHS)


def flat(output):
    """A packed output as (data, batch sizes, both permutations), else the tensor."""
    if isinstance(output, PackedSequence):
        return [output.data, output.batch_sizes, output.sorted_indices, output.unsorted_indices]
    return [output]


def assert_same(ours, theirs):
    (y, (h, c)), (ry, (rh, rc)) = ours, theirs
    for a, b in zip([*flat(y), h, c], [*flat(ry), rh, rc]):
        if a is None or b is None:
            assert a is None and b is None
        elif a.is_floating_point():
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["batched", "unbatched", "packed sorted", "packed unsorted"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-first", "batch-first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_equals_torch_lstm_in_every_layout(num_layers, bidirectional, batch_first, kind):
    """No noise (training mode) on the fused path and on each backend, and flipout in eval
    (mean weights): torch.nn.LSTM's outputs and final states, with or without a given state."""
    generator = torch.Generator().manual_seed(num_layers + 2 * bidirectional + 4 * batch_first)
    args = dict(num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional)
    ref = nn.LSTM(I, H, **args)
    clean = LSTM(I, H, **args).train()
    noisy = LSTM(I, H, **args, recurrent_noise=WeightNoise("gaussian", 1.0, "flipout"),
                 input_noise=WeightNoise("dropconnect", p=0.5, estimator="flipout")).eval()
    for ours in (clean, noisy):
        ours.load_state_dict(ref.state_dict())
    x, batch = make_input(kind, batch_first, generator)
    entries = num_layers * (2 if bidirectional else 1)
    shape = (entries, H) if batch is None else (entries, batch, H)
    given = (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    for state in (None, given):
        expected = ref(x, state)
        for backend in (None, "reference", "cpu"):
            with use_backend(backend):
                assert_same(clean(x, state), expected)
        assert_same(noisy(x, state), expected)


@pytest.mark.parametrize("backend", [None, "reference", "cpu"])
def test_gradients_equal_torch_lstm_for_a_packed_bidirectional_stack(backend):
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    ours = LSTM(I, H, num_layers=2, bidirectional=True, backend=backend)
    ours.load_state_dict(ref.state_dict())
    sequences = [torch.randn(n, I, requires_grad=True) for n in LENGTHS]
    state = (torch.randn(4, len(LENGTHS), H), torch.randn(4, len(LENGTHS), H))
    losses = []
    for lstm in (ours, ref):
        y, (h, c) = lstm(pack_sequence(sequences, enforce_sorted=False), state)
        padded, _ = pad_packed_sequence(y)
        weights = torch.linspace(-1, 1, padded.numel()).view_as(padded)
        losses.append((padded * weights).sum() + h.square().sum() + c.sum())
    names = [name for name, _ in ours.named_parameters()]
    ours_grads = torch.autograd.grad(losses[0], [*ours.parameters(), *sequences])
    ref_grads = torch.autograd.grad(losses[1], [*(getattr(ref, n) for n in names), *sequences])
    for ours_grad, ref_grad in zip(ours_grads, ref_grads):
        torch.testing.assert_close(ours_grad, ref_grad, atol=1e-5, rtol=0)


def own_weights(lstm: LSTM, n: int) -> dict:
    """The torch.nn.LSTM state dict of the weights sequence n of the last call saw: for each
    layer and direction, W̄ + ΔW_n for its own sample (flipout: ΔŴ ∘ r_n s_nᵀ)."""
    weights = {name: p.detach().clone() for name, p in lstm.named_parameters()}
    for index, samples in enumerate(lstm.last_samples):
        layer, direction = divmod(index, lstm.num_directions)
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        for matrix, sample in (("weight_ih", samples.input), ("weight_hh", samples.recurrent)):
            if sample is None:
                continue
            mean = weights[matrix + suffix]
            if sample.independent:
                delta = mean * sample.unit[n]
            else:
                delta = mean * sample.unit
                if not sample.shared:
                    delta = delta * torch.outer(sample.out_signs[n], sample.in_signs[n])
            weights[matrix + suffix] = mean + delta
    return weights


@pytest.mark.parametrize("estimator", ["flipout", "independent", "shared"])
@pytest.mark.parametrize("backend", [None, "reference"], ids=["automatic", "reference"])
def test_noise_is_per_sequence_and_per_direction_under_packing(estimator, backend):
    """Each sequence of an unsorted packed batch, alone in a torch.nn.LSTM with its own
    weights, gives our outputs within its length and our h_n, c_n (its own last step)."""
    torch.manual_seed(1)
    noise = WeightNoise("gaussian", 0.8, estimator)
    lstm = LSTM(I, H, num_layers=2, bidirectional=True, recurrent_noise=noise,
                input_noise=noise, backend=backend).train()
    sequences = [torch.randn(n, I) for n in LENGTHS]
    state = (torch.randn(4, len(LENGTHS), H), torch.randn(4, len(LENGTHS), H))
    y, (h, c) = lstm(pack_sequence(sequences, enforce_sorted=False), state)
    padded, lengths = pad_packed_sequence(y)
    assert lengths.tolist() == LENGTHS
    forward, reverse = lstm.last_samples[0].recurrent, lstm.last_samples[1].recurrent
    assert not torch.equal(forward.unit, reverse.unit)  # each direction its own draw
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    for n, sequence in enumerate(sequences):
        ref.load_state_dict(own_weights(lstm, n))
        with torch.no_grad():
            ref_y, (ref_h, ref_c) = ref(sequence, (state[0][:, n], state[1][:, n]))
        torch.testing.assert_close(padded[: LENGTHS[n], n], ref_y, atol=1e-5, rtol=0)
        assert torch.all(padded[LENGTHS[n]:, n] == 0)
        torch.testing.assert_close(h[:, n], ref_h, atol=1e-5, rtol=0)
        torch.testing.assert_close(c[:, n], ref_c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["batch-first", "unbatched"])
def test_flipout_is_per_sequence_for_batch_first_and_unbatched_input(kind):
    torch.manual_seed(2)
    lstm = LSTM(I, H, batch_first=kind == "batch-first", bidirectional=True,
                recurrent_noise=WeightNoise("dropconnect", p=0.5, estimator="flipout")).train()
    x = torch.randn(3, 5, I) if kind == "batch-first" else torch.randn(5, I)
    y, (h, _) = lstm(x)
    batch = x.unsqueeze(0) if kind == "unbatched" else x  # (B, T, I) either way
    y, h = (y.unsqueeze(0), h.unsqueeze(1)) if kind == "unbatched" else (y, h)
    ref = nn.LSTM(I, H, bidirectional=True, batch_first=True)
    for n in range(batch.shape[0]):
        ref.load_state_dict(own_weights(lstm, n))
        with torch.no_grad():
            ref_y, (ref_h, _) = ref(batch[n : n + 1])
        torch.testing.assert_close(y[n : n + 1], ref_y, atol=1e-5, rtol=0)
        torch.testing.assert_close(h[:, n : n + 1], ref_h, atol=1e-5, rtol=0)


def test_reverse_within_lengths_and_segments():
    x = torch.arange(12.0).view(4, 3, 1)  # x[t, b] = 3t + b
    lengths = torch.tensor([4, 2, 1])
    reversed_x = reverse_within_lengths(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(reversed_x[:n, b], x[:n, b].flip(0))
        torch.testing.assert_close(reversed_x[n:, b], x[n:, b])  # padding stays in place
    torch.testing.assert_close(reverse_within_lengths(reversed_x, lengths), x)
    assert segments(torch.tensor([3, 3, 2, 1, 1])) == [(0, 2, 3), (2, 3, 2), (3, 5, 1)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_state_dict_names_and_loading_both_ways(bidirectional, bias):
    args = dict(num_layers=2, bias=bias, bidirectional=bidirectional)
    ref, ours = nn.LSTM(I, H, **args), LSTM(I, H, **args)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    back = nn.LSTM(I, H, **args)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, I)
    assert_same(ours.eval()(x), back(x))
    assert (ours.input_size, ours.hidden_size, ours.num_layers, ours.bias, ours.batch_first,
            ours.bidirectional, ours.proj_size) == (I, H, 2, bias, False, bidirectional, 0)
    ours.flatten_parameters()  # code written for torch.nn.LSTM calls it
    assert repr(ref)[len("LSTM("):-1] in repr(ours)  # the same arguments shown


def test_torch_dropout_argument_drops_between_layers_in_training_only():
    torch.manual_seed(3)
    lstm, ref = LSTM(I, H, num_layers=2, dropout=0.5), nn.LSTM(I, H, num_layers=2)
    ref.load_state_dict(lstm.state_dict())
    x = torch.randn(5, 2, I)
    assert not torch.allclose(lstm.train()(x)[0], ref(x)[0], atol=1e-3)
    assert_same(lstm.eval()(x), ref(x))
