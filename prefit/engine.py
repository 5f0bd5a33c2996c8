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


class SirenStep:
    """Forward and hand-written backward of stacked SIRENs, in buffers allocated once per chunk.

    Forward: s_l = w0 (a_{l-1} W_l + b_l), a_l = sin(s_l) for the sine layers, y = a_L W + b.
    Backward: dy = 2 (y - t) / (pixels * 3); for a sine layer g = da * cos(s_l), dz = w0 g;
    dW = a_{l-1}^T dz, db = sum over pixels of dz, da_{l-1} = dz W^T.

    Why a workspace: every epoch would otherwise allocate and free activations of M x 1024 x hfs floats,
    and large CPU allocations come back from the OS as fresh pages that fault on first touch. The factor
    w0 is applied inside the matrix products (baddbmm's alpha) and to the small weight gradients, never as
    an extra pass over the activations.
    """

    def __init__(self, params: Params, coords: torch.Tensor, w0: float):
        members, pixels = params[0][0].shape[0], coords.shape[0]
        like = params[0][0]
        self.w0 = w0
        self.pixels = pixels
        self.coords = coords.to(like).expand(members, pixels, coords.shape[1])
        widths = [w.shape[2] for w, _ in params[:-1]]
        self.sines = [like.new_empty(members, pixels, h) for h in widths]
        self.cosines = [like.new_empty(members, pixels, h) for h in widths]
        self.back = [like.new_empty(members, pixels, max(widths)) for _ in range(2)]
        self.pred = like.new_empty(members, pixels, 3)
        self.residual = like.new_empty(members, pixels, 3)
        self.zero = like.new_zeros(1, 1, 1)
        self.grads: Params = [(torch.empty_like(w), torch.empty_like(b)) for w, b in params]

    def __call__(self, params: Params, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """Per-member loss [M] and predictions [M, pixels, 3] before the update, and the gradients.

        The returned predictions and gradients live in the workspace: they are overwritten by the next call.
        """
        w0 = self.w0
        x = self.coords
        for (w, b), s, c in zip(params[:-1], self.sines, self.cosines):
            torch.baddbmm(b, x, w, beta=w0, alpha=w0, out=s)
            torch.cos(s, out=c)
            x = s.sin_()
        w, b = params[-1]
        torch.baddbmm(b, x, w, out=self.pred)
        residual = torch.sub(self.pred, target, out=self.residual)
        loss = residual.square().mean(dim=(1, 2))
        grad = residual.mul_(2.0 / (self.pixels * target.shape[2]))
        last = len(params) - 1
        for layer in range(last, -1, -1):
            w, _ = params[layer]
            gw, gb = self.grads[layer]
            inputs = self.coords if layer == 0 else self.sines[layer - 1]
            scale = 1.0 if layer == last else w0
            if layer < last:
                grad.mul_(self.cosines[layer])
            torch.bmm(inputs.transpose(1, 2), grad, out=gw)
            torch.sum(grad, dim=1, keepdim=True, out=gb)
            if scale != 1.0:
                gw.mul_(scale)
                gb.mul_(scale)
            if layer > 0:
                out = self.back[layer % 2][..., : w.shape[1]]
                grad = torch.baddbmm(self.zero, grad, w.transpose(1, 2), beta=0, alpha=scale, out=out)
        return loss, self.pred, self.grads


def loss_and_grads(
    params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float
) -> tuple[torch.Tensor, torch.Tensor, Params]:
    """One forward and backward pass (a fresh SirenStep; the engine keeps one per chunk)."""
    loss, pred, grads = SirenStep(params, coords, w0)(params, target)
    return loss, pred.clone(), [(gw.clone(), gb.clone()) for gw, gb in grads]


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
    step = SirenStep(work, coords, w0)
    for epoch in range(train.epochs):
        loss, pred, grads = step(work, target)
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
