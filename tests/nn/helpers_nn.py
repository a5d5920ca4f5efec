"""Helpers of the tests in tests/nn: one layer call's random operands, and the LSTM with
flipout written directly with autograd."""

from typing import NamedTuple

import torch


class Operands(NamedTuple):
    """x, W_ih, b, E, h0, c0, W̄ (leaves that take gradients) and U, r, s, m."""

    leaves: list
    options: tuple


def layer_operands(steps: int, batch: int, inputs: int, hidden: int,
                   dtype: torch.dtype = torch.float32) -> Operands:
    """Random operands of one layer call, every sign and mask per sequence."""
    leaves = [torch.randn(steps, batch, inputs), torch.randn(4 * hidden, inputs) / inputs**0.5,
              torch.randn(4 * hidden), torch.randn(steps, batch, 4 * hidden),
              torch.randn(batch, hidden), torch.randn(batch, hidden),
              torch.randn(4 * hidden, hidden) / hidden**0.5]
    leaves = [t.to(dtype).requires_grad_(True) for t in leaves]
    unit = torch.randn(4 * hidden, hidden)
    out_signs = torch.randint(0, 2, (batch, 4 * hidden)).float() * 2 - 1
    in_signs = torch.randint(0, 2, (batch, hidden)).float() * 2 - 1
    mask = (torch.rand(batch, hidden) > 0.3).float() / 0.7
    return Operands(leaves, tuple(t.to(dtype) for t in (unit, out_signs, in_signs, mask)))


def autograd_flipout_reference(x, weight_ih, bias, extra, h, c, weight, delta, out_signs,
                               in_signs, mask):
    """Plain autograd loop of paper eq. 5 inside an LSTM, for comparing gradients."""
    outputs = []
    for x_t, extra_t in zip(x, extra):
        u = h * mask
        gates = (x_t @ weight_ih.T + bias + extra_t + u @ weight.T
                 + ((u * in_signs) @ delta.T) * out_signs)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c
