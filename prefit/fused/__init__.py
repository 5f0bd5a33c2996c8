"""Fused elementwise work of the CUDA engine: Triton kernels (`prefit.fused.kernels`) and their launchers, each doing
in one pass what the torch step does in several (bias, sine and cosine; cosine product and bias gradient; the last
layer; records and plateau schedule; Adam over a flat buffer), split for `3xtf32` where asked, and reading nothing
back, so an epoch can be captured as a CUDA graph. Under `TRITON_INTERPRET=1` they run on CPU tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # types only: prefit.precision calls this module
    from prefit.engine.options import FitOptions
    from prefit.precision import Split

try:
    import triton
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None
else:
    from prefit.fused import kernels

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


PRECISE = not INTERPRET  # libdevice is not interpreted; numpy's sin and cos are already precise
ELEMENTWISE_BLOCK = 1024
ADAM_BLOCK = 1024


def sincos_bias_(s: torch.Tensor, c: torch.Tensor, b: torch.Tensor, w0: float, split: Split | None = None) -> None:
    """s <- sin(s + w0 b) (or, with `split`, its halves), c <- cos(s + w0 b), b [M, 1, H]: one pass."""
    n, width = s.numel(), s.shape[2]
    args = (s, c, b, *(split or (s, s)), w0, n, s.shape[1] * width, width)
    # enable_fp_fusion=False: s + w0 b rounded twice, as torch does; a fused multiply-add moves the sine's
    # argument by an ulp, and at a hundred radians an ulp is 8e-6
    kernels.sincos_bias[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
        *args, BLOCK=ELEMENTWISE_BLOCK, PRECISE=PRECISE, SPLIT=split is not None, enable_fp_fusion=False
    )


def cos_grad_(g: torch.Tensor, c: torch.Tensor, gb: torch.Tensor, w0: float, split: Split | None = None) -> None:
    """g <- g * c (or, with `split`, its halves), gb <- w0 * sum over pixels of g; g, c [M, pixels, H]: one pass."""
    members, pixels, width = g.shape
    block_h = min(64, triton.next_power_of_2(width))
    blocks = dict(BLOCK_P=max(16, 4096 // block_h), BLOCK_H=block_h)
    # enable_fp_fusion=False: g * c rounded before it is summed or split, as torch does; a fused multiply-add
    # would take the split's remainder (g * c - hi) from the unrounded product, so hi + lo would not be g
    kernels.cos_grad[(members, triton.cdiv(width, block_h))](
        g, c, gb, *(split or (g, g)), w0, pixels, width, **blocks, SPLIT=split is not None, enable_fp_fusion=False
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
    """The last layer's epilogue per member: the bias added, the scaled residual, loss, bias gradient, and snapshot."""
    members, _, pixels = pred_t.shape
    args = (pred_t, bias, target_t, grad_t, loss, grad_bias, snaps, slots, epoch, scale, pixels, slots.shape[0])
    kernels.head[(members,)](*args, snaps.shape[1], BLOCK_P=min(1024, triton.next_power_of_2(pixels)))


@dataclass
class Schedule:
    """A fit's Adam and plateau state on the device, advanced by `schedule`, and its constants, made once."""

    lr: torch.Tensor  # float64 [M]
    best: torch.Tensor  # float64 [M]
    bad_epochs: torch.Tensor  # int64 [M]
    step_size: torch.Tensor  # float32 [M]: lr / (1 - beta1^t) for this epoch's update
    powers: torch.Tensor  # float64 [3]: beta1^t, beta2^t, sqrt(1 - beta2^t)
    epoch: torch.Tensor  # int64 [1]: epochs done
    consts: torch.Tensor  # float64 [6]: beta1, beta2, and the plateau's factor, threshold, min_lr (0), eps (1e-8)
    patience: int
    adam: tuple[float, float, float, float]  # `adam_constants` of Adam's betas and eps

    @classmethod
    def start(cls, train: FitOptions, members: int, device: torch.device) -> Schedule:
        """Before the first epoch of a fit with `train`'s learning rate, betas, eps and plateau schedule."""
        f64, i64 = dict(dtype=torch.float64, device=device), dict(dtype=torch.int64, device=device)
        consts = (*train.betas, train.plateau_factor, train.plateau_threshold, 0.0, 1e-8)  # torch's min_lr, eps
        return cls(
            lr=torch.full((members,), train.lr, **f64),
            best=torch.full((members,), float("inf"), **f64),
            bad_epochs=torch.zeros(members, **i64),
            step_size=torch.zeros(members, dtype=torch.float32, device=device),
            powers=torch.tensor([1.0, 1.0, 0.0], **f64),
            epoch=torch.zeros(1, **i64),
            consts=torch.tensor(consts, **f64),  # Triton would pass Python floats as float32
            patience=train.plateau_patience,
            adam=adam_constants(train.betas, train.eps),
        )


def adam_constants(betas: tuple[float, float], eps: float) -> tuple[float, float, float, float]:
    """(1 - beta1, beta2, 1 - beta2, eps) as torch's Adam uses them on float32 tensors: each computed in double,
    then rounded to float32. Triton passes a Python float as float32, so a kernel given beta2 would compute
    1 - float32(beta2) (9.99987e-4 for 0.999, not torch's 1e-3)."""
    beta1, beta2 = betas
    values = torch.tensor([1 - beta1, beta2, 1 - beta2, eps], dtype=torch.float32).tolist()
    return values[0], values[1], values[2], values[3]


def schedule(state: Schedule, loss: torch.Tensor, losses: torch.Tensor, lrs: torch.Tensor) -> None:
    """One epoch's records, step size, plateau and epoch += 1 in one single-warp program (programs are not ordered)."""
    s, members = state, loss.shape[0]
    args = (loss, s.lr, s.best, s.bad_epochs, losses, lrs, s.step_size, s.powers, s.epoch, s.consts, members)
    kernels.schedule[(1,)](
        *args, losses.shape[0], s.patience, BLOCK=min(1024, triton.next_power_of_2(members)), num_warps=1
    )


class FlatParams:
    """A chunk's parameters (or gradients, or Adam moments) in one flat buffer, so Adam is one launch. Each tensor
    [M, ...] is a view starting at a multiple of ADAM_BLOCK, so that a program of `adam` touches one tensor;
    `tables` maps each program to its tensor, and each element to its member."""

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
        per_member = [s.numel() // s[0] for s in shapes]
        longs = [torch.tensor(t, dtype=torch.int64, device=device) for t in (starts, offsets, sizes, per_member)]
        self.tables = (longs[0], torch.tensor(owners, dtype=torch.int32, device=device), *longs[1:])

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
    split: Split | None = None,
) -> None:
    """Adam on `layout`'s flat buffers with `state`'s step sizes, in one launch (with `split`, their halves too)."""
    args = (params, grads, exp_avg, exp_avg_sq, *(split or (params, params)), state.step_size, state.powers)
    constants = (*layout.tables, *state.adam)
    kernels.adam[(layout.tables[0].shape[0],)](*args, *constants, BLOCK=ADAM_BLOCK, SPLIT=split is not None)


def split_tf32_(x: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> None:
    """hi <- x rounded to TF32 (10 mantissa bits, nearest), lo <- x - hi (exact): x = hi + lo."""
    n = x.numel()
    kernels.split_tf32[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](x, hi, lo, n, BLOCK=ELEMENTWISE_BLOCK)
