"""The CPU backend's compiled LSTM step kernels (lm_flipout/nn/backends/cpu/kernels.c): their
activations against PyTorch's, and how they are built, cached, switched off and given up
on."""

import math
import os
import stat
import warnings

import pytest
import torch

from lm_flipout.nn import CpuBackend, lstm_layer
from lm_flipout.nn.backends.cpu import kernels as cell_kernels


@pytest.fixture
def kernels():
    if not cell_kernels.enabled_by_environment() or cell_kernels.library() is None:
        pytest.skip("the compiled kernels are switched off or not built here (no compiler)")
    return cell_kernels


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A build state of its own: an empty kernels folder under a cache root of its own, and
    nothing loaded yet; returns that folder."""
    monkeypatch.setenv("LM_FLIPOUT_CACHE", str(tmp_path))
    monkeypatch.setattr(cell_kernels, "_library", cell_kernels._UNTRIED)
    folder = tmp_path / "kernels"
    folder.mkdir()
    return folder


def test_kernels_serve_float32_on_cpu_only(kernels):
    assert kernels.available(torch.zeros(2))
    assert not kernels.available(torch.zeros(2, dtype=torch.float64))


def test_the_environment_switches_the_default_cpu_backend_off_them(monkeypatch):
    monkeypatch.setenv("LM_FLIPOUT_COMPILED_CELL", "0")
    assert not cell_kernels.enabled_by_environment()
    assert not CpuBackend().compiled_kernels
    monkeypatch.setenv("LM_FLIPOUT_COMPILED_CELL", "1")
    assert CpuBackend().compiled_kernels


def test_step_activations_match_torch_from_tiny_to_overflowing_inputs(kernels):
    """The kernels' own exp: sigmoid and tanh of the gates, and tanh of the cell, against
    PyTorch over the whole float range, overflow, infinities and NaN included."""
    hidden = 64
    values = torch.cat([torch.linspace(-30, 30, 1001), torch.tensor(
        [0.0, -0.0, 1e-30, -1e-30, 87.5, -87.5, 88.5, -88.5, 100.0, -100.0, 1e30, -1e30,
         math.inf, -math.inf, math.nan])])
    batch = math.ceil(values.numel() * 2 / (4 * hidden))
    gates = values.repeat(2)[: batch * 4 * hidden]
    gates = torch.cat([gates, torch.zeros(batch * 4 * hidden - gates.numel())])
    gates = gates.view(batch, 4 * hidden)[torch.randperm(batch)].contiguous()
    i, f, g, o = gates.chunk(4, dim=1)
    c_prev = torch.randn(batch, hidden)
    expected_c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    expected_h = torch.sigmoid(o) * torch.tanh(expected_c)
    expected_gates = torch.cat([torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g),
                                torch.sigmoid(o)], dim=1)
    c, h = torch.empty(batch, hidden), torch.empty(batch, hidden)
    kernels.forward_step(gates, torch.zeros_like(gates), None, None, c_prev, c, h, None, None,
                         None, None)
    for actual, expected in ((gates, expected_gates), (c, expected_c), (h, expected_h)):
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6, equal_nan=True)
    assert gates.isnan().any()  # NaN gates come out NaN, not clamped to a number


def test_a_built_library_is_shared_and_reused_from_the_cache(kernels, fresh_build):
    umask = os.umask(0o022)
    try:
        assert kernels.library() is not None
    finally:
        os.umask(umask)
    built = sorted(fresh_build.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no partial file left behind
    assert stat.S_IMODE(built[0].stat().st_mode) == 0o755  # other users may load it
    stamp = built[0].stat().st_mtime_ns
    cell_kernels._library = cell_kernels._UNTRIED
    assert kernels.library() is not None
    assert sorted(fresh_build.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_a_broken_cache_entry_is_rebuilt(kernels, fresh_build):
    target = cell_kernels._cache_path(cell_kernels._compiler(), cell_kernels._flag_sets())
    target.write_bytes(b"not a library")  # e.g. left by a full disk
    assert kernels.library() is not None
    assert target.stat().st_size > 1000


def test_a_failing_compiler_warns_once_and_the_layer_runs_on_torch_ops(monkeypatch, fresh_build):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.warns(UserWarning, match="compiled LSTM step kernels are not available"):
        assert cell_kernels.library() is None
    assert list(fresh_build.iterdir()) == []
    torch.manual_seed(3)
    x, weight_ih, bias, weight = (torch.randn(4, 3, 5), torch.randn(8, 5), torch.randn(8),
                                  torch.randn(8, 2))
    state = (torch.zeros(3, 2), torch.zeros(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning came once, not on every call
        assert not cell_kernels.available(x)
        y, _ = lstm_layer(x, weight_ih, bias, state, weight)
    h, c = state
    outputs = []
    for x_t in x:
        h, c = torch.lstm_cell(x_t, (h, c), weight_ih, weight, bias, torch.zeros(8))
        outputs.append(h)
    torch.testing.assert_close(y, torch.stack(outputs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("tensor", [torch.zeros(2, 3), torch.zeros(4, 2).t(),
                                    torch.zeros(2, 4, dtype=torch.float64)],
                         ids=["shape", "strides", "dtype"])
def test_operands_the_kernels_would_misread_are_refused(tensor):
    with pytest.raises(RuntimeError, match=r"contiguous float32 CPU tensor of shape \(2, 4\)"):
        cell_kernels.check((torch.zeros(2, 4), (2, 4)), (tensor, (2, 4)))
    cell_kernels.check((torch.zeros(2, 4), (2, 4)), (None, (2, 4)))  # absent operands pass
