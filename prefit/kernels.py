"""The CPU engine's compiled step: forward and backward of a chunk of SIRENs, one member at a time (numba).

A narrow SIREN's epoch is a few dozen small array operations streaming activations through memory; `siren_step`
runs one member's whole pass after another without the GIL, in the core's cache: BLAS products, one argument
reduction for a sine layer's sine and cosine (`_sincos`: Cody-Waite, exact while |x| <= REDUCTION_LIMIT, Taylor
polynomials, within 1.5 float32 ulp; libm's float64 sin and cos beyond), the first and last layers written out.
The arithmetic is `prefit.engine.SirenStep`'s (tests/test_kernels.py).
"""

from __future__ import annotations

import ctypes
import os

import llvmlite.binding
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  numba's np.dot calls this BLAS: load it before thread limits apply
from numba import carray, cfunc, njit, types
from threadpoolctl import threadpool_info

REDUCTION_LIMIT = 8192.0  # |x| up to this keeps k < 2^13, where k * _PIO2_A and k * _PIO2_B are exact

_TWO_OVER_PI = np.float32(2 / np.pi)
# pi/2 = _PIO2_A + _PIO2_B + _PIO2_C (Cody and Waite's split, as in Cephes, doubled from pi/4)
_PIO2_A = np.float32(1.5703125)
_PIO2_B = np.float32(4.837512969970703125e-4)
_PIO2_C = np.float32(7.54978995489188216e-8)
_S3, _S5, _S7, _S9 = (np.float32(c) for c in (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880))
_C2, _C4, _C6, _C8, _C10 = (np.float32(c) for c in (-1 / 2, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800))
_ZERO, _ONE, _HALF = np.float32(0.0), np.float32(1.0), np.float32(0.5)

_JIT = {"nogil": True, "cache": True, "boundscheck": False, "error_model": "numpy", "fastmath": {"contract"}}

# The products call `prefit_sgemm` (cblas_sgemm's signature, 64-bit integers), bound at import to numpy's OpenBLAS
# (faster than scipy's at transposed products) where numpy ships one, else to `_sgemm_fallback` (np.dot; forced by
# PREFIT_SGEMM=fallback). Compiled code names only the symbol, so cached kernels stay valid either way.

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SGEMM_ARGS = (types.int32,) * 3 + (types.int64,) * 3 + (types.float32,)
_SGEMM_TAIL = (types.int64, types.float32)
_sgemm = types.ExternalFunction(
    "prefit_sgemm",
    types.void(*_SGEMM_ARGS, types.voidptr, types.int64, types.voidptr, *_SGEMM_TAIL, types.voidptr, types.int64),
)
_F32P = types.CPointer(types.float32)


