"""Two engines that fit many SIRENs to their targets, each for `epochs` full-batch Adam steps.

Both take the same inputs (stacked start parameters, one target image per member) and return the same
`FitResult`: per member and epoch the loss *before* that epoch's update and the learning rate that update
used, a few predictions (snapshots), and the final parameters.

- `sequential`: the plain reference. One `nn.Module`, `torch.optim.Adam` and `ReduceLROnPlateau` per member,
  exactly like the original loop (minus its per-epoch host-side PSNR).
- `batched`: all members of a chunk as one model. Weights are stacked [M, in, out] and every layer is one
  batched matrix product; the backward pass is written out by hand (a SIREN's is short: the cosine of each
  sine layer is kept from the forward pass) and checked against autograd in the tests; Adam and the
  plateau schedule keep one learning rate per member (`prefit.optim`). Nothing in the epoch loop reads a value
  back to the host.

Both record the same things, so the tests can demand equal trajectories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prefit.config import TrainConfig
from prefit.model import Params, Siren, member_params, n_weights, stack_params
from prefit.optim import BatchedAdam, BatchedPlateau


@dataclass
class FitResult:
    """What a stage of fits leaves behind (all on the CPU)."""

    loss: torch.Tensor  # float32 [M, epochs]
    lr: torch.Tensor  # float64 [M, epochs]
    snapshots: torch.Tensor  # float32 [M, len(snapshot_epochs), pixels, 3]
    params: Params  # stacked final parameters


def psnr_from_loss(loss: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of an image in [0, 1] (data range 1) from the MSE in the [-1, 1] scale: 10 log10(4 / loss)."""
    return 10.0 * torch.log10(4.0 / loss)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu. Asking for cuda without one is an error, not a silent cpu run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device (use train.device=auto or cpu)")
    return torch.device(name)


def auto_max_members(hls: int, hfs: int, device: torch.device, pixels: int = 1024) -> int:
    """How many members to fit at once when train.max_members is null.

    On a CPU the activations of a chunk should stay near the caches: every elementwise op of a chunk whose
    activations spill to memory streams through it, so chunks of a few members beat one huge batch for wide
    SIRENs, while narrow ones want many members per matrix product to amortise per-op overhead.
    On CUDA the bound is memory: activations and cosines of every layer, with room to spare.
    """
    per_member = pixels * hfs * (hls + 1) * 4  # bytes of one activation set
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        weights = (hls * hfs * hfs + 6 * hfs) * 4 * 6  # params, grads, two Adam moments, temporaries
        return max(1, int(0.5 * free / (3 * per_member + weights)))
    return max(1, int(12e6 // per_member))


def _snapshot_index(epochs: int, snapshot_epochs: Sequence[int]) -> dict[int, int]:
    """Snapshot epoch -> its slot; -1 means the last epoch; out-of-range epochs are dropped."""
    resolved = sorted({epochs - 1 if e == -1 else e for e in snapshot_epochs if -1 <= e < epochs})
    return {e: k for k, e in enumerate(resolved)}


def snapshot_epochs_resolved(epochs: int, snapshot_epochs: Sequence[int]) -> list[int]:
    return list(_snapshot_index(epochs, snapshot_epochs))


# --------------------------------------------------------------------------------------------------------
# The batched SIREN: forward for autograd (tests), forward + hand-written backward for the engine.
# --------------------------------------------------------------------------------------------------------


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
    """Per-member MSE [M], predictions [M, pixels, 3] and gradients, with the backward pass written out.

    Forward: z_l = a_{l-1} W_l + b_l, a_l = sin(w0 z_l) for the sine layers, y = a_L W + b.
    Backward: dy = 2 (y - t) / (pixels * 3); for a sine layer dz = da * w0 cos(w0 z);
    dW = a_{l-1}^T dz, db = sum over pixels of dz, da_{l-1} = dz W^T.
    """
    members, pixels = target.shape[0], target.shape[1]
    inputs, cosines = [], []
    x = coords.expand(members, *coords.shape)
    for w, b in params[:-1]:
        inputs.append(x)
        s = torch.baddbmm(b, x, w).mul_(w0)
        cosines.append(torch.cos(s))
        x = s.sin_()
    inputs.append(x)
    w, b = params[-1]
    pred = torch.baddbmm(b, x, w)
    residual = pred - target
    loss = residual.square().mean(dim=(1, 2))
    grad = residual.mul_(2.0 / (pixels * target.shape[2]))
    grads: Params = [None] * len(params)  # type: ignore[list-item]
    for layer in range(len(params) - 1, -1, -1):
        w, _ = params[layer]
        if layer < len(params) - 1:
            grad = grad.mul_(cosines[layer]).mul_(w0)
        grads[layer] = (torch.bmm(inputs[layer].transpose(1, 2), grad), grad.sum(dim=1, keepdim=True))
        if layer > 0:
            grad = torch.bmm(grad, w.transpose(1, 2))
    return loss, pred, grads


# --------------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------------

Progress = Callable[[int], None]


def _progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit="member-epoch",
        unit_scale=True,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
        mininterval=0.5,
    )


def _new_result(members: int, epochs: int, snapshots: int, pixels: int) -> FitResult:
    return FitResult(
        loss=torch.empty(members, epochs, dtype=torch.float32),
        lr=torch.empty(members, epochs, dtype=torch.float64),
        snapshots=torch.empty(members, snapshots, pixels, 3, dtype=torch.float32),
        params=[],
    )


def fit_batched(
    params: Params,
    targets: torch.Tensor,
    coords: torch.Tensor,
    train: TrainConfig,
    w0: float,
    device: torch.device,
    max_members: int,
    desc: str = "fit",
) -> FitResult:
    """Fit stacked members to targets [M, pixels, 3], `max_members` at a time (results do not depend on it)."""
    members, pixels = targets.shape[0], targets.shape[1]
    slots = _snapshot_index(train.epochs, train.snapshot_epochs)
    result = _new_result(members, train.epochs, len(slots), pixels)
    final: list[Params] = []
    coords = coords.to(device)
    with _progress_bar(members * train.epochs, desc, train.progress) as bar:
        for start in range(0, members, max_members):
            chunk = slice(start, min(start + max_members, members))
            final.append(_fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar))
    result.params = [
        (torch.cat([p[k][0] for p in final]), torch.cat([p[k][1] for p in final])) for k in range(len(params))
    ]
    return result


