"""Engines that fit many SIRENs to their targets, each for `epochs` full-batch Adam steps.

Both take the same inputs (stacked start parameters, one target image per member) and return the same
`FitResult`: per member and epoch the loss *before* that epoch's update and the learning rate that update
used, a few predictions (snapshots), and the final parameters.

- `sequential` (`prefit.engine.sequential`): the plain reference. One `nn.Module`, `torch.optim.Adam` and
  `ReduceLROnPlateau` per member, exactly like the original loop (minus its per-epoch host-side PSNR).
- `batched` (`prefit.engine.batched`): all members of a chunk as one model. Weights are stacked [M, in, out];
  the backward pass is written out by hand (a SIREN's is short: the cosine of each sine layer is kept from
  the forward pass) and checked against autograd in the tests; Adam and the plateau schedule keep one
  learning rate per member. Its step comes in three forms with the same arithmetic (`train.kernels`):
  `compiled`, numba kernels member after member in a core's cache (the CPU's default, `prefit.kernels`);
  `fused`, Triton kernels with the epoch counter on the device, replayed as CUDA graphs (CUDA's default,
  `prefit.engine.cuda`, `prefit.fused`); and `torch`, plain torch ops (`prefit.engine.steps.SirenStep`).

Both record the same things, so the tests can demand equal trajectories. docs/performance.md says what each
form costs and why it is built the way it is.
"""

from __future__ import annotations

from prefit.engine.batched import fit_batched, resolve_kernels
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
from prefit.engine.steps import CpuStep, SirenStep, batched_forward, loss_and_grads, make_step

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
    "make_step",
    "psnr_from_loss",
    "resolve_device",
    "resolve_kernels",
    "snapshot_epochs_resolved",
]
