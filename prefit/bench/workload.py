"""What the benchmark fits: start weights and smooth targets drawn from a fixed seed, the original study's
one-at-a-time fit (`fit_original`, the baseline), and `runner`, one engine wrapped as `run(members, epochs)`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from prefit.data import SIDE
from prefit.engine import fit_batched, fit_sequential
from prefit.engine.options import FitOptions
from prefit.model import SIREN, FieldNet, Params, member_params, stack_params, triple_generator

SEED = 0


def smooth_targets(n: int, seed: int = SEED, side: int = SIDE) -> torch.Tensor:
    """n smooth random colour images (bicubic 4x4 patches) as [-1, 1] signals [n, side^2, 3]: timing ignores content."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    images = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=True).clamp(-1, 1)
    return images.permute(0, 2, 3, 1).reshape(n, side * side, 3).contiguous()


def make_members(hls: int, hfs: int, n: int, seed: int = SEED) -> Params:
    """Start weights of n members, stacked, drawn as the study draws them (one generator per member)."""
    return stack_params([SIREN.init_params(hls, hfs, triple_generator(seed, i)) for i in range(n)])


def fit_original(
    params: Params, target: torch.Tensor, coords: torch.Tensor, train: FitOptions, device: torch.device
) -> list[float]:
    """One fit as the original study wrote it, its PSNR on the host each epoch: the baseline; the PSNRs."""
    model = FieldNet.for_params(params).to(device)
    coords, target_dev = coords.to(device), target.to(device)
    truth = (target.cpu().numpy() + 1.0) / 2.0
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, betas=tuple(train.betas), eps=train.eps)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=train.plateau_factor, patience=train.plateau_patience
    )
    psnrs: list[float] = []
    for _ in range(train.epochs):
        pred = model(coords)
        loss = ((pred - target_dev) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(loss.item())  # the scheduler reads the loss on the host, as float(loss) would
        image = (pred.detach().cpu().numpy() + 1.0) / 2.0
        mse = np.mean((image - truth) ** 2)
        psnrs.append(float(10.0 * np.log10(1.0 / mse)))
    return psnrs


Run = Callable[[int, int], None]  # run(members, epochs): fit the first `members` members for `epochs` epochs


def runner(
    engine: str, params: Params, targets: torch.Tensor, coords: torch.Tensor, device: torch.device, chunk: int
) -> Run:
    """A call `run(members, epochs)` that fits the first `members` members with `engine` for `epochs` epochs."""

    def run(members: int, epochs: int) -> None:
        train = FitOptions(epochs=epochs, progress=False)
        sub = [(w[:members], b[:members]) for w, b in params]
        if engine == "batched":
            fit_batched(sub, targets[:members], coords, train, SIREN, device, max_members=chunk)
        elif engine == "sequential":
            fit_sequential(sub, targets[:members], coords, train, SIREN, device)
        else:
            for i in range(members):
                fit_original(member_params(sub, i), targets[i], coords, train, device)

    return run
