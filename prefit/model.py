"""The SIREN (Sitzmann et al. 2020) and its initialisation, shared by both engines.

A sine layer 2 -> hfs, `hls` sine layers hfs -> hfs, a linear layer hfs -> 3; a sine layer computes
`sin(w0 * (x W + b))`. Parameters are `(W, b)` pairs, W [in, out], stacked for members as W [M, in, out],
b [M, 1, out]. Weights are drawn per triple from a generator seeded by (seed, triple), so both engines start alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

Params = list[tuple[torch.Tensor, torch.Tensor]]


def layer_sizes(hls: int, hfs: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every linear layer: hls + 2 of them."""
    return [(2, hfs)] + [(hfs, hfs)] * hls + [(hfs, 3)]


def n_weights(hls: int, hfs: int) -> int:
    """Number of trainable numbers (weights and biases) of one SIREN."""
    return sum(i * o + o for i, o in layer_sizes(hls, hfs))


def triple_generator(seed: int, triple: int) -> torch.Generator:
    """A CPU generator seeded from (seed, triple) through numpy's SeedSequence (well-mixed, stable)."""
    state = np.random.SeedSequence([seed, triple]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def init_params(hls: int, hfs: int, w0: float, generator: torch.Generator) -> Params:
    """SIREN weights as docs/protocol.md states, on the CPU, in float32: first layer W ~ U(-1/fan_in, 1/fan_in), the
    others U(-sqrt(6/fan_in)/w0, +...); biases as PyTorch's linear layer, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    params: Params = []
    for layer, (fan_in, fan_out) in enumerate(layer_sizes(hls, hfs)):
        bound = 1.0 / fan_in if layer == 0 else math.sqrt(6.0 / fan_in) / w0
        w = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
        bias_bound = 1.0 / math.sqrt(fan_in)
        b = (torch.rand(fan_out, generator=generator) * 2 - 1) * bias_bound
        params.append((w, b))
    return params


def stack_params(members: list[Params]) -> Params:
    """Per-member parameter lists -> stacked W [M, in, out], b [M, 1, out]."""
    return [
        (torch.stack([m[k][0] for m in members]), torch.stack([m[k][1] for m in members]).unsqueeze(1))
        for k in range(len(members[0]))
    ]


def member_params(stacked: Params, index: int) -> Params:
    """One member's parameters out of a stacked set (views, not copies)."""
    return [(w[index], b[index, 0]) for w, b in stacked]


class Siren(nn.Module):
    """A plain SIREN module, as the original used one: the sequential engine's model."""

    def __init__(self, hls: int, hfs: int, w0: float = 30.0):
        super().__init__()
        self.w0 = w0
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in layer_sizes(hls, hfs))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        x = coords
        for layer in self.layers[:-1]:
            x = torch.sin(self.w0 * layer(x))
        return self.layers[-1](x)

    @torch.no_grad()
    def load_params(self, params: Params) -> Siren:
        """Copy (W [in, out], b [out]) pairs into the layers (nn.Linear stores W transposed)."""
        for layer, (w, b) in zip(self.layers, params, strict=True):
            layer.weight.copy_(w.T)
            layer.bias.copy_(b.reshape(-1))
        return self

    def params(self) -> Params:
        """The current weights as detached (W [in, out], b [out]) copies."""
        return [(layer.weight.detach().T.clone(), layer.bias.detach().clone()) for layer in self.layers]
