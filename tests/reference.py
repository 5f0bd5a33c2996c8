"""Plain references the engine tests hold the batched steps against: autograd through stacked SIRENs."""

from __future__ import annotations

import torch

from prefit.engine import SirenStep
from prefit.model import Params


def batched_forward(params: Params, coords: torch.Tensor, w0: float) -> torch.Tensor:
    """Predictions [M, pixels, 3] of stacked SIRENs on shared coordinates [pixels, 2] (differentiable)."""
    x = coords.expand(params[0][0].shape[0], *coords.shape)
    for w, b in params[:-1]:
        x = torch.sin(w0 * torch.baddbmm(b, x, w))
    w, b = params[-1]
    return torch.baddbmm(b, x, w)


def loss_and_grads(
    params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float
) -> tuple[torch.Tensor, torch.Tensor, Params]:
    """One forward and backward pass of the torch step, copied out of its buffers."""
    loss, pred, grads = SirenStep(params, coords, target, w0)()
    return loss, pred.clone(), [(gw.clone(), gb.clone()) for gw, gb in grads]
