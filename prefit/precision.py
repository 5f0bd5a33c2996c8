"""The engine's batched matrix products at the chosen precision (`train.matmul_precision`), all `out = alpha * a @ b`
so that w0 rides in cuBLAS's epilogue:

- `highest`: fp32 products (the study's default and reference).
- `3xtf32`: operands split into a TF32 head and remainder, x = hi + lo, the product hi·hi + hi·lo + lo·hi on TF32
  tensor cores: as close to float64 as an fp32 product. On a CPU the three products are fp32 ones.
- `high`: TF32 products: faster, but they change the study's conclusions (docs/performance.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch


@contextmanager
def tf32(enabled: bool):
    """TF32 tensor-core products on CUDA inside the block (read when a product is launched or captured)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class SplitWork:
    """Reusable (hi, lo) buffers for the operands of `3xtf32` products, one pair per side ("a" or "b") and shape,
    made on first use (the eager epoch before a capture: a captured epoch allocates nothing). Products run in
    stream order, so the next product's split cannot overwrite operands a previous one still reads."""

    def __init__(self) -> None:
        self.pairs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def pair(self, side: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (side, tuple(like.shape), like.dtype, like.device)
        if key not in self.pairs:  # contiguous, whatever `like`'s strides: the split writes flat memory
            self.pairs[key] = tuple(torch.empty(like.shape, dtype=like.dtype, device=like.device) for _ in range(2))
        return self.pairs[key]


class Split(NamedTuple):
    """An operand split (hi + lo) by the pass that made it, for the `3xtf32` products that read it."""

    hi: torch.Tensor
    lo: torch.Tensor

    @property
    def mT(self) -> Split:  # noqa: N802 - torch's name for the batched transpose
        return Split(self.hi.mT, self.lo.mT)


Operand = torch.Tensor | Split


def split_tf32(x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None) -> Split:
    """Split(hi, lo): hi = x rounded to TF32, lo = x - hi (both exact), in x's memory order into `out`."""
    from prefit import fused

    if _memory_order(x) is not x:
        return split_tf32(x.mT, out).mT
    x = x.contiguous()
    hi, lo = out if out is not None else (torch.empty_like(x), torch.empty_like(x))
    if not (hi.is_contiguous() and lo.is_contiguous()):
        raise ValueError("split_tf32: the out buffers must be contiguous")
    if fused.available(x.device):
        fused.split_tf32_(x, hi, lo)
    else:
        bits = (x.view(torch.int32) + 0x1000).bitwise_and_(-0x2000)
        hi.copy_(bits.view(torch.float32))
        torch.sub(x, hi, out=lo)
    return Split(hi, lo)


def _memory_order(x: torch.Tensor) -> torch.Tensor:
    """The contiguous tensor that `x` is the transpose of, else `x`: what a split reads and writes."""
    return x.mT if not x.is_contiguous() and x.mT.is_contiguous() else x


def product(
    out: torch.Tensor, a: Operand, b: Operand, alpha: float, precision: str, work: SplitWork | None = None
) -> torch.Tensor:
    """out <- alpha * (a @ b), a [M, n, k], b [M, k, m], at `precision` (`work`: the `3xtf32` buffers kept)."""
    if precision == "3xtf32":
        a_hi, a_lo = a if isinstance(a, Split) else split_tf32(a, work.pair("a", _memory_order(a)) if work else None)
        b_hi, b_lo = b if isinstance(b, Split) else split_tf32(b, work.pair("b", _memory_order(b)) if work else None)
        with tf32(True):
            out.baddbmm_(a_lo, b_hi, beta=0.0, alpha=alpha)  # the small terms first
            out.baddbmm_(a_hi, b_lo, alpha=alpha)
            out.baddbmm_(a_hi, b_hi, alpha=alpha)
        return out
    assert not isinstance(a, Split) and not isinstance(b, Split), "split operands are for 3xtf32 products"
    with tf32(precision == "high"):
        return out.baddbmm_(a, b, beta=0.0, alpha=alpha)
