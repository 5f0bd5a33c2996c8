"""Images as the SIREN sees them: a coordinate grid and signals in [-1, 1], and back to uint8 pixels."""

from __future__ import annotations

import math

import numpy as np
import torch

from prefit.choices import CIFAR_SIDE

SIDE = CIFAR_SIDE  # coordinate_grid's default


def coordinate_grid(side: int = SIDE) -> torch.Tensor:
    """Pixel coordinates, float32 [side*side, 2]: linspace(-1, 1) per axis, row-major, row index first."""
    axis = torch.linspace(-1.0, 1.0, side)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def to_signal(images: np.ndarray) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> float32 [N, H*W, 3] in [-1, 1], pixel k at point k of coordinate_grid."""
    x = torch.as_tensor(np.ascontiguousarray(images)).to(torch.float32)
    return (x / 127.5 - 1.0).reshape(x.shape[0], -1, 3)


def side_of(pixels: int) -> int:
    """The side of a square image of `pixels` pixels (a signal's row count); ValueError if it is not square."""
    side = math.isqrt(pixels)
    if side * side != pixels:
        raise ValueError(f"{pixels} pixels are not a square image")
    return side


def to_uint8(signal: torch.Tensor | np.ndarray, side: int | None = None) -> np.ndarray:
    """float [..., H*W, 3] in [-1, 1] -> uint8 [..., H, W, 3], rounded and clipped; side None: from the pixel count."""
    x = np.asarray(signal.detach().cpu() if isinstance(signal, torch.Tensor) else signal, dtype=np.float32)
    if side is None:
        side = side_of(x.shape[-2])
    x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return x.reshape(*x.shape[:-2], side, side, 3)
