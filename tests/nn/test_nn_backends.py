"""Every backend of the LSTM layer against the reference backend (outputs and the gradients
of every input, flipout and hidden-state mask on and off), how a backend is chosen, and
the CPU backend's buffers and products."""

import pytest
import torch

from helpers_nn import layer_operands
from lm_flipout.nn import LSTM, CpuBackend, ReferenceBackend, lstm_layer, use_backend
from lm_flipout.nn.backends import select_backend
from lm_flipout.nn.backends.cpu import kernels
from lm_flipout.nn.backends.cpu.products import onednn_weight, step_product

COMPILED = [True, False] if kernels.library() is not None else [False]  # no C compiler: off

CPU_BACKENDS = {
    f"{products}-{'compiled' if compiled else 'torch'}-cell": CpuBackend(
        onednn=products != "mm", compiled_kernels=compiled,
        prepack_backward_min_steps=1 if products == "onednn-prepacked-backward" else 10**9)
    for products in ("onednn", "onednn-prepacked-backward", "mm") for compiled in COMPILED
}


@pytest.mark.parametrize("backend", CPU_BACKENDS.values(), ids=CPU_BACKENDS.keys())
@pytest.mark.parametrize("flipout, masked", [(True, True), (False, True), (True, False),
                                             (False, False)],
                         ids=["flipout-masked", "masked", "flipout", "plain"])
