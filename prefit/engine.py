"""Two engines that fit many SIRENs to their targets, each for `epochs` full-batch Adam steps.

Both take the same inputs (stacked start parameters, one target image per member) and return the same
`FitResult`: per member and epoch the loss *before* that epoch's update and the learning rate that update
used, a few predictions (snapshots), and the final parameters.

- `sequential`: the plain reference. One `nn.Module`, `torch.optim.Adam` and `ReduceLROnPlateau` per member,
  exactly like the original loop (minus its per-epoch host-side PSNR).
- `batched`: all members of a chunk as one model. Weights are stacked [M, in, out]; the backward pass is
  written out by hand (a SIREN's is short: the cosine of each sine layer is kept from the forward pass) and
  checked against autograd in the tests; Adam and the plateau schedule keep one learning rate per member
  (`prefit.optim`). Nothing in the epoch loop reads a value back to the host. The step comes in two forms
  with the same arithmetic: `SirenStep`, torch ops with one batched matrix product per layer (CUDA), and
  `CpuStep`, a compiled step (`prefit.kernels`) that runs member after member in a core's cache, with chunks
  side by side on the cores. docs/performance.md says why and what each part bought.

Both record the same things, so the tests can demand equal trajectories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from prefit.config import ConfigError, TrainConfig
from prefit.kernels import siren_step
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
        raise ConfigError("train.device=cuda but torch sees no CUDA device (use train.device=auto or cpu)")
    return torch.device(name)


def cuda_bytes_per_member(hls: int, hfs: int, pixels: int = 1024) -> int:
    """Device memory one member of a chunk holds on CUDA, in bytes.

    Parameters, gradients and Adam's two moments (4 copies of the weights); the sine and cosine of every sine
    layer, two back-propagated gradients and the split operands of `3xtf32` products (3 more activation sets);
    prediction, residual and target ([3, pixels] each). A quarter more for the allocator's rounding.
    """
    weights = n_weights(hls, hfs)
    activations = (2 * (hls + 1) + 5) * pixels * hfs
    return int(1.25 * 4 * (4 * weights + activations + 3 * 3 * pixels))


def auto_max_members(
    hls: int, hfs: int, device: torch.device, pixels: int = 1024, budget_bytes: int | None = None
) -> int:
    """How many members to fit at once when train.max_members is null.

    On a CPU the compiled step works member after member in a workspace of its own, so a chunk's size only
    trades the per-epoch Python overhead (fewer, larger chunks) against memory: each member of a chunk holds
    its weights four times (parameters, gradients, Adam's two moments), 64 MB at most per chunk.
    On CUDA the bound is memory: `budget_bytes` (a job's share of a device that jobs share), else half of
    what the device has free, divided by `cuda_bytes_per_member`.
    """
    if device.type == "cuda":
        if budget_bytes is None:
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 2
        return max(1, int(budget_bytes // cuda_bytes_per_member(hls, hfs, pixels)))
    return max(1, int(64 * 2**20 // (16 * n_weights(hls, hfs))))


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

    Forward: s_l = a_{l-1} (w0 W_l) + w0 b_l, a_l = sin(s_l) for the sine layers, y = a_L W + b.
    Backward: dy = 2 (y - t) / (pixels * 3); for a sine layer g = da * cos(s_l);
    dW_l = w0 a_{l-1}^T g, db_l = w0 sum over pixels of g, da_{l-1} = g (w0 W_l)^T.

    Why this shape:
    - buffers live as long as the chunk: fresh activations every epoch would come back from the OS as new
      pages that fault on first touch;
    - w0 multiplies the small weight matrices, never the activations;
    - the last layer (3 outputs) is computed transposed, [3, pixels] per member: a matrix product with 3 columns
      runs several times slower than the same product with 3 rows.
    """

    def __init__(self, params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float):
        members, pixels = target.shape[0], target.shape[1]
        like = params[0][0]
        self.params = [(w.clone(), b.clone()) for w, b in params]  # its own copy, updated in place by the optimiser
        self.w0 = w0
        self.scale = 2.0 / (pixels * target.shape[2])
        self.coords = coords.to(like).expand(members, pixels, coords.shape[1]).contiguous()
        self.target_t = target.transpose(1, 2).contiguous()  # [M, 3, pixels]
        widths = [w.shape[2] for w, _ in params[:-1]]
        self.scaled = [torch.empty_like(w) for w, _ in params[:-1]]  # w0 W
        self.scaled_bias = [torch.empty_like(b) for _, b in params[:-1]]  # w0 b
        self.sines = [like.new_empty(members, pixels, h) for h in widths]
        self.cosines = [like.new_empty(members, pixels, h) for h in widths]
        self.back = [like.new_empty(members, pixels, widths[0]) for _ in range(2)]  # all sine layers are hfs wide
        self.pred_t = like.new_empty(members, 3, pixels)
        self.residual_t = like.new_empty(members, 3, pixels)
        self.grads: Params = [(torch.empty_like(w), torch.empty_like(b)) for w, b in params[:-1]]
        w, b = params[-1]
        self.last_grad_t = like.new_empty(members, w.shape[2], w.shape[1])  # the product's layout, [M, 3, hfs]
        self.grads.append((torch.empty_like(w), torch.empty_like(b)))

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """Per-member loss [M] and predictions [M, pixels, 3] before the update, and the gradients.

        The returned predictions and gradients live in the workspace: they are overwritten by the next call.
        """
        params, w0 = self.params, self.w0
        x = self.coords
        for (w, b), ws, bs, s, c in zip(params[:-1], self.scaled, self.scaled_bias, self.sines, self.cosines):
            torch.mul(w, w0, out=ws)
            torch.mul(b, w0, out=bs)
            torch.bmm(x, ws, out=s)
            s.add_(bs)
            torch.cos(s, out=c)
            s.sin_()
            x = s
        w, b = params[-1]
        torch.bmm(w.transpose(1, 2), x.transpose(1, 2), out=self.pred_t).add_(b.transpose(1, 2))
        residual = torch.sub(self.pred_t, self.target_t, out=self.residual_t)
        flat = residual.view(residual.shape[0], -1)
        loss = torch.linalg.vecdot(flat, flat) / flat.shape[1]
        grad_t = residual.mul_(self.scale)  # dy, transposed [M, 3, pixels]
        gw, gb = self.grads[-1]
        gw.copy_(torch.bmm(grad_t, x, out=self.last_grad_t).transpose(1, 2))
        torch.sum(grad_t, dim=2, out=gb.view(gb.shape[0], -1))
        grad = torch.bmm(grad_t.transpose(1, 2), w.transpose(1, 2), out=self.back[0])
        for layer in range(len(params) - 2, -1, -1):
            gw, gb = self.grads[layer]
            grad.mul_(self.cosines[layer])
            inputs = self.coords if layer == 0 else self.sines[layer - 1]
            torch.bmm(inputs.transpose(1, 2), grad, out=gw).mul_(w0)
            torch.sum(grad, dim=1, keepdim=True, out=gb).mul_(w0)
            if layer > 0:
                ws = self.scaled[layer]
                free = self.back[1] if grad.data_ptr() == self.back[0].data_ptr() else self.back[0]
                grad = torch.bmm(grad, ws.transpose(1, 2), out=free)
        return loss, self.pred_t.transpose(1, 2), self.grads


class CpuStep:
    """SirenStep's CPU twin: the same forward and backward, compiled (`prefit.kernels.siren_step`).

    It owns its chunk's parameters, stored so that the compiled step can index them: the first layer
    W [M, 2, hfs], the hidden layers stacked W [hls, M, hfs, hfs], the last layer W [M, hfs, 3] (biases alike);
    `params` and the gradients are lists of (W, b) views into them, in the engine's usual layout, so the
    optimiser never knows. The step works member after member in a workspace of one member's activations
    ([pixels, hfs] per layer, reused), which stays near the core: in its own cache at narrow widths.
    """

    def __init__(self, params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float):
        members, pixels, width = target.shape[0], target.shape[1], params[0][0].shape[2]
        hls = len(params) - 2

        hidden = [torch.stack([p[k] for p in params[1:-1]]) for k in (0, 1)]  # hls >= 1 (config.validate)
        layers = [params[0][0], params[0][1], *hidden, params[-1][0], params[-1][1]]
        self.store = [x.detach().clone(memory_format=torch.contiguous_format) for x in layers]
        self.grad_store = [torch.empty_like(x) for x in self.store]
        self.params = self._pairs(self.store)
        self.grads = self._pairs(self.grad_store)
        self.loss = torch.empty(members)
        self.pred_t = torch.empty(members, 3, pixels)
        f32 = np.float32
        self.args = (
            coords.detach().to(torch.float32).contiguous().numpy(),
            *(x.numpy() for x in self.store),
            target.transpose(1, 2).contiguous().numpy(),
            float(w0),
            2.0 / (pixels * target.shape[2]),
            self.loss.numpy(),
            self.pred_t.numpy(),
            *(g.numpy() for g in self.grad_store),
            np.empty((hls + 1, pixels, width), f32),  # sines
            np.empty((hls + 1, pixels, width), f32),  # cosines
            np.empty((2, pixels, width), f32),  # gradients flowing back
            np.empty((6, width), f32),  # rows: first-layer weights; the last layer's W^T and dW^T
            np.empty(width, f32),  # a layer's w0 b, then its bias gradient
            np.empty((3, pixels), f32),  # residual
        )

    @staticmethod
    def _pairs(store: list[torch.Tensor]) -> Params:
        first_w, first_b, hidden_w, hidden_b, last_w, last_b = store
        return [(first_w, first_b), *zip(hidden_w, hidden_b), (last_w, last_b)]

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """As SirenStep: loss [M], predictions [M, pixels, 3] (views into the workspace), gradients."""
        siren_step(*self.args)
        return self.loss, self.pred_t.transpose(1, 2), self.grads


def make_step(params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float) -> SirenStep | CpuStep:
    """The engine's step for the parameters' device: compiled on a CPU, torch ops elsewhere."""
    kind = CpuStep if params[0][0].device.type == "cpu" else SirenStep
    return kind(params, coords, target, w0)


def loss_and_grads(
    params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float
) -> tuple[torch.Tensor, torch.Tensor, Params]:
    """One forward and backward pass of the torch step (the engine keeps a step per chunk)."""
    loss, pred, grads = SirenStep(params, coords, target, w0)()
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
    coords = coords.to(device)
    threads = torch.get_num_threads()
    chunks = _chunks(members, max_members, threads if device.type == "cpu" else 1)
    with _progress_bar(members * train.epochs, desc, train.progress) as bar:

        def run(chunk: slice) -> Params:
            return _fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar)

        if device.type == "cpu" and threads > 1 and len(chunks) > 1:
            final = _on_cores(run, chunks, threads)
        else:
            with threadpool_limits(threads, user_api="blas"):
                final = [run(chunk) for chunk in chunks]
    result.params = [
        (torch.cat([p[k][0] for p in final]), torch.cat([p[k][1] for p in final])) for k in range(len(params))
    ]
    return result


def _chunks(members: int, max_members: int, cores: int) -> list[slice]:
    """Split members into equal chunks of at most max_members, as many as a multiple of the cores (when
    there are enough members), so that chunks run side by side without a straggler."""
    count = -(-members // max_members)
    if count > 1 or members >= cores:
        count = min(members, -(-count // cores) * cores)
    bounds = [round(i * members / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _on_cores(run: Callable[[slice], Params], chunks: list[slice], threads: int) -> list[Params]:
    """Run independent chunks side by side, one core each, with single-threaded ops.

    Chunks never interact, so this parallelism needs no synchronisation inside an epoch, keeps each chunk's
    activations in its own core's cache, and gives the same numbers as running the chunks one after another.
    """
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(min(threads, len(chunks))) as pool:
            return list(pool.map(run, chunks))
    finally:
        torch.set_num_threads(threads)


def _fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar) -> Params:
    target = targets[chunk].to(device)
    step = make_step([(w[chunk].to(device), b[chunk].to(device)) for w, b in params], coords, target, w0)
    work = step.params
    flat = [t for pair in work for t in pair]
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
        loss, pred, grads = step()
        losses[epoch] = loss
        lrs[epoch] = lr
        slot = slots.get(epoch)
        if slot is not None:
            snaps[:, slot] = pred
        adam.step([g for pair in grads for g in pair])
        plateau.step(loss)
        bar.update(m)
        if bar.disable is False and (epoch % report == 0 or epoch == train.epochs - 1):
            bar.set_postfix(
                epoch=f"{epoch + 1}/{train.epochs}", members=m, psnr=f"{psnr_from_loss(loss).nanmean().item():.1f}"
            )
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
