"""The CUDA engine: a fused step, the schedule on the device, epochs captured as CUDA graphs.

A narrow cell's epoch is a few dozen small kernels, so on a GPU launching them is its cost. Here an epoch is per
layer a product and one fused pass (`prefit.fused`) each way, one `schedule` program and one Adam launch; nothing
is read back and buffers are allocated once, so several epochs are captured as one graph and replayed
(`prefit.engine.capture`). `FusedChunk` runs them captured or eager (the same numbers); on a CPU under Triton's
interpreter, for the tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefit import fused
from prefit.engine import state
from prefit.engine.capture import GraphChunk, epochs_per_graph
from prefit.engine.options import FitOptions
from prefit.model import Params, n_weights
from prefit.precision import Operand, Split, SplitWork, product, split_tf32


def fused_bytes_per_member_epoch(hls: int, hfs: int, pixels: int = 1024, precision: str = "highest") -> int:
    """Bytes one member's epoch moves outside the matrix products: with their flops, what bounds a wide cell's epoch."""
    split = precision == "3xtf32"
    words = (6 + 2 * split) * (hls + 1) * pixels * hfs + 12 * pixels + (7 + 2 * split) * n_weights(hls, hfs)
    if split:
        words += 3 * 2 * (2 + 3) * pixels  # coordinates [pixels, 2] and output gradient [3, pixels], twice each
    return 4 * words


def _pairs(views: list[Tensor]) -> Params:
    return [(views[k], views[k + 1]) for k in range(0, len(views), 2)]


class FusedStep:
    """Forward and hand-written backward of a chunk's stacked SIRENs through the fused kernels. Parameters and gradients
    live in flat buffers (`fused.FlatParams`; `params`, `grads`: (W, b) views), so Adam is one launch; the device's
    `epoch` picks the snapshot slot (`slots[epoch]`, -1: none). At `3xtf32` the pass that makes an operand splits it."""

    def __init__(
        self,
        params: Params,
        coords: Tensor,
        target: Tensor,
        w0: float,
        precision: str = "highest",
        slots: Tensor | None = None,
        n_slots: int = 0,
        epoch: Tensor | None = None,
    ):
        like = params[0][0]
        members, pixels, width, device = target.shape[0], target.shape[1], like.shape[2], like.device
        self.w0, self.precision = w0, precision
        self.split = precision == "3xtf32"
        self.work = SplitWork() if self.split else None  # the small operands' halves, made in the first epoch
        self.scale = 2.0 / (pixels * target.shape[2])
        self.layout = fused.FlatParams([t.shape for pair in params for t in pair], device)
        self.flat, self.grad_flat = self.layout.buffer(like), self.layout.buffer(like)
        for view, t in zip(self.layout.views(self.flat), (t for pair in params for t in pair)):
            view.copy_(t)
        self.params = _pairs(self.layout.views(self.flat))
        self.grads = _pairs(self.layout.views(self.grad_flat))
        self.flat_split: Split | None = None
        self.weights: list[Operand] = [w for w, _ in self.params]
        if self.split:
            self.flat_split = split_tf32(self.flat, (self.layout.buffer(like), self.layout.buffer(like)))
            halves = [self.layout.views(half) for half in self.flat_split]
            self.weights = [Split(hi, lo) for hi, lo in zip(halves[0][::2], halves[1][::2])]
        self.coords = coords.to(like).expand(members, pixels, coords.shape[1]).contiguous()
        self.target_t = target.transpose(1, 2).contiguous()
        sine_layers = len(params) - 1

        def activation() -> Tensor:
            return like.new_empty(members, pixels, width)

        def activations() -> Operand:
            return Split(activation(), activation()) if self.split else activation()

        self.sines = [activations() for _ in range(sine_layers)]
        self.cosines = [activation() for _ in range(sine_layers)]
        self.pre = activation() if self.split else None  # a product's output, read by the sine pass alone
        self.grad_split = Split(activation(), activation()) if self.split else None
        self.back = [activation() for _ in range(2)]
        self.pred_t, self.grad_t = like.new_empty(members, 3, pixels), like.new_empty(members, 3, pixels)
        self.last_grad_t = like.new_empty(members, 3, width)
        self.loss = like.new_empty(members)
        self.slots = slots if slots is not None else torch.full((1,), -1, dtype=torch.int32, device=device)
        self.snaps = like.new_empty(members, max(1, n_slots), pixels, 3)
        self.epoch = epoch if epoch is not None else torch.zeros(1, dtype=torch.int64, device=device)

    def __call__(self) -> tuple[Tensor, Tensor, Params]:
        """Loss [M] and predictions [M, pixels, 3] before the update, and the gradients (workspace views)."""
        params, grads, weights = self.params, self.grads, self.weights
        w0, precision, work = self.w0, self.precision, self.work
        x: Operand = self.coords
        for (_, b), w, s, c in zip(params[:-1], weights, self.sines, self.cosines):
            out = self.pre if self.split else s
            product(out, x, w, w0, precision, work)
            fused.sincos_bias_(out, c, b, w0, split=s if self.split else None)
            x = s
        w, b = weights[-1], params[-1][1]
        product(self.pred_t, w.mT, x.mT, 1.0, precision, work)
        gw, gb = grads[-1]
        fused.head(
            self.pred_t, b, self.target_t, self.grad_t, self.loss, gb, self.snaps, self.slots, self.epoch, self.scale
        )
        gw.copy_(product(self.last_grad_t, self.grad_t, x, 1.0, precision, work).mT)
        grad = product(self.back[0], self.grad_t.mT, w.mT, 1.0, precision, work)
        for layer in range(len(params) - 2, -1, -1):
            gw, gb = grads[layer]
            fused.cos_grad_(grad, self.cosines[layer], gb, w0, split=self.grad_split)
            g = grad if self.grad_split is None else self.grad_split  # read by the next two products
            inputs = self.coords if layer == 0 else self.sines[layer - 1]
            product(gw, inputs.mT, g, w0, precision, work)
            if layer > 0:
                free = self.back[1] if grad.data_ptr() == self.back[0].data_ptr() else self.back[0]
                grad = product(free, g, weights[layer].mT, w0, precision, work)
        return self.loss, self.pred_t.transpose(1, 2), grads


class FusedChunk(GraphChunk):
    """A chunk's whole fit on the device: step, schedule, Adam, and the per-epoch records."""

    def __init__(
        self, params: Params, coords: Tensor, target: Tensor, train: FitOptions, w0: float, slots: dict[int, int]
    ):
        super().__init__(epochs_per_graph(params, target))
        members, device = target.shape[0], target.device
        self.train = train
        table = torch.full((train.epochs,), -1, dtype=torch.int32)
        for epoch, slot in slots.items():
            table[epoch] = slot
        self.state = fused.Schedule.start(train, members, device)
        self.counter = self.state.epoch
        self.step = FusedStep(
            params, coords, target, w0, train.matmul_precision, table.to(device), len(slots), self.state.epoch
        )
        self.exp_avg, self.exp_avg_sq = self.step.layout.buffer(target), self.step.layout.buffer(target)
        self.snaps = self.step.snaps  # [M, max(1, slots), pixels, 3]
        self.n_slots = len(slots)
        self.losses = torch.empty(train.epochs, members, device=device)
        self.lrs = torch.empty(train.epochs, members, dtype=torch.float64, device=device)

    def epoch(self) -> None:
        """One epoch's launches; nothing is read back."""
        step = self.step
        fused.schedule(self.state, step()[0], self.losses, self.lrs)
        m, v = self.exp_avg, self.exp_avg_sq
        fused.adam(step.layout, step.flat, step.grad_flat, m, v, self.state, split=step.flat_split)

    def latest_loss(self) -> Tensor:
        return self.step.loss

    def buffers(self) -> dict[str, Any]:
        """The chunk's own state tensors, named as in a chunk state (`prefit.engine.state`): views of its flat
        buffers and its schedule's tensors."""
        views, schedule = self.step.layout.views, self.state
        return {
            "params": views(self.step.flat),
            "exp_avg": views(self.exp_avg),
            "exp_avg_sq": views(self.exp_avg_sq),
            "lr": schedule.lr,
            "best": schedule.best,
            "bad_epochs": schedule.bad_epochs,
            "snaps": self.snaps[:, : self.n_slots],
            "losses": self.losses,
            "lrs": self.lrs,
        }

    def save_state(self) -> dict[str, Any]:
        """A chunk state of the fit so far (CPU copies), with the schedule's running powers of the betas."""
        return state.capture(self.buffers(), self.position, self.position, self.state.powers)

    def load_state(self, saved: dict[str, Any]) -> None:
        """Go on from a chunk state, in place: a captured graph replays on the same buffers. The powers of the betas
        are the saved ones (a product of t factors, not beta^t), or from the steps where another step saved it; at
        3xtf32 the weights' TF32 halves are made again from the restored weights."""
        state.restore(self.buffers(), saved)
        epoch = int(saved["epoch"])
        if "powers" in saved:
            self.state.powers.copy_(saved["powers"])
        else:
            beta1, beta2 = self.train.betas
            t = int(saved["adam_steps"])
            powers = [beta1**t, beta2**t, (1 - beta2**t) ** 0.5]
            self.state.powers.copy_(torch.tensor(powers, dtype=torch.float64))
        self.state.epoch.fill_(epoch)
        if self.step.flat_split is not None:
            split_tf32(self.step.flat, (self.step.flat_split.hi, self.step.flat_split.lo))
        self.position = epoch
