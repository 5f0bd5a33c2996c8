"""The batched engine: all members of a chunk as one model, chunks side by side on a CPU's cores.

Adam and the plateau schedule keep one learning rate per member (`prefit.optim`); nothing in the epoch loop
reads a value back to the host. On CUDA (and, for tests, under Triton's interpreter) a chunk runs through
the fused, captured loop of `prefit.engine.cuda`; elsewhere through the loop below with the step of
`prefit.engine.steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from threadpoolctl import threadpool_limits

from prefit import fused
from prefit.engine.common import engine, psnr_from_loss
from prefit.engine.cuda import fit_chunk_fused
from prefit.engine.steps import make_step
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
    fit_chunk = fit_chunk_fused if kernels == "fused" else partial(_fit_chunk, kernels=kernels)

    def run(chunk: slice) -> Params:
        return fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar)

    if side_by_side and threads > 1 and len(chunks) > 1:
        return _on_cores(run, chunks, threads)
    with threadpool_limits(threads, user_api="blas"):
        return [run(chunk) for chunk in chunks]


fit_batched = engine(_fit)


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


def _fit_chunk(params, chunk, targets, coords, train, w0, device, slots, result, bar, kernels) -> Params:
    """One chunk through the host-driven loop (compiled or torch step, `prefit.optim`'s Adam and plateau)."""
    target = targets[chunk].to(device)
    chunk_params = [(w[chunk].to(device), b[chunk].to(device)) for w, b in params]
    step = make_step(chunk_params, coords, target, w0, kernels)
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
