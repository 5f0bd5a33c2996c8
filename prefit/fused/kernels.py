"""The Triton kernels `prefit.fused` launches (imported where Triton is installed). `*_ptr` parameters are tensors;
`constexpr` ones choose block sizes, results written split for 3xtf32 (`SPLIT`) and libdevice's sine (`PRECISE`)."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language import constexpr
from triton.language.extra import libdevice


@triton.jit
def _sin_cos(x, PRECISE: constexpr):
    if PRECISE:
        return libdevice.sin(x), libdevice.cos(x)
    else:
        return tl.sin(x), tl.cos(x)


@triton.jit
def _store(ptr, hi_ptr, lo_ptr, offs, x, mask, SPLIT: constexpr):
    """x to ptr, or (SPLIT) its TF32 head and remainder to hi_ptr and lo_ptr: x = hi + lo exactly."""
    if SPLIT:
        hi = ((x.to(tl.int32, bitcast=True) + 0x1000) & -0x2000).to(tl.float32, bitcast=True)  # nearest
        tl.store(hi_ptr + offs, hi, mask=mask)
        tl.store(lo_ptr + offs, x - hi, mask=mask)
    else:
        tl.store(ptr + offs, x, mask=mask)


@triton.jit
def sincos_bias(
    s_ptr, c_ptr, b_ptr, hi_ptr, lo_ptr, w0, n, stride, width, BLOCK: constexpr, PRECISE: constexpr, SPLIT: constexpr
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    bias = tl.load(b_ptr + (offs // stride) * width + offs % width, mask=mask)  # stride: a member's elements
    x = tl.load(s_ptr + offs, mask=mask) + w0 * bias
    sin, cos = _sin_cos(x, PRECISE)
    tl.store(c_ptr + offs, cos, mask=mask)
    _store(s_ptr, hi_ptr, lo_ptr, offs, sin, mask, SPLIT)


@triton.jit
def cos_grad(
    g_ptr, c_ptr, gb_ptr, hi_ptr, lo_ptr, w0, pixels, width, BLOCK_P: constexpr, BLOCK_H: constexpr, SPLIT: constexpr
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
def head(
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
    BLOCK_P: constexpr,
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
def schedule(
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
    BLOCK: constexpr,
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
def adam(
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
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    BLOCK: constexpr,
    SPLIT: constexpr,
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
    m = m + one_minus_beta1 * (g - m)  # the constants as torch rounds them (`prefit.fused.adam_constants`)
    v = v * beta2 + one_minus_beta2 * g * g
    denom = tl.div_rn(tl.sqrt_rn(v), bias2_sqrt) + eps  # IEEE sqrt and division, as torch's (Triton's
    p = tl.load(p_ptr + offs, mask=mask, other=0.0) - step_size * tl.div_rn(m, denom)  # defaults are approximate)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(p_ptr + offs, p, mask=mask)
    if SPLIT:  # the next epoch's 3xtf32 products read the weights split
        _store(p_ptr, hi_ptr, lo_ptr, offs, p, mask, True)


@triton.jit
def split_tf32(x_ptr, hi_ptr, lo_ptr, n, BLOCK: constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    _store(x_ptr, hi_ptr, lo_ptr, offs, tl.load(x_ptr + offs, mask=mask, other=0.0), mask, True)
