"""The engine's batched matrix products at the chosen precision (`train.matmul_precision`).

- `highest`: fp32 products (the study's default and reference).
- `3xtf32`: each operand split into a TF32 head and its remainder, x = hi + lo, and the product taken as
  hi·hi + hi·lo + lo·hi on TF32 tensor cores with fp32 accumulation. The dropped lo·lo term is 2^-22 of the
  product, so the result is as close to float64 as an fp32 product is (measured in docs/performance.md).
  On a CPU the three products are fp32 ones: the same sum, without the speed.
- `high`: TF32 products (10-bit mantissas). Faster, but it changes the study's conclusions: fits end 40 dB
  lower at 5x512 and the raw AUC's verdicts flip (docs/performance.md). Not for the study's numbers.

Every product of the engine is `out = alpha * a @ b`, so w0 rides in cuBLAS's epilogue instead of a pass.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def tf32(enabled: bool):
    """TF32 tensor-core products on CUDA inside the block (the flag is read when a product is launched,
    and when it is captured into a CUDA graph)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) with hi = x rounded to nearest at 10 mantissa bits (exact in TF32) and lo = x - hi (exact).

    The fused kernel does this in one pass where it can run; torch's integer ops do it elsewhere.
    """
    from prefit import fused

    x = x.contiguous()
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    if fused.available(x.device):
        fused.split_tf32_(x, hi, lo)
    else:
        bits = (x.view(torch.int32) + 0x1000).bitwise_and_(-0x2000)
        hi.copy_(bits.view(torch.float32))
        torch.sub(x, hi, out=lo)
    return hi, lo


def product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float, precision: str) -> torch.Tensor:
    """out <- alpha * (a @ b) for batched a [M, n, k], b [M, k, m], at `precision` (see the module's doc)."""
    if precision == "3xtf32":
        a_hi, a_lo = split_tf32(a)
        b_hi, b_lo = split_tf32(b)
        with tf32(True):
            out.baddbmm_(a_lo, b_hi, beta=0.0, alpha=alpha)  # the small terms first
            out.baddbmm_(a_hi, b_lo, alpha=alpha)
            out.baddbmm_(a_hi, b_hi, alpha=alpha)
        return out
    with tf32(precision == "high"):
        return out.baddbmm_(a, b, beta=0.0, alpha=alpha)
