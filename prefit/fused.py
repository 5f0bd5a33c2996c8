"""Fused elementwise work of the CUDA engine, as Triton kernels.

An epoch of the torch step spends, besides its matrix products, one pass over every activation for each
elementwise op (scale, bias, sine, cosine, product with the cosine, bias-gradient sum) and eight multi-tensor
passes for Adam. These kernels do that work in as few passes as the arithmetic allows:

- `sincos_bias_`: the forward's bias, sine and cosine of a layer in one pass (the product before it is
  scaled by w0 in cuBLAS's epilogue);
- `cos_grad_`: the backward's product with the cosine and the bias gradient's sum over pixels, in one pass;
- `head`: the last layer's bias, residual, loss, output gradient, its bias gradient and (at snapshot
  epochs) the kept prediction, one program per member;
- `schedule`: per epoch and member, the recorded loss and learning rate, Adam's bias corrections and step
  size, and the ReduceLROnPlateau update, driven by an epoch counter that lives on the device;
- `adam`: Adam over every parameter of a chunk in one launch (one flat buffer, one learning rate per member);
- `split_tf32_`: the operands of `3xtf32` products, split into a TF32 head and its remainder.

At `3xtf32` the sine pass, the cosine pass and Adam can write their result split (`split=(hi, lo)`), so that the
products read halves made in the same pass instead of splitting each operand in a pass of its own.

Nothing here reads a value back to the host, so an epoch can be captured as a CUDA graph and replayed.
The arithmetic is that of `prefit.engine.SirenStep`, `prefit.optim.BatchedAdam` and `BatchedPlateau`; the
tests compare them. Under `TRITON_INTERPRET=1` the kernels run on CPU tensors, which is how CI (no GPU)
tests them; there `tl.sin` is numpy's, while compiled for CUDA the sine and cosine are libdevice's
correctly range-reduced `sinf`/`cosf` (SIREN pre-activations reach hundreds of radians).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def unavailable(device: torch.device) -> str | None:
    """Why the fused kernels cannot run on `device` (None: they can, compiled on CUDA or interpreted on a CPU)."""
    if triton is None:
        return "Triton is not installed (it is on Linux x86-64)"
    if INTERPRET and device.type == "cpu":
        import numpy

        if _version(triton.__version__) < (3, 7) and _version(numpy.__version__) >= (2, 4):
            # its scalar arguments are one-element arrays, which numpy 2.4 no longer turns into an int
            return f"Triton {triton.__version__}'s interpreter fails with numpy {numpy.__version__} (Triton 3.7 runs)"
        return None
    if device.type == "cuda" and not INTERPRET:
        return None
    return "they need a GPU (compiled) or a CPU with TRITON_INTERPRET=1 (interpreted), not " + (
        f"{device.type} with TRITON_INTERPRET=1" if INTERPRET else device.type
    )


def available(device: torch.device) -> bool:
    """Whether the fused kernels can run on `device` (`unavailable` says why not)."""
    return unavailable(device) is None


if triton is not None:
    PRECISE = not INTERPRET  # libdevice is not interpreted; numpy's sin and cos are already precise

    @triton.jit
    def _sin_cos(x, PRECISE: tl.constexpr):
        if PRECISE:
            return libdevice.sin(x), libdevice.cos(x)
        else:
            return tl.sin(x), tl.cos(x)

    @triton.jit
    def _store(ptr, hi_ptr, lo_ptr, offs, x, mask, SPLIT: tl.constexpr):
        """x to ptr, or (SPLIT) its TF32 head and remainder to hi_ptr and lo_ptr: x = hi + lo exactly."""
        if SPLIT:
            hi = ((x.to(tl.int32, bitcast=True) + 0x1000) & -0x2000).to(tl.float32, bitcast=True)  # nearest
            tl.store(hi_ptr + offs, hi, mask=mask)
            tl.store(lo_ptr + offs, x - hi, mask=mask)
        else:
            tl.store(ptr + offs, x, mask=mask)

    @triton.jit
    def _sincos_bias_kernel(
        s_ptr,
        c_ptr,
        b_ptr,
        hi_ptr,
        lo_ptr,
        w0,
        n,
        per_member,
        width,
        BLOCK: tl.constexpr,
        PRECISE: tl.constexpr,
        SPLIT: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        bias = tl.load(b_ptr + (offs // per_member) * width + offs % width, mask=mask)
        x = tl.load(s_ptr + offs, mask=mask) + w0 * bias
        sin, cos = _sin_cos(x, PRECISE)
        tl.store(c_ptr + offs, cos, mask=mask)
        _store(s_ptr, hi_ptr, lo_ptr, offs, sin, mask, SPLIT)

    @triton.jit
    def _cos_grad_kernel(
        g_ptr,
        c_ptr,
        gb_ptr,
        hi_ptr,
        lo_ptr,
        w0,
        pixels,
        width,
        BLOCK_P: tl.constexpr,
        BLOCK_H: tl.constexpr,
        SPLIT: tl.constexpr,
    ):
        member = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        base = member * pixels * width
        acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        for p0 in range(0, pixels, BLOCK_P):
            rows = p0 + tl.arange(0, BLOCK_P)
            idx = base + rows[:, None] * width + cols[None, :]
            mask = (rows[:, None] < pixels) & (cols[None, :] < width)
            g = tl.load(g_ptr + idx, mask=mask, other=0.0) * tl.load(c_ptr + idx, mask=mask, other=0.0)
            _store(g_ptr, hi_ptr, lo_ptr, idx, g, mask, SPLIT)
            acc += tl.sum(g, axis=0)
        tl.store(gb_ptr + member * width + cols, acc * w0, mask=cols < width)

    @triton.jit
    def _head_kernel(
        pred_ptr,
        b_ptr,
        target_ptr,
        grad_ptr,
        loss_ptr,
        gb_ptr,
        snaps_ptr,
        slot_ptr,
        t_ptr,
        scale,
        pixels,
        epochs,
        n_slots,
        BLOCK_P: tl.constexpr,
    ):
        member = tl.program_id(0).to(tl.int64)
        t = tl.load(t_ptr)
        slot = tl.load(slot_ptr + tl.minimum(t, epochs - 1))
        slot = tl.where(t < epochs, slot, -1)
        total = tl.zeros([BLOCK_P], dtype=tl.float32)
        for c in tl.static_range(3):
            bias = tl.load(b_ptr + member * 3 + c)
            row = (member * 3 + c) * pixels
            gsum = tl.zeros([BLOCK_P], dtype=tl.float32)
            for p0 in range(0, pixels, BLOCK_P):
                p = p0 + tl.arange(0, BLOCK_P)
                mask = p < pixels
                pred = tl.load(pred_ptr + row + p, mask=mask, other=0.0) + bias
                r = tl.where(mask, pred - tl.load(target_ptr + row + p, mask=mask, other=0.0), 0.0)
                tl.store(pred_ptr + row + p, pred, mask=mask)
                total += r * r
                g = r * scale
                tl.store(grad_ptr + row + p, g, mask=mask)
                gsum += g
                if slot >= 0:
                    tl.store(snaps_ptr + ((member * n_slots + slot) * pixels + p) * 3 + c, pred, mask=mask)
            tl.store(gb_ptr + member * 3 + c, tl.sum(gsum, axis=0))
        tl.store(loss_ptr + member, tl.div_rn(tl.sum(total, axis=0), (3 * pixels) * 1.0))

    @triton.jit
    def _schedule_kernel(
        loss_ptr,
        lr_ptr,
        best_ptr,
        bad_ptr,
        losses_ptr,
        lrs_ptr,
        step_size_ptr,
        powers_ptr,
        t_ptr,
        consts_ptr,
        members,
        epochs,
        patience,
        BLOCK: tl.constexpr,
    ):
        # float64 constants from memory: Triton passes Python floats as float32 (1e-4 would not be 1e-4)
        beta1, beta2 = tl.load(consts_ptr), tl.load(consts_ptr + 1)
        factor, threshold = tl.load(consts_ptr + 2), tl.load(consts_ptr + 3)
        min_lr, eps = tl.load(consts_ptr + 4), tl.load(consts_ptr + 5)
        t = tl.load(t_ptr)
        power1 = tl.load(powers_ptr) * beta1
        power2 = tl.load(powers_ptr + 1) * beta2
        bias1 = 1.0 - power1
        tl.debug_barrier()  # every thread has read t and the powers before any writes them (one warp anyway)
        tl.store(powers_ptr, power1)
        tl.store(powers_ptr + 1, power2)
        tl.store(powers_ptr + 2, tl.sqrt(1.0 - power2))
        row = tl.minimum(t, epochs - 1) * members
        for m0 in range(0, members, BLOCK):
            m = m0 + tl.arange(0, BLOCK)
            mask = m < members
            loss32 = tl.load(loss_ptr + m, mask=mask)
            loss = loss32.to(tl.float64)
            lr = tl.load(lr_ptr + m, mask=mask)
            tl.store(losses_ptr + row + m, loss32, mask=mask)  # the caller runs `epochs` epochs, no more
            tl.store(lrs_ptr + row + m, lr, mask=mask)
            tl.store(step_size_ptr + m, (lr / bias1).to(tl.float32), mask=mask)
            best = tl.load(best_ptr + m, mask=mask)
            bad = tl.load(bad_ptr + m, mask=mask)
            better = loss < best * (1.0 - threshold)
            best = tl.where(better, loss, best)
            bad = tl.where(better, 0, bad + 1)
            reduce = bad > patience
            new_lr = tl.maximum(lr * factor, min_lr)
            lr = tl.where(reduce & (lr - new_lr > eps), new_lr, lr)
            bad = tl.where(reduce, 0, bad)
            tl.store(best_ptr + m, best, mask=mask)
            tl.store(bad_ptr + m, bad, mask=mask)
            tl.store(lr_ptr + m, lr, mask=mask)
        tl.store(t_ptr, t + 1)

    @triton.jit
    def _adam_kernel(
        p_ptr,
        g_ptr,
        m_ptr,
        v_ptr,
        hi_ptr,
        lo_ptr,
        step_size_ptr,
        powers_ptr,
        block_start_ptr,
        block_tensor_ptr,
        offsets_ptr,
        numels_ptr,
        per_member_ptr,
        beta1,
        beta2,
        eps,
        BLOCK: tl.constexpr,
        SPLIT: tl.constexpr,
    ):
        pid = tl.program_id(0)
        tensor = tl.load(block_tensor_ptr + pid)
        start = tl.load(block_start_ptr + pid)
        local = start - tl.load(offsets_ptr + tensor) + tl.arange(0, BLOCK)
        mask = local < tl.load(numels_ptr + tensor)
        offs = start + tl.arange(0, BLOCK)
        member = local // tl.load(per_member_ptr + tensor)
        step_size = tl.load(step_size_ptr + member, mask=mask, other=0.0)
        bias2_sqrt = tl.load(powers_ptr + 2).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * g * g
        denom = tl.div_rn(tl.sqrt_rn(v), bias2_sqrt) + eps  # IEEE sqrt and division, as torch's (Triton's
        p = tl.load(p_ptr + offs, mask=mask, other=0.0) - step_size * tl.div_rn(m, denom)  # defaults are approximate)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(p_ptr + offs, p, mask=mask)
        if SPLIT:  # the next epoch's 3xtf32 products read the weights split
            _store(p_ptr, hi_ptr, lo_ptr, offs, p, mask, True)

    @triton.jit
    def _split_tf32_kernel(x_ptr, hi_ptr, lo_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        _store(x_ptr, hi_ptr, lo_ptr, offs, tl.load(x_ptr + offs, mask=mask, other=0.0), mask, True)


ELEMENTWISE_BLOCK = 1024
ADAM_BLOCK = 1024


Halves = tuple[torch.Tensor, torch.Tensor]  # (hi, lo): a tensor split for 3xtf32 products (`split_tf32_`)


def sincos_bias_(s: torch.Tensor, c: torch.Tensor, b: torch.Tensor, w0: float, split: Halves | None = None) -> None:
    """s <- sin(s + w0 b), c <- cos(s + w0 b) for s [M, pixels, H], b [M, 1, H]: one pass. With `split`, the
    sine goes to its halves instead of s (the 3xtf32 products read only those)."""
    n, width = s.numel(), s.shape[2]
    hi, lo = split or (s, s)
    grid = (triton.cdiv(n, ELEMENTWISE_BLOCK),)
    # enable_fp_fusion=False: s + w0 b rounded twice, as torch does; a fused multiply-add moves the sine's
    # argument by an ulp, and at a hundred radians an ulp is 8e-6
    _sincos_bias_kernel[grid](
        s,
        c,
        b,
        hi,
        lo,
        w0,
        n,
        s.shape[1] * width,
        width,
        BLOCK=ELEMENTWISE_BLOCK,
        PRECISE=PRECISE,
        SPLIT=split is not None,
        enable_fp_fusion=False,
    )


def cos_grad_(g: torch.Tensor, c: torch.Tensor, gb: torch.Tensor, w0: float, split: Halves | None = None) -> None:
    """g <- g * c, gb <- w0 * sum over pixels of g, for g, c [M, pixels, H], gb [M, 1, H]: one pass. With
    `split`, g * c goes to its halves instead of g."""
    members, pixels, width = g.shape
    hi, lo = split or (g, g)
    block_h = min(64, triton.next_power_of_2(width))
    grid = (members, triton.cdiv(width, block_h))
    # enable_fp_fusion=False: g * c rounded before it is summed or split, as torch does; a fused multiply-add
    # would take the split's remainder (g * c - hi) from the unrounded product, so hi + lo would not be g
    _cos_grad_kernel[grid](
        g,
        c,
        gb,
        hi,
        lo,
        w0,
        pixels,
        width,
        BLOCK_P=max(16, 4096 // block_h),
        BLOCK_H=block_h,
        SPLIT=split is not None,
        enable_fp_fusion=False,
    )


def head(
    pred_t: torch.Tensor,
    bias: torch.Tensor,
    target_t: torch.Tensor,
    grad_t: torch.Tensor,
    loss: torch.Tensor,
    grad_bias: torch.Tensor,
    snaps: torch.Tensor,
    slots: torch.Tensor,
    epoch: torch.Tensor,
    scale: float,
) -> None:
    """The last layer's epilogue, one program per member.

    pred_t [M, 3, pixels] holds W^T a on entry and the prediction (+ bias) on exit; grad_t <- scale x residual;
    loss [M] <- mean squared residual; grad_bias [M, 1, 3] <- sum of grad_t over pixels; when slots[epoch] >= 0
    the prediction is kept in snaps[:, slots[epoch]] ([M, S, pixels, 3]).
    """
    members, _, pixels = pred_t.shape
    _head_kernel[(members,)](
        pred_t,
        bias,
        target_t,
        grad_t,
        loss,
        grad_bias,
        snaps,
        slots,
        epoch,
        scale,
        pixels,
        slots.shape[0],
        snaps.shape[1],
        BLOCK_P=min(1024, triton.next_power_of_2(pixels)),
    )


@dataclass
class Schedule:
    """Adam's and ReduceLROnPlateau's per-member state, on the device, advanced by `schedule`."""

    lr: torch.Tensor  # float64 [M]
    best: torch.Tensor  # float64 [M]
    bad_epochs: torch.Tensor  # int64 [M]
    step_size: torch.Tensor  # float32 [M]: lr / (1 - beta1^t) for this epoch's update
    powers: torch.Tensor  # float64 [3]: beta1^t, beta2^t, sqrt(1 - beta2^t)
    epoch: torch.Tensor  # int64 [1]: epochs done
    consts: torch.Tensor | None = None  # float64 [6]: the schedule's constants, made once (capture allocates none)
    consts_values: tuple = ()

    def constants(self, betas, factor, threshold, min_lr, eps) -> torch.Tensor:
        values = (*betas, factor, threshold, min_lr, eps)
        if self.consts_values != values:
            self.consts = torch.tensor(values, dtype=torch.float64, device=self.lr.device)
            self.consts_values = values
        return self.consts

    @classmethod
    def start(cls, lr: float, members: int, device: torch.device) -> Schedule:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(
            lr=torch.full((members,), lr, **f64),
            best=torch.full((members,), float("inf"), **f64),
            bad_epochs=torch.zeros(members, dtype=torch.int64, device=device),
            step_size=torch.zeros(members, dtype=torch.float32, device=device),
            powers=torch.tensor([1.0, 1.0, 0.0], **f64),
            epoch=torch.zeros(1, dtype=torch.int64, device=device),
        )


def schedule(
    state: Schedule,
    loss: torch.Tensor,
    losses: torch.Tensor,
    lrs: torch.Tensor,
    betas: tuple[float, float],
    factor: float,
    patience: int,
    threshold: float,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> None:
    """One epoch's bookkeeping: losses[epoch] <- loss, lrs[epoch] <- lr; this epoch's Adam step size and
    bias correction; the plateau schedule's update of lr; epoch += 1. One program: the counter is read and
    advanced by the same one, and a chunk has at most a few thousand members. One warp: the scalar state is
    read by every thread and written by one, and warps of one program are not ordered without a barrier."""
    members = loss.shape[0]
    consts = state.constants(betas, factor, threshold, min_lr, eps)
    _schedule_kernel[(1,)](
        loss,
        state.lr,
        state.best,
        state.bad_epochs,
        losses,
        lrs,
        state.step_size,
        state.powers,
        state.epoch,
        consts,
        members,
        losses.shape[0],
        patience,
        BLOCK=min(1024, triton.next_power_of_2(members)),
        num_warps=1,
    )


class FlatParams:
    """A chunk's parameters (or gradients, or Adam moments) in one flat buffer, so Adam is one launch.

    Each tensor [M, ...] is a contiguous view into the buffer, starting at a multiple of ADAM_BLOCK, so that a
    program of `adam` touches one tensor only; `tables` maps each program to its tensor, and each element to
    its member through the tensor's size per member.
    """

    def __init__(self, shapes: list[torch.Size], device: torch.device):
        self.shapes = shapes
        sizes = [s.numel() for s in shapes]
        offsets, starts, owners, total = [], [], [], 0
        for k, size in enumerate(sizes):
            offsets.append(total)
            blocks = -(-size // ADAM_BLOCK)
            starts += [total + j * ADAM_BLOCK for j in range(blocks)]
            owners += [k] * blocks
            total += blocks * ADAM_BLOCK
        self.offsets, self.size = offsets, total
        i64 = dict(dtype=torch.int64, device=device)
        self.tables = (
            torch.tensor(starts, **i64),
            torch.tensor(owners, dtype=torch.int32, device=device),
            torch.tensor(offsets, **i64),
            torch.tensor(sizes, **i64),
            torch.tensor([s.numel() // s[0] for s in shapes], **i64),
        )

    def buffer(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.size, dtype=torch.float32, device=like.device)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[o : o + s.numel()].view(s) for o, s in zip(self.offsets, self.shapes)]


def adam(
    layout: FlatParams,
    params: torch.Tensor,
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    state: Schedule,
    betas: tuple[float, float],
    eps: float,
    split: Halves | None = None,
) -> None:
    """Adam on flat buffers laid out by `layout`, with `state`'s per-member step sizes: one launch. With
    `split`, the updated parameters are also written split, for the next epoch's 3xtf32 products."""
    hi, lo = split or (params, params)
    grid = (layout.tables[0].shape[0],)
    _adam_kernel[grid](
        params,
        grads,
        exp_avg,
        exp_avg_sq,
        hi,
        lo,
        state.step_size,
        state.powers,
        *layout.tables,
        betas[0],
        betas[1],
        eps,
        BLOCK=ADAM_BLOCK,
        SPLIT=split is not None,
    )


def split_tf32_(x: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> None:
    """hi <- x rounded to TF32 (10 mantissa bits, nearest), lo <- x - hi (exact): x = hi + lo."""
    n = x.numel()
    _split_tf32_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](x, hi, lo, n, BLOCK=ELEMENTWISE_BLOCK)
