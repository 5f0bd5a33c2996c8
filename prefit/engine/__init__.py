"""Engines that fit many SIRENs to their targets, each for `epochs` full-batch Adam steps.

Both take stacked start parameters and one target image per member, and return a `FitResult`: per member and
epoch the loss *before* that epoch's update and the learning rate it used, a few predictions, the final parameters.

- `sequential`: the plain reference, one `nn.Module`, `torch.optim.Adam` and `ReduceLROnPlateau` per member, like
  the original loop (minus its per-epoch host-side PSNR).
- `batched`: a chunk's members as one model, weights stacked [M, in, out], the backward written out by hand (the
  tests check it against autograd), one learning rate per member. Its step comes in three forms with the same
  arithmetic (`train.kernels`): `compiled` (numba, member after member in a core's cache: `prefit.kernels`, the
  CPU's default), `fused` (Triton, replayed as CUDA graphs: `prefit.engine.cuda`, CUDA's default) and `torch`.

Both record the same things, so the tests can demand equal trajectories (docs/performance.md: what each costs).
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
from prefit.engine.steps import CpuStep, SirenStep, batched_forward, loss_and_grads

ENGINES = {"batched": fit_batched, "sequential": fit_sequential}


def fit(engine: str, *args, **kwargs) -> FitResult:
    """Dispatch to an engine by name (train.engine)."""
    return ENGINES[engine](*args, **kwargs)


__all__ = [
    "ENGINES",
    "CpuStep",
    "FitResult",
    "SirenStep",
    "auto_max_members",
    "batched_forward",
    "cuda_bytes_per_member",
    "device_name",
    "fit",
    "fit_batched",
    "fit_sequential",
    "flops_per_member_epoch",
    "loss_and_grads",
    "psnr_from_loss",
    "resolve_device",
    "snapshot_epochs_resolved",
]