def _fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar) -> Params:
    work = [(w[chunk].to(device, copy=True), b[chunk].to(device, copy=True)) for w, b in params]
    flat = [t for pair in work for t in pair]
    target = targets[chunk].to(device)
    m = target.shape[0]
    lr = torch.full((m,), train.lr, dtype=torch.float64, device=device)
    adam = BatchedAdam(flat, lr, betas=tuple(train.betas), eps=train.eps)
    plateau = BatchedPlateau(
        lr, factor=train.plateau_factor, patience=train.plateau_patience, threshold=train.plateau_threshold
    )
    losses = torch.empty(train.epochs, m, device=device)
    lrs = torch.empty(train.epochs, m, dtype=torch.float64, device=device)
    snaps = torch.empty(m, len(slots), *target.shape[1:], device=device)
    report = max(1, train.epochs // 20)
    for epoch in range(train.epochs):
        loss, pred, grads = loss_and_grads(work, coords, target, w0)
        losses[epoch] = loss
        lrs[epoch] = lr
        slot = slots.get(epoch)
        if slot is not None:
            snaps[:, slot] = pred
        adam.step([g for pair in grads for g in pair])
        plateau.step(loss)
        bar.update(m)
        if bar.disable is False and (epoch % report == 0 or epoch == train.epochs - 1):
            bar.set_postfix(members=m, psnr=f"{psnr_from_loss(loss).nanmean().item():.1f}")
    result.loss[chunk] = losses.T.cpu()
    result.lr[chunk] = lrs.T.cpu()
    result.snapshots[chunk] = snaps.cpu()
    return [(w.cpu(), b.cpu()) for w, b in work]


def fit_sequential(
    params: Params,
    targets: torch.Tensor,
    coords: torch.Tensor,
    train: TrainConfig,
    w0: float,
    device: torch.device,
    max_members: int | None = None,
    desc: str = "fit",
) -> FitResult:
    """The reference: one SIREN module, torch Adam and torch ReduceLROnPlateau per member, one at a time."""
    members, pixels = targets.shape[0], targets.shape[1]
    hls, hfs = len(params) - 2, params[0][0].shape[2]
    slots = _snapshot_index(train.epochs, train.snapshot_epochs)
    result = _new_result(members, train.epochs, len(slots), pixels)
    coords = coords.to(device)
    final: list[Params] = []
    with _progress_bar(members * train.epochs, desc, train.progress) as bar:
        for i in range(members):
            model = Siren(hls, hfs, w0).to(device).load_params(member_params(params, i))
            target = targets[i].to(device)
            opt = torch.optim.Adam(model.parameters(), lr=train.lr, betas=tuple(train.betas), eps=train.eps)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode="min",
                factor=train.plateau_factor,
                patience=train.plateau_patience,
                threshold=train.plateau_threshold,
                threshold_mode="rel",
                cooldown=0,
                min_lr=0.0,
                eps=1e-8,
            )
            losses = torch.empty(train.epochs, device=device)
            for epoch in range(train.epochs):
                pred = model(coords)
                loss = F.mse_loss(pred, target)
                losses[epoch] = loss.detach()
                result.lr[i, epoch] = opt.param_groups[0]["lr"]
                slot = slots.get(epoch)
                if slot is not None:
                    result.snapshots[i, slot] = pred.detach().cpu()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step(loss.detach())
            bar.update(train.epochs)
            result.loss[i] = losses.cpu()
            final.append(model.params())
            if bar.disable is False:
                bar.set_postfix(member=f"{i + 1}/{members}", psnr=f"{psnr_from_loss(losses[-1]).item():.1f}")
    result.params = stack_params([[(w.cpu(), b.cpu()) for w, b in p] for p in final])
    return result


ENGINES = {"batched": fit_batched, "sequential": fit_sequential}


def fit(engine: str, *args, **kwargs) -> FitResult:
    """Dispatch to an engine by name (train.engine)."""
    return ENGINES[engine](*args, **kwargs)


def flops_per_member_epoch(hls: int, hfs: int, pixels: int = 1024) -> float:
    """The study's work unit: 6 x pixels x weights (forward 2, backward 4 flops per weight and pixel)."""
    return 6.0 * pixels * n_weights(hls, hfs)
