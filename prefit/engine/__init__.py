"""Engines that fit many SIRENs to their targets, each for `epochs` full-batch Adam steps.

Both return a `FitResult`: per member and epoch the loss before that epoch's update and its learning rate, a few
predictions, the final parameters; the tests demand equal trajectories of them.

- `sequential`: the reference, an `nn.Module` and torch's Adam and ReduceLROnPlateau per member, as the original.
- `batched`: a chunk's members as one model with a hand-written backward, one learning rate per member; its step
  (`train.kernels`) is `compiled` (numba, the CPU's default), `fused` (Triton and CUDA graphs, CUDA's) or `torch`.
"""

from __future__ import annotations

from prefit.engine.batched import fit_batched
from prefit.engine.common import (
    FitResult,
    auto_max_members,
    cuda_bytes_per_member,
    device_name,
    flops_per_member_epoch,
    psnr_from_loss,
    resolve_device,
    snapshot_epochs_resolved,
)
from prefit.engine.sequential import fit_sequential
from prefit.engine.steps import CpuStep, GenericStep, SirenStep

ENGINES = {"batched": fit_batched, "sequential": fit_sequential}


def fit(engine: str, *args, **kwargs) -> FitResult:
    """Dispatch to an engine by name (train.engine)."""
    return ENGINES[engine](*args, **kwargs)


__all__ = [
    "ENGINES",
    "CpuStep",
    "GenericStep",
    "FitResult",
    "SirenStep",
    "auto_max_members",
    "cuda_bytes_per_member",
    "device_name",
    "fit",
    "fit_batched",
    "fit_sequential",
    "flops_per_member_epoch",
    "psnr_from_loss",
    "resolve_device",
    "snapshot_epochs_resolved",
]
