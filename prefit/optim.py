"""Adam and ReduceLROnPlateau for a batch of independent members, each with its own learning rate.

Torch's hold one learning rate per parameter group and read the loss on the host; these follow torch's arithmetic
step for step (the tests compare them) with every state on the device, and a member never touches another's slice.
"""

from __future__ import annotations

import torch


class BatchedAdam:
    """Adam (Kingma & Ba 2015) over stacked tensors [M, ...], a learning rate per member, torch's arithmetic. On a CPU
    one compiled pass a tensor (`prefit.kernels.adam_step`) instead of torch's eight; on CUDA torch's multi-tensor ops
    with the learning rates as a tensor, never waiting for the device. With `device_step` the step count and bias
    corrections live on the device too, so that a step can be captured in a CUDA graph (the same numbers)."""

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: torch.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        device_step: bool = False,
    ):
        self.params = params
        self.lr = lr  # [M] float64, shared with the scheduler
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.device_step = device_step
        if device_step:  # float64, as the host's Python floats: the steps taken and (beta1, beta2)
            self.steps = torch.zeros((), dtype=torch.float64, device=lr.device)
            self.betas = torch.tensor(betas, dtype=torch.float64, device=lr.device)
        cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous() for p in params)
        self.compiled = cpu and not device_step
        if self.compiled:
            from prefit.kernels import adam_step  # numba loads with the first CPU optimiser

            self.kernel = adam_step
            self.arrays = [
                tuple(x.view(x.shape[0], -1).numpy() for x in group)
                for group in zip(params, self.exp_avg, self.exp_avg_sq)
            ]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        if self.compiled:
            self.step_count += 1
            self._compiled_step(grads)
        else:
            self._foreach_step(grads, *self._bias_corrections())

    def _bias_corrections(self) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """This step's 1 - beta1^t and sqrt(1 - beta2^t), in double as torch's Adam has them: from the host's step
        count, or (`device_step`) from the device's, the second as the float32 that the host's scalar becomes."""
        if not self.device_step:
            self.step_count += 1
            t = self.step_count
            return 1 - self.beta1**t, (1 - self.beta2**t) ** 0.5
        self.steps.add_(1)
        bias = 1 - torch.pow(self.betas, self.steps)
        return bias[0], bias[1].sqrt().to(self.params[0].dtype)

    def _compiled_step(self, grads: list[torch.Tensor]) -> None:
        lr = self.lr.numpy()
        for (p, m, v), g in zip(self.arrays, grads, strict=True):
            g = g.view(g.shape[0], -1).numpy()
            self.kernel(p, g, m, v, lr, self.beta1, self.beta2, self.eps, self.step_count)

    def _foreach_step(
        self, grads: list[torch.Tensor], bias1: float | torch.Tensor, bias2_sqrt: float | torch.Tensor
    ) -> None:
        torch._foreach_lerp_(self.exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(self.exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, value=1 - self.beta2)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(self.exp_avg, denom)
        step_size = (self.lr / bias1).to(self.params[0].dtype)
        for p, u in zip(self.params, update, strict=True):
            p.addcmul_(u, step_size.view((-1,) + (1,) * (p.dim() - 1)), value=-1)


class BatchedPlateau:
    """ReduceLROnPlateau (mode min, relative threshold, no cooldown) with one state per member, in float64 as torch's
    Python floats: after more than `patience` epochs without a loss below best * (1 - threshold), lr *= factor
    (unless that changes it by less than `eps`)."""

    def __init__(
        self,
        lr: torch.Tensor,
        factor: float = 0.5,
        patience: int = 500,
        threshold: float = 1e-4,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ):
        self.lr = lr
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.min_lr, self.eps = min_lr, eps
        self.best = torch.full_like(lr, float("inf"))
        self.bad_epochs = torch.zeros_like(lr, dtype=torch.int64)

    @torch.no_grad()
    def step(self, loss: torch.Tensor) -> None:
        loss = loss.to(self.best.dtype)  # the state is updated in place: a captured step replays on the same tensors
        better = loss < self.best * (1.0 - self.threshold)
        self.best.copy_(torch.where(better, loss, self.best))
        self.bad_epochs.copy_(torch.where(better, 0, self.bad_epochs + 1))
        reduce = self.bad_epochs > self.patience
        new_lr = torch.clamp(self.lr * self.factor, min=self.min_lr)
        self.lr.copy_(torch.where(reduce & (self.lr - new_lr > self.eps), new_lr, self.lr))
        self.bad_epochs.masked_fill_(reduce, 0)
