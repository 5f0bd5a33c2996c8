"""Small image-like targets shared by the engine tests (CPU and CUDA)."""

from __future__ import annotations

import math

import torch

from prefit.data import coordinate_grid


def smooth_images(n: int, seed: int = 0, side: int = 32) -> torch.Tensor:
    """n smooth colour images as [-1, 1] signals [n, side^2, 3]: image-like, so fits make real progress."""
    g = torch.Generator().manual_seed(seed)
    grid = coordinate_grid(side)
    freqs = torch.randn(n, 3, 2, generator=g) * 3
    phase = torch.rand(n, 3, generator=g) * 2 * math.pi
    return 0.8 * torch.sin(torch.einsum("pc,nkc->npk", grid, freqs) + phase[:, None, :])
