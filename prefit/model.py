"""Neural-field families and their initialisations, shared by both engines.

Every family is an MLP on pixel coordinates: a first layer `inputs -> hfs`, `hls` hidden layers `hfs -> hfs`, each
followed by the family's activation, and a linear layer `hfs -> 3`. The families differ in the activation, the
initialisation and, for Fourier features, a fixed encoding of the coordinates:

    siren  sin(w0 z)                 Sitzmann et al. 2020
    ffn    relu(z) on [cos, sin](2 pi x B), B ~ N(0, sigma^2) fixed     Tancik et al. 2020
    gauss  exp(-(scale z)^2)         Ramasinghe & Lucey 2022

Parameters are `(W, b)` pairs, W [in, out], stacked for members as W [M, in, out], b [M, 1, out]. Weights are drawn
per triple from a generator seeded by (seed, triple), so both engines start alike. A network may have several
output *heads* (the shared-encoder pre-fit): its last `head_layers` layers are then `heads` independent blocks,
stored side by side along the output axis, and its output is the heads' images side by side along the channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prefit.choices import Family

Params = list[tuple[torch.Tensor, torch.Tensor]]

ENCODING_STREAM = 1_000_033  # the "triple number" of the Fourier features' fixed matrix B


@dataclass(frozen=True, eq=False)
class Field:
    """A family and the constants its forward needs besides the weights (none of them trained)."""

    family: Family = Family.siren
    w0: float = 30.0  # siren: the sine's frequency
    scale: float = 10.0  # gauss: the Gaussian's inverse width
    encoding: torch.Tensor | None = None  # ffn: B [2, features]
    heads: int = 1  # output heads, each an image (3 channels)
    head_layers: int = 1  # layers of each head, the last ones (with several heads)

    @property
    def inputs(self) -> int:
        """Width of what the first layer reads: the coordinates, or their Fourier features."""
        return 2 if self.encoding is None else 2 * self.encoding.shape[1]

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """What the first layer reads for coordinates [pixels, 2]: computed once per fit (the coordinates are fixed)."""
        if self.encoding is None:
            return coords
        angle = (2 * math.pi) * (coords @ self.encoding.to(coords))
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)

    def activation(self, z: torch.Tensor) -> torch.Tensor:
        if self.family == Family.siren:
            return torch.sin(self.w0 * z)
        if self.family == Family.gauss:
            return torch.exp(-((self.scale * z) ** 2))
        return torch.relu(z)

    def init_params(self, hls: int, hfs: int, generator: torch.Generator) -> Params:
        """A network's initial weights, on the CPU in float32, as the family's paper initialises them."""
        if self.family == Family.siren:
            return init_params(hls, hfs, self.w0, generator)
        params: Params = []
        for fan_in, fan_out in layer_sizes(hls, hfs, self.inputs):
            if self.family == Family.ffn:  # Glorot normal weights, N(0, 0.01^2) biases: JAX stax.Dense's defaults
                w = torch.randn(fan_in, fan_out, generator=generator) * math.sqrt(2.0 / (fan_in + fan_out))
                b = torch.randn(fan_out, generator=generator) * 0.01
            else:  # PyTorch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
                bound = 1.0 / math.sqrt(fan_in)
                w = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
                b = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
            params.append((w, b))
        return params


SIREN = Field()  # the study's SIREN, w0 = 30


def make_field(
    family: Family | str, seed: int, w0: float | None, sigma: float | None, features: int | None, scale: float | None
) -> Field:
    """A family's `Field` from plain config values; the Fourier features' B is drawn once per study from `seed`."""
    family = Family(family)
    if family == Family.ffn:
        encoding = torch.randn(2, int(features), generator=triple_generator(seed, ENCODING_STREAM)) * float(sigma)
        return Field(family, encoding=encoding)
    if family == Family.gauss:
        return Field(family, scale=float(scale))
    return Field(family, w0=float(w0))


def layer_sizes(hls: int, hfs: int, inputs: int = 2, outputs: int = 3) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every linear layer: hls + 2 of them."""
    return [(inputs, hfs)] + [(hfs, hfs)] * hls + [(hfs, outputs)]


def n_weights(hls: int, hfs: int, inputs: int = 2) -> int:
    """Number of trainable numbers (weights and biases) of one network."""
    return sum(i * o + o for i, o in layer_sizes(hls, hfs, inputs))


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


class FieldNet(nn.Module):
    """One network of a family as a plain module: the sequential engine's model, and through `torch.func` the
    generic batched step's forward. Its sizes come from the parameters it is built for (`for_params`)."""

    def __init__(self, sizes: list[tuple[int, int]], field: Field = SIREN):
        super().__init__()
        self.field = field
        self.grouped = field.head_layers - 1 if field.heads > 1 else 0  # head layers after the first: blocks
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in sizes)

    @classmethod
    def for_params(cls, params: Params, field: Field = SIREN) -> FieldNet:
        """A module shaped like one member's (W [in, out], b) pairs, holding a copy of them."""
        return cls([tuple(w.shape[-2:]) for w, _ in params], field).load_params(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions [..., pixels, outputs] for encoded coordinates [..., pixels, inputs]."""
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if index > last - self.grouped:
                x = self._grouped(layer, x)
            else:
                x = layer(x)
            if index < last:
                x = self.field.activation(x)
        return x

    def _grouped(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """A head layer after the first: each head's block reads only its own head's features."""
        heads = self.field.heads
        w = layer.weight.T.unflatten(1, (heads, -1))  # [in, heads, out]
        y = torch.einsum("...ki,iko->...ko", x.unflatten(-1, (heads, -1)), w)
        return y.flatten(-2) + layer.bias

    @torch.no_grad()
    def load_params(self, params: Params) -> FieldNet:
        """Copy (W [in, out], b [out]) pairs into the layers (nn.Linear stores W transposed)."""
        for layer, (w, b) in zip(self.layers, params, strict=True):
            layer.weight.copy_(w.T)
            layer.bias.copy_(b.reshape(-1))
        return self

    def params(self) -> Params:
        """The current weights as detached (W [in, out], b [out]) copies."""
        return [(layer.weight.detach().T.clone(), layer.bias.detach().clone()) for layer in self.layers]