@cfunc(types.void(*_SGEMM_ARGS, _F32P, types.int64, _F32P, *_SGEMM_TAIL, _F32P, types.int64), cache=True)
def _sgemm_fallback(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # noqa: ARG001
    """cblas_sgemm as the step calls it (row-major, unpadded, beta = 0), through np.dot."""
    left = carray(a, (k, m)).T if trans_a == _TRANS else carray(a, (m, k))
    right = carray(b, (n, k)).T if trans_b == _TRANS else carray(b, (k, n))
    out = carray(c, (m, n))
    np.dot(np.ascontiguousarray(left), np.ascontiguousarray(right), out)
    if alpha != 1:
        for i in range(m):
            for j in range(n):
                out[i, j] *= alpha


def _bind_sgemm() -> str:
    """Point `prefit_sgemm` at the fastest implementation found; returns which one (`SGEMM`)."""
    if os.environ.get("PREFIT_SGEMM") != "fallback":
        for lib in threadpool_info():
            if lib.get("internal_api") != "openblas" or "numpy" not in lib.get("filepath", ""):
                continue
            try:
                symbol = ctypes.CDLL(lib["filepath"]).scipy_cblas_sgemm64_
            except (OSError, AttributeError):
                continue
            llvmlite.binding.add_symbol("prefit_sgemm", ctypes.cast(symbol, ctypes.c_void_p).value)
            return "numpy's OpenBLAS"
    llvmlite.binding.add_symbol("prefit_sgemm", _sgemm_fallback.address)
    return "np.dot (scipy's BLAS)"


SGEMM = _bind_sgemm()


@njit(inline="always", **_JIT)
def _matmul(a, b, out, trans_a, trans_b, alpha):
    """out <- alpha op(a) op(b) for C-contiguous 2-D float32 arrays, op = transpose where asked."""
    k = a.shape[0] if trans_a else a.shape[1]
    ta = _TRANS if trans_a else _NO_TRANS
    tb = _TRANS if trans_b else _NO_TRANS
    rows, cols = out.shape
    _sgemm(
        _ROW_MAJOR, ta, tb, rows, cols, k, alpha, a.ctypes, a.shape[1], b.ctypes, b.shape[1], _ZERO, out.ctypes, cols
    )


@njit(inline="always", **_JIT)
def _sincos(x):
    """(sin x, cos x) in float32, branch-free so that the loops around it vectorise."""
    k = np.floor(x * _TWO_OVER_PI + _HALF)
    r = x - k * _PIO2_A
    r = r - k * _PIO2_B
    r = r - k * _PIO2_C
    r2 = r * r
    sin_r = r + r * r2 * (_S3 + r2 * (_S5 + r2 * (_S7 + r2 * _S9)))
    cos_r = _ONE + r2 * (_C2 + r2 * (_C4 + r2 * (_C6 + r2 * (_C8 + r2 * _C10))))
    quadrant = np.int32(k)
    odd = (quadrant & 1) != 0
    sin_x = (cos_r if odd else sin_r) * np.float32(1 - (quadrant & 2))
    cos_x = (sin_r if odd else cos_r) * np.float32(1 - ((quadrant + 1) & 2))
    return sin_x, cos_x


@njit(**_JIT)
def _sine_layer(s, bias, cosine, bound):
    """s [pixels, width] <- sin(s + bias), cosine <- cos(s + bias); `bound` bounds |s + bias|."""
    pixels, width = s.shape
    if bound <= REDUCTION_LIMIT:  # False for NaN too
        for p in range(pixels):
            for h in range(width):
                s[p, h], cosine[p, h] = _sincos(s[p, h] + bias[h])
    else:
        for p in range(pixels):
            for h in range(width):
                x = np.float64(s[p, h] + bias[h])
                s[p, h], cosine[p, h] = np.sin(x), np.cos(x)


@njit(**_JIT)
def _cosine_grad(grad, cosine, bias_sum):
    """grad [pixels, width] <- grad * cosine; bias_sum [width] <- sum over pixels of the new grad."""
    pixels, width = grad.shape
    bias_sum[:] = 0.0
    for p in range(pixels):
        for h in range(width):
            g = grad[p, h] * cosine[p, h]
            grad[p, h] = g
            bias_sum[h] += g


@njit(**_JIT)
def _column_bounds(w, scale):
    """Column sums of |scale * w|: they bound the entries of x (scale * w) for any x in [-1, 1]."""
    rows, cols = w.shape
    column = np.zeros(cols, np.float32)
    for i in range(rows):
        for j in range(cols):
            column[j] += abs(w[i, j] * scale)
    return column


# Dot products over a row need their sums reassociated to vectorise; no NaN/inf assumptions are made.
_JIT_SUMS = dict(_JIT, fastmath={"contract", "reassoc"})


@njit(**_JIT_SUMS)
def _last_layer(a, wt, bias, target_t, y_t, resid, scale):
    """y^T [3, pixels] <- wt a^T + bias (wt = W^T [3, width]), resid <- scale (y - t); returns sum (y - t)^2. Three dot
    products along a row of `a`: a matrix product of this shape runs at a fraction of its speed."""
    pixels, width = a.shape
    total = 0.0
    for p in range(pixels):
        s0 = s1 = s2 = np.float32(0.0)
        for h in range(width):
            v = a[p, h]
            s0 += v * wt[0, h]
            s1 += v * wt[1, h]
            s2 += v * wt[2, h]
        for j, s in ((0, s0), (1, s1), (2, s2)):
            v = s + bias[j]
            y_t[j, p] = v
            r = v - target_t[j, p]
            total += r * r
            resid[j, p] = r * scale
    return total


@njit(**_JIT)
def _last_layer_backward(a, cosine, resid, wt, dwt, grad, bias_sum):
    """dwt [3, width] <- resid a (dW^T of the last layer); grad [pixels, width] <- (resid^T wt) * cosine, the
    gradient at the last sine layer's pre-activation; bias_sum <- its sum over pixels."""
    pixels, width = a.shape
    dwt[:] = 0.0
    bias_sum[:] = 0.0
    for p in range(pixels):
        r0, r1, r2 = resid[0, p], resid[1, p], resid[2, p]
        for h in range(width):
            v = a[p, h]
            dwt[0, h] += r0 * v
            dwt[1, h] += r1 * v
            dwt[2, h] += r2 * v
            g = (r0 * wt[0, h] + r1 * wt[1, h] + r2 * wt[2, h]) * cosine[p, h]
            grad[p, h] = g
            bias_sum[h] += g


@njit(**_JIT)
def siren_step(coords, params, target_t, w0, scale, loss, pred_t, grads, work):
    """Forward and backward of `members` SIRENs on shared coordinates (shapes: `CpuStep`), one member's workspace
    `work` at a time: the loss (summed in float64), the transposed prediction and the gradients. The products scale by
    w0 (BLAS's alpha), so the weights are never scaled in memory."""
    first_w, first_b, hidden_w, hidden_b, last_w, last_b = params
    grad_first_w, grad_first_b, grad_hidden_w, grad_hidden_b, grad_last_w, grad_last_b = grads
    sines, cosines, back, rows, bias, resid = work
    members, pixels, width = first_w.shape[0], coords.shape[0], first_w.shape[2]
    hls = hidden_w.shape[0]
    w0f = np.float32(w0)
    reach = np.float32(np.abs(coords).max())
    x0, x1 = coords[:, 0], coords[:, 1]
    for m in range(members):
        # forward, first layer: s = x (w0 W) + w0 b with 2 inputs, written out
        s, bound = sines[0], np.float32(0.0)
        for h in range(width):
            rows[0, h] = w0f * first_w[m, 0, h]
            rows[1, h] = w0f * first_w[m, 1, h]
            bias[h] = w0f * first_b[m, 0, h]
            bound = max(bound, (abs(rows[0, h]) + abs(rows[1, h])) * reach + abs(bias[h]))
        for p in range(pixels):
            for h in range(width):
                s[p, h] = x0[p] * rows[0, h] + x1[p] * rows[1, h]
        _sine_layer(s, bias, cosines[0], bound)
        # hidden layers: s = a (w0 W) + w0 b, |s| <= column sums of |w0 W| + |w0 b| since |a| <= 1
        for layer in range(hls):
            column = _column_bounds(hidden_w[layer, m], w0f)
            bound = np.float32(0.0)
            for h in range(width):
                bias[h] = w0f * hidden_b[layer, m, 0, h]
                bound = max(bound, column[h] + abs(bias[h]))
            _matmul(sines[layer], hidden_w[layer, m], sines[layer + 1], False, False, w0f)
            _sine_layer(sines[layer + 1], bias, cosines[layer + 1], bound)
        # last layer (3 outputs, written out): y = a W + b, loss, dy = scale (y - t), then the backward
        # through it and the last sine layer's cosine in one pass
        wt, dwt = rows[:3], rows[3:]
        for j in range(3):
            for h in range(width):
                wt[j, h] = last_w[m, h, j]
        a, g = sines[hls], back[0]
        total = _last_layer(a, wt, last_b[m, 0], target_t[m], pred_t[m], resid, scale)
        loss[m] = total / (3 * pixels)
        _last_layer_backward(a, cosines[hls], resid, wt, dwt, g, bias)
        for j in range(3):
            grad_last_b[m, 0, j] = resid[j].sum()
            for h in range(width):
                grad_last_w[m, h, j] = dwt[j, h]
        # hidden layers, last to first: dW = w0 a^T g, db = w0 sum g, da = g (w0 W)^T
        for layer in range(hls, 0, -1):
            if layer < hls:  # the last sine layer's was done with the last layer's backward
                _cosine_grad(g, cosines[layer], bias)
            _matmul(sines[layer - 1], g, grad_hidden_w[layer - 1, m], True, False, w0f)
            for h in range(width):
                grad_hidden_b[layer - 1, m, 0, h] = w0f * bias[h]
            free = back[1] if layer % 2 == hls % 2 else back[0]
            _matmul(g, hidden_w[layer - 1, m], free, False, True, w0f)
            g = free
        # first layer: dW = w0 x^T g (2 inputs, written out), db = w0 sum g
        _cosine_grad(g, cosines[0], bias)
        rows[:2] = 0.0
        for p in range(pixels):
            for h in range(width):
                rows[0, h] += x0[p] * g[p, h]
                rows[1, h] += x1[p] * g[p, h]
        for h in range(width):
            grad_first_w[m, 0, h] = w0f * rows[0, h]
            grad_first_w[m, 1, h] = w0f * rows[1, h]
            grad_first_b[m, 0, h] = w0f * bias[h]


@njit(**_JIT)
def adam_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step):
    """torch.optim.Adam's single-tensor step, in place, on [members, n] arrays with a learning rate per member."""
    members, n = param.shape
    one_minus_b1, b2, one_minus_b2 = np.float32(1 - beta1), np.float32(beta2), np.float32(1 - beta2)
    bias2_sqrt = np.float32(np.sqrt(1 - beta2**step))
    epsf = np.float32(eps)
    for m in range(members):
        step_size = np.float32(lr[m] / (1 - beta1**step))
        for i in range(n):
            g = grad[m, i]
            avg = exp_avg[m, i] + one_minus_b1 * (g - exp_avg[m, i])
            sq = exp_avg_sq[m, i] * b2 + one_minus_b2 * g * g
            exp_avg[m, i] = avg
            exp_avg_sq[m, i] = sq
            param[m, i] -= step_size * (avg / (np.sqrt(sq) / bias2_sqrt + epsf))
