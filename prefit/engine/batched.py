"""The batched engine: a chunk's members as one model, chunks side by side on a CPU's cores, one learning rate per
member (`prefit.optim`), nothing read back in the epoch loop. On CUDA (and under Triton's interpreter) a chunk runs
through `prefit.engine.cuda`'s fused, captured loop, or with the torch step through `DeviceChunk`'s captured one;
elsewhere through `HostChunk` and `prefit.engine.steps`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from prefit import fused
from prefit.engine.capture import GraphChunk, epochs_per_graph
from prefit.engine.common import engine, psnr_from_loss
from prefit.engine.cuda import FusedChunk
from prefit.engine.options import FitOptions
from prefit.engine.steps import CpuStep, SirenStep
from prefit.errors import ConfigError
from prefit.model import Params
from prefit.optim import BatchedAdam, BatchedPlateau


def resolve_kernels(name: str, device: torch.device) -> str:
    """train.kernels -> the step that runs: auto is `compiled` on a CPU, `fused` on CUDA (where Triton is)."""
    if name == "auto":
        if device.type == "cpu":
            return "compiled"
        return "fused" if fused.available(device) else "torch"
    if name == "compiled" and device.type != "cpu":
        raise ConfigError(f"train.kernels=compiled runs on a CPU only, not on {device.type}")
    if name == "fused" and (why := fused.unavailable(device)):
        raise ConfigError(f"train.kernels=fused cannot run here: {why}")
    return name


def _fit(params, targets, coords, train, w0, device, max_members, slots, result, bar) -> list[Params]:
    """Fit stacked members to targets [M, pixels, 3], `max_members` at a time (results do not depend on it)."""
    kernels = resolve_kernels(train.kernels, device)
    if train.matmul_precision == "3xtf32" and kernels != "fused":
        raise ConfigError(f"train.matmul_precision=3xtf32 needs train.kernels=fused (the step is {kernels})")
    threads = torch.get_num_threads()
    side_by_side = device.type == "cpu" and kernels == "compiled"
    chunks = _chunks(targets.shape[0], max_members, threads if side_by_side else 1)

    def run(chunk: slice) -> Params:
        return _fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar, kernels)

    if side_by_side and threads > 1 and len(chunks) > 1:
        return _on_cores(run, chunks, threads)
    with threadpool_limits(threads, user_api="blas"):
        return [run(chunk) for chunk in chunks]


fit_batched = engine(_fit)


def _chunks(members: int, max_members: int, cores: int) -> list[slice]:
    """Equal chunks of at most max_members, a multiple of the cores where members allow: no straggler."""
    count = -(-members // max_members)
    if count > 1 or members >= cores:
        count = min(members, -(-count // cores) * cores)
    bounds = [round(i * members / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _on_cores(run: Callable[[slice], Params], chunks: list[slice], threads: int) -> list[Params]:
    """Independent chunks side by side, a core and single-threaded ops each: no syncs, caches kept, the same numbers."""
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(min(threads, len(chunks))) as pool:
            return list(pool.map(run, chunks))
    finally:
        torch.set_num_threads(threads)


class HostChunk:
    """A chunk's fit through the host-driven loop (`prefit.engine.steps`, `prefit.optim`), as `FusedChunk` runs one."""

    device_step = False  # Adam's step count on the device (`DeviceChunk`)

    def __init__(
        self, params: Params, coords: Tensor, target: Tensor, train: FitOptions, w0: float, slots: dict, kernels: str
    ):
        members, device = target.shape[0], target.device
        self.train, self.slots = train, slots
        kind = CpuStep if kernels == "compiled" and device.type == "cpu" else SirenStep
        self.step = kind(params, coords, target, w0)
        self.lr = torch.full((members,), train.lr, dtype=torch.float64, device=device)
        flat = [t for pair in self.step.params for t in pair]
        betas = tuple(train.betas)
        self.adam = BatchedAdam(flat, self.lr, betas=betas, eps=train.eps, device_step=self.device_step)
        self.plateau = BatchedPlateau(self.lr, train.plateau_factor, train.plateau_patience, train.plateau_threshold)
        self.losses = torch.empty(train.epochs, members, device=device)
        self.lrs = torch.empty(train.epochs, members, dtype=torch.float64, device=device)
        self.snaps = torch.empty(members, len(slots), *target.shape[1:], device=device)

    def run(self, capture: bool = False, progress: Callable[[int, Tensor], None] | None = None) -> None:
        """All epochs (nothing to capture); `progress(epochs, loss)` every twentieth of them and at the end."""
        epochs, every, reported = self.train.epochs, max(1, self.train.epochs // 20), 0
        for epoch in range(epochs):
            loss, pred, grads = self.step()
            self.losses[epoch] = loss
            self.lrs[epoch] = self.lr
            if (slot := self.slots.get(epoch)) is not None:
                self.snaps[:, slot] = pred
            self.adam.step([g for pair in grads for g in pair])
            self.plateau.step(loss)
            if progress is not None and (epoch + 1 - reported >= every or epoch + 1 == epochs):
                progress(epoch + 1 - reported, loss)
                reported = epoch + 1

    def steady_seconds(self) -> tuple[float, int]:
        return 0.0, 0  # only the CUDA engine times its steady epochs


class DeviceChunk(GraphChunk, HostChunk):
    """`HostChunk`'s torch step with every per-epoch state on the device, so that its epochs can be captured as
    `FusedChunk`'s are (`GraphChunk`): the epoch counter, Adam's step count, the records written at the counter's
    row, the snapshot slot looked up in a device table. A plain torch epoch is dozens of small launches; captured,
    a 2 x 32 epoch of 100 members took 0.54 ms instead of 1.80 (H100). The numbers are `HostChunk`'s with the
    multi-tensor Adam."""

    device_step = True

    def __init__(
        self, params: Params, coords: Tensor, target: Tensor, train: FitOptions, w0: float, slots: dict[int, int]
    ):
        HostChunk.__init__(self, params, coords, target, train, w0, slots, "torch")
        GraphChunk.__init__(self, epochs_per_graph(params, target))
        device = target.device
        self.counter = torch.zeros(1, dtype=torch.int64, device=device)
        self.row = torch.zeros(1, dtype=torch.int64, device=device)  # where the latest epoch's records went
        table = torch.full((train.epochs + 1,), -1, dtype=torch.int64)  # epoch -> slot, -1: none (and past the end)
        for epoch, slot in slots.items():
            table[epoch] = slot
        self.table = table.to(device)

    def epoch(self) -> None:
        """HostChunk's epoch at the device counter's row; nothing is read back. A run past `epochs` epochs (without
        `rewind`) writes the last row again and no snapshot, as `FusedChunk` does."""
        loss, pred, grads = self.step()
        torch.clamp(self.counter, max=self.train.epochs - 1, out=self.row)
        self.losses.index_copy_(0, self.row, loss.unsqueeze(0))
        self.lrs.index_copy_(0, self.row, self.lr.unsqueeze(0))
        if self.slots:
            slot = self.table.index_select(0, self.counter.clamp(max=self.train.epochs))
            at = slot.clamp(min=0)
            kept = self.snaps.index_select(1, at)
            self.snaps.index_copy_(1, at, torch.where(slot >= 0, pred.unsqueeze(1), kept))
        self.adam.step([g for pair in grads for g in pair])
        self.plateau.step(loss)
        self.counter.add_(1)

    def latest_loss(self) -> Tensor:
        return self.losses.index_select(0, self.row)[0]


def _fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar, kernels) -> Params:
    """One chunk of `fit_batched`: on CUDA `FusedChunk` or, with the torch step, `DeviceChunk` (both captured with
    train.cuda_graphs); elsewhere `HostChunk`."""
    target = targets[chunk].to(device)
    start = [(w[chunk].to(device), b[chunk].to(device)) for w, b in params]
    if kernels == "fused":
        kind = FusedChunk
    elif kernels == "torch" and device.type == "cuda":
        kind = DeviceChunk
    else:
        kind = partial(HostChunk, kernels=kernels)
    runner = kind(start, coords, target, train, w0, slots)
    del start  # copied into the runner's own buffers
    members = target.shape[0]

    def progress(epochs: int, loss: Tensor) -> None:
        bar.update(epochs * members)
        if bar.disable is False:
            bar.set_postfix(members=members, psnr=f"{psnr_from_loss(loss).nanmean().item():.1f}")

    runner.run(capture=device.type == "cuda" and train.cuda_graphs, progress=progress)
    result.loss[chunk] = runner.losses.T.cpu()
    result.lr[chunk] = runner.lrs.T.cpu()
    if slots:
        result.snapshots[chunk] = runner.snaps.cpu()
    seconds, epochs = runner.steady_seconds()
    result.steady_s += seconds
    result.steady_member_epochs += epochs * members
    return [(w.cpu().clone(), b.cpu().clone()) for w, b in runner.step.params]