# sizes off and on multiples of 8: both weight-gradient orientations; a batch large enough
# for the compiled kernels to split a step across threads
@pytest.mark.parametrize("batch, inputs, hidden", [(5, 3, 6), (8, 64, 64), (300, 5, 64)])
def test_backend_matches_reference_outputs_and_gradients(backend, flipout, masked, batch,
                                                         inputs, hidden):
    """Every way the CPU backend runs the products: oneDNN (backward on the transposed view
    or on a prepacked copy) and torch.mm; the elementwise work on compiled kernels and on
    PyTorch ops; every input's gradient, the extra input term's included."""
    torch.manual_seed(9)
    steps = 7
    operands = layer_operands(steps, batch, inputs, hidden)
    leaves, (unit, out_signs, in_signs, mask) = operands.leaves, operands.options
    x, weight_ih, bias, extra, h0, c0, weight = leaves
    noise = (unit, out_signs, in_signs) if flipout else (None, None, None)
    mask = mask if masked else None
    results = {}
    for name, chosen in (("backend", backend), ("reference", ReferenceBackend())):
        y, (h, c) = lstm_layer(x, weight_ih, bias, (h0, c0), weight, *noise, mask, extra,
                               backend=chosen)
        results[name] = (y, h, c)
    for a, b in zip(results["backend"], results["reference"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    probes = [torch.randn_like(t) for t in results["reference"]]
    losses = {name: sum((t * p).sum() for t, p in zip(outputs, probes))
              for name, outputs in results.items()}
    # weight gradients sum over steps × batch terms: float32 rounding grows with its root
    tolerance = 1e-5 * max(1.0, (steps * batch / 56) ** 0.5)
    for _repeat in range(2):  # the second backward runs on the scratch buffers of the first
        grads = torch.autograd.grad(losses["backend"], leaves, retain_graph=True)
        ref_grads = torch.autograd.grad(losses["reference"], leaves, retain_graph=True)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


def test_backend_chosen_by_argument_context_or_tensors():
    float32, float64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    assert select_backend(float32).name == "cpu"  # automatic: the fast path where it runs
    assert select_backend(float64).name == "reference"  # and the reference elsewhere
    plain = CpuBackend(onednn=False, compiled_kernels=False)
    with use_backend("reference"):
        assert select_backend(float32).name == "reference"
        with use_backend(plain):
            assert select_backend(float32) is plain
        assert select_backend(float32, choice="cpu").name == "cpu"  # the argument wins
    assert select_backend(float32) is not plain
    with pytest.raises(ValueError, match="does not run torch.float64"):
        select_backend(float64, choice="cpu")
    with pytest.raises(ValueError, match="'cuda' is unknown"):
        select_backend(float32, choice="cuda")


def test_a_layer_given_a_backend_runs_every_call_on_it():
    """Automatic choice takes the fused torch.nn.LSTM kernel for a clean call; a named
    backend (on the layer or by use_backend) takes the step path."""
    calls = []

    class Recording(ReferenceBackend):
        def run(self, inputs, options):
            calls.append(options)
            return super().run(inputs, options)

    x = torch.randn(3, 2, 4)
    LSTM(4, 5, num_layers=2)(x)
    assert calls == []
    LSTM(4, 5, num_layers=2, backend=Recording())(x)
    assert len(calls) == 2
    with use_backend(Recording()):
        LSTM(4, 5)(x)
    assert len(calls) == 3


def test_layer_gradients_survive_the_next_call():
    """Gradients handed out by one backward are not overwritten by the next call (the
    backward reuses scratch buffers on CPU)."""
    torch.manual_seed(4)
    x = torch.randn(5, 3, 4, requires_grad=True)
    params = [torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True),
              torch.randn(8, 2, requires_grad=True)]
    state = (torch.zeros(3, 2), torch.zeros(3, 2))

    def gradients(scale: float) -> list[torch.Tensor]:
        y, _ = lstm_layer(x * scale, params[0], params[1], state, params[2])
        return list(torch.autograd.grad(y.sum(), [x, *params]))

    first = gradients(1.0)
    kept = [g.clone() for g in first]
    gradients(-3.0)
    for a, b in zip(first, kept):
        assert torch.equal(a, b)


def test_flipout_layer_trains_after_a_call_under_inference_mode():
    """Scratch buffers are not made under inference mode, where they would be inference
    tensors that a later training call could not write. Runs in a fresh thread, whose
    scratch buffers (kept per thread) do not exist yet."""
    import threading

    torch.manual_seed(5)
    x, weight_ih, bias = torch.randn(4, 3, 5), torch.randn(8, 5), torch.randn(8)
    weight, unit = torch.randn(8, 2, requires_grad=True), torch.randn(8, 2)
    out_signs, in_signs = torch.ones(3, 8), -torch.ones(3, 2)
    state = (torch.zeros(3, 2), torch.zeros(3, 2))
    results = {}

    def run() -> torch.Tensor:
        return lstm_layer(x, weight_ih, bias, state, weight, unit, out_signs, in_signs)[0]

    def inference_then_training() -> None:
        try:
            with torch.inference_mode():
                results["inference"] = run().clone()
            y = run()
            y.sum().backward()
            results["training"] = y.detach()
        except RuntimeError as error:
            results["error"] = error

    thread = threading.Thread(target=inference_then_training)
    thread.start()
    thread.join()
    assert "error" not in results, results.get("error")
    torch.testing.assert_close(results["training"], results["inference"])
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unit noise U takes no gradient"):
        lstm_layer(x, weight_ih, bias, state, weight, unit.requires_grad_(True))


@pytest.mark.parametrize("prepacked", [True, False], ids=["prepacked", "view"])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_step_product_uses_onednn_on_cpu_and_equals_mm(prepacked, transposed):
    weight = torch.randn(12, 48).t() if transposed else torch.randn(48, 12)
    x, base = torch.randn(5, 12), torch.randn(5, 48)
    product = step_product(weight, rows=5, prepacked=prepacked)
    torch.testing.assert_close(product(x), x @ weight.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(product(x, base=base), base + x @ weight.T, atol=1e-5, rtol=1e-5)
    if torch.backends.mkldnn.is_available():  # the fast path is really there on CPU
        assert onednn_weight(weight, 5, prepacked) is not None
    assert onednn_weight(weight.double(), 5, prepacked) is None


def test_lstm_layer_names_the_argument_that_does_not_fit():
    """Checked before anything runs: the compiled kernels would otherwise read past a
    tensor of the wrong size, or a missing sign vector."""
    x, weight_ih, bias = torch.randn(4, 3, 5), torch.randn(8, 5), torch.randn(8)
    weight, unit = torch.randn(8, 2), torch.randn(8, 2)
    state = (torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unit, out_signs and in_signs together"):
        lstm_layer(x, weight_ih, bias, state, weight, unit, in_signs=torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"weight must have shape \(8, 2\)"):
        lstm_layer(x, weight_ih, bias, state, torch.randn(7, 2))
    with pytest.raises(ValueError, match=r"out_signs must have shape \(3, 8\) or \(1, 8\)"):
        lstm_layer(x, weight_ih, bias, state, weight, unit, torch.ones(3, 7), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \(3, 2\)"):
        lstm_layer(x, weight_ih, bias, (state[0], torch.zeros(2, 2)), weight)


@pytest.mark.parametrize("backend", [CpuBackend(compiled_kernels=True),
                                     CpuBackend(compiled_kernels=False), "reference"],
                         ids=["compiled-cell", "torch-cell", "reference"])
def test_a_bool_or_shared_mask_acts_like_its_float_rows(backend):
    torch.manual_seed(6)
    x, weight_ih, bias, weight = (torch.randn(4, 3, 5), torch.randn(8, 5), torch.randn(8),
                                  torch.randn(8, 2))
    state = (torch.randn(3, 2), torch.randn(3, 2))
    keep = torch.tensor([[True, False]])
    with use_backend(backend):
        expected, _ = lstm_layer(x, weight_ih, bias, state, weight,
                                 mask=keep.float().expand(3, 2))
        for mask in (keep, keep.expand(3, 2), keep.float()):
            y, _ = lstm_layer(x, weight_ih, bias, state, weight, mask=mask)
        torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)
