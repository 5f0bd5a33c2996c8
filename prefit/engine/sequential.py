"""The plain reference engine: one network module, torch Adam and ReduceLROnPlateau per member, in turn."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefit.engine.common import engine, psnr_from_loss
from prefit.model import FieldNet, Params, member_params, stack_params


def _fit(params, targets, inputs, train, field, device, max_members, slots, result, bar, saver, resume) -> list[Params]:
    """The reference: one `FieldNet` module, torch Adam and torch ReduceLROnPlateau per member, one at a time. With a
    `saver`, the members fitted so far are saved between members when a save is due; `resume` starts after them."""
    members = targets.shape[0]
    final: list[Params] = []
    first = 0
    if resume is not None:
        first = int(resume["members_done"])
        result.loss[:first], result.lr[:first] = resume["loss"], resume["lr"]
        result.snapshots[:first] = resume["snapshots"]
        final = [member_params(resume["params"], i) for i in range(first)]
        bar.update(first * train.epochs)
    for i in range(first, members):
        model = FieldNet.for_params(member_params(params, i), field).to(device)
        target = targets[i].to(device)
        opt = torch.optim.Adam(model.parameters(), lr=train.lr, betas=tuple(train.betas), eps=train.eps)
        plateau = dict(factor=train.plateau_factor, patience=train.plateau_patience, threshold=train.plateau_threshold)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **plateau)  # mode min, relative threshold, as ours
        losses = torch.empty(train.epochs, device=device)
        for epoch in range(train.epochs):
            pred = model(inputs)
            loss = F.mse_loss(pred, target)
            losses[epoch] = loss.detach()
            result.lr[i, epoch] = opt.param_groups[0]["lr"]
            slot = slots.get(epoch)
            if slot is not None:
                result.snapshots[i, slot] = pred.detach().cpu()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step(loss.detach())
        bar.update(train.epochs)
        result.loss[i] = losses.cpu()
        final.append([(w.cpu(), b.cpu()) for w, b in model.params()])
        if bar.disable is False:
            bar.set_postfix(member=f"{i + 1}/{members}", psnr=f"{psnr_from_loss(losses[-1]).item():.1f}")
        if saver is not None and i + 1 < members and saver.due():
            done = slice(0, i + 1)
            rows = {key: getattr(result, key)[done].clone() for key in ("loss", "lr", "snapshots")}
            fitted = stack_params(final)
            saver.save({"member_epochs": (i + 1) * train.epochs, "members_done": i + 1, **rows, "params": fitted})
    return [stack_params(final)]


fit_sequential = engine(_fit)
