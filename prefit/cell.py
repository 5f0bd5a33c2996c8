"""Running a cell's plan (`prefit.schemes`): stage k fits, as one batch, every member with a k-th fit (the joint
pre-fits as a batch of their own), carries each member's final weights into its next fit, and collects the rows of
psnr.parquet, the snapshots of recon.npz and the rates of run.json. A cell can be checkpointed and resumed mid-stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from prefit.config import Config
from prefit.data import coordinate_grid, to_uint8
from prefit.engine import fit, flops_per_member_epoch, psnr_from_loss, snapshot_epochs_resolved
from prefit.meta import learned_init
from prefit.model import Params, member_params, stack_params, triple_generator
from prefit.schemes import FitSpec, Plan
from prefit.shared import fit_groups, fresh_head, merged, stage_groups

if TYPE_CHECKING:  # types only: the checkpoint is made by the app
    from prefit.checkpoint import CellCheckpoint


@dataclass
class CellResult:
    rows: pd.DataFrame  # psnr.parquet
    recon: dict[str, np.ndarray]  # recon.npz
    members: int
    fits: int
    info: dict = field(default_factory=dict)  # e.g. the meta-initialisation's cache hit or miss


@dataclass
class _Progress:
    """A cell's progress, what a checkpoint holds besides the engine's state in the stage under way: the records of the
    stages done, each member's parameters at the start of the next stage, and what run.json records so far."""

    done: list[dict]  # per stage done: loss, lr, snapshots (of its fits on A), timing
    current: list[Params]
    info: dict

    def state(self, cfg: Config, plan: Plan, stage: int, fit_state: dict | None = None, stage_s: float = 0.0) -> dict:
        """The cell's state in `stage` (`prefit.checkpoint`), with `position`: where it is."""
        members = sum(len(m.fits) > stage for m in plan.members)
        position = {
            "stage": stage,
            "stages": max(len(m.fits) for m in plan.members),
            "member_epochs": int(fit_state["member_epochs"]) if fit_state is not None else 0,
            "of": members * cfg.train.epochs,
        }
        cell = {"done": self.done, "current": stack_params(self.current), "info": self.info}
        return {"position": position, **cell, "fit": fit_state, "stage_s": stage_s}


def run_plan(
    cfg: Config, plan: Plan, device: torch.device, max_members: int, checkpoint: CellCheckpoint | None = None
) -> CellResult:
    """Run every stage of the plan; collect per-epoch rows and the snapshots of the fits on A. With `checkpoint`
    (`prefit.checkpoint`), the cell's progress is saved whenever the checkpoint says a save is due, and a saved one is
    resumed: the stages done, the parameters carried into the next, and the engine's state in the stage under way."""
    stages = max(len(m.fits) for m in plan.members)
    saved = checkpoint.resume(plan_key(cfg, plan)) if checkpoint is not None else None
    if saved is None:
        info, current = _starts(cfg, plan, device, max_members)
        progress = _Progress([], current, info)
    else:
        current = [member_params(saved["current"], i) for i in range(len(plan.members))]
        progress = _Progress(saved["done"], current, {**saved["info"], "resumed": saved["position"]})
    frames, recon_parts = [], []
    snapshots = snapshot_epochs_resolved(cfg.train.epochs, cfg.train.snapshot_epochs)
    for stage in range(stages):
        active = [i for i, m in enumerate(plan.members) if len(m.fits) > stage]
        specs = [plan.members[i].fits[stage] for i in active]
        triples = [plan.members[i].triple for i in active]
        is_fit = [j for j, s in enumerate(specs) if s.phase == "fit"]
        if stage == len(progress.done):
            resume = saved if saved is not None and saved["position"]["stage"] == stage else None
            _fit_stage(cfg, plan, stage, active, progress, device, max_members, checkpoint, resume)
            if checkpoint is not None and stage + 1 < stages and checkpoint.due():
                checkpoint.save(progress.state(cfg, plan, stage + 1))
        record = progress.done[stage]
        frames.append(_rows(cfg, stage, specs, triples, record["loss"], record["lr"]))
        if is_fit:
            fit_on_a = ([specs[j].scheme for j in is_fit], [triples[j] for j in is_fit])
            recon_parts.append((*fit_on_a, record["snapshots"], record["loss"][is_fit][:, snapshots]))
    rows = pd.concat(frames, ignore_index=True)
    fits = len(rows) // cfg.train.epochs
    flops = flops_per_member_epoch(cfg.model.hls, cfg.model.hfs, plan.side**2, cfg.model.field(cfg.seed).inputs)
    info = {**progress.info, **fit_rate([r["timing"] for r in progress.done], cfg.train.epochs, flops)}
    return CellResult(rows, _recon(cfg, plan, recon_parts), len(plan.members), fits, info)


def _starts(cfg: Config, plan: Plan, device: torch.device, max_members: int) -> tuple[dict, list[Params]]:
    """What run.json records of the starts (the meta-initialisation's cache), and each member's initial parameters:
    its triple's, or the learned meta-initialisation."""
    hls, hfs, field = cfg.model.hls, cfg.model.hfs, cfg.model.field(cfg.seed)
    inits: dict[int, Params] = {
        t.triple: field.init_params(hls, hfs, triple_generator(cfg.seed, t.triple)) for t in plan.triples
    }
    info: dict = {}
    meta_init = None
    if any(m.start == "meta" for m in plan.members):
        meta_init, info["meta"] = learned_init(
            cfg, plan.data_source, plan.meta_pool, plan.meta_signals, device, max_members
        )
    return info, [meta_init if m.start == "meta" else inits[m.triple] for m in plan.members]


def _fit_stage(
    cfg: Config,
    plan: Plan,
    stage: int,
    active: list[int],
    progress: _Progress,
    device: torch.device,
    max_members: int,
    checkpoint: CellCheckpoint | None,
    resume: dict | None,
) -> None:
    """Fit stage `stage` of every member in `active` (from `resume`, a saved cell state in this stage, if given);
    append its records to `progress.done` and carry its parameters into `progress.current`: after a joint pre-fit,
    the start of A's fit (its shared layers and the member's own random head, `prefit.shared.fresh_head`)."""
    specs = [plan.members[i].fits[stage] for i in active]
    starts, triples = [progress.current[i] for i in active], [plan.members[i].triple for i in active]
    groups = stage_groups(cfg, plan.signals, specs, starts, triples, max_members)
    desc = f"{cfg.model.hls}x{cfg.model.hfs} stage {stage + 1}/{max(len(m.fits) for m in plan.members)}"
    before = resume["stage_s"] if resume is not None else 0.0  # seconds of this stage before a resume
    clock = time.perf_counter()

    def state(fit_state: dict | None) -> dict:
        return progress.state(cfg, plan, stage, fit_state, before + time.perf_counter() - clock)

    saver = checkpoint.bind(state) if checkpoint is not None else None
    coords = coordinate_grid(plan.side)

    def run(group, saver, resume):
        args = (group.start, group.targets, coords, cfg.train, group.field, device, group.max_members, desc)
        return fit(cfg.train.engine, *args, saver=saver, resume=resume)

    results = fit_groups(groups, run, saver, resume["fit"] if resume is not None else None, cfg.train.epochs)
    timing = {"members": len(active), "fit_s": round(before + time.perf_counter() - clock, 3)}
    if steady := sum(r.steady_member_epochs for r in results):
        timing.update(steady_s=round(sum(r.steady_s for r in results), 4), steady_member_epochs=steady)
    is_fit = [j for j, s in enumerate(specs) if s.phase == "fit"]
    loss, lr, snapshots, finals = merged(groups, results, is_fit)
    progress.done.append({"loss": loss, "lr": lr, "snapshots": snapshots, "timing": timing})
    head_layers = cfg.scheme.shared_encoder.head_layers if cfg.scheme.shared_encoder is not None else 0
    for j, i in enumerate(active):
        progress.current[i] = fresh_head(finals[j], starts[j], head_layers) if specs[j].joint else finals[j]


def plan_key(cfg: Config, plan: Plan) -> dict:
    """What a checkpoint must have been saved for besides the study: the members, their fits, the epochs."""
    fits = [[m.triple, m.start, *[_fit_key(f) for f in m.fits]] for m in plan.members]
    return {
        "members": len(plan.members),
        "stages": max(len(m.fits) for m in plan.members),
        "epochs": cfg.train.epochs,
        "side": plan.side,
        "fits": hashlib.sha256(json.dumps(fits).encode()).hexdigest()[:16],
    }


def _fit_key(f: FitSpec) -> list:
    """A fit in `plan_key`: a joint pre-fit adds its images (other fits' keys are as they were before it existed)."""
    return [f.scheme, f.phase, f.image, f.target_index, *([list(f.joint)] if f.joint else [])]


def fit_rate(stages: list[dict[str, float | int]], epochs: int, flops_each: float) -> dict[str, object]:
    """The engine's own rate, for run.json: per stage the members fitted together, the seconds inside `fit` and, where
    the engine times them, its steady epochs; over the cell the seconds, member-epochs, ms per member-epoch and GFLOP/s
    (`flops_each`: one member-epoch's flops), which `python -m prefit.bench.compare` holds against the benchmark."""
    fit_s = sum(float(t["fit_s"]) for t in stages)
    member_epochs = sum(int(t["members"]) for t in stages) * epochs
    per = fit_s / member_epochs if member_epochs and fit_s > 0 else None
    return {
        "fit_s": round(fit_s, 3),
        "member_epochs": member_epochs,
        "ms_per_member_epoch": None if per is None else round(1e3 * per, 6),
        "gflops": None if per is None else round(flops_each / per / 1e9, 3),
        "stages": stages,
    }


def _rows(
    cfg: Config, stage: int, specs: list[FitSpec], triples: list[int], loss: torch.Tensor, lr: torch.Tensor
) -> pd.DataFrame:
    """One row per (member, epoch) of a stage, in member-major order."""
    members, epochs = loss.shape

    def per_member(values, dtype=None) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=dtype), epochs)

    def nullable(values) -> pd.array:
        return pd.array(per_member([pd.NA if v is None else v for v in values], object), dtype="Int64")

    return pd.DataFrame(
        {
            "hls": np.int64(cfg.model.hls),
            "hfs": np.int64(cfg.model.hfs),
            "protocol": str(cfg.protocol.name),
            "scheme": per_member([s.scheme for s in specs], object),
            "phase": per_member([s.phase for s in specs], object),
            "stage": np.int64(stage),
            "triple": per_member(triples, np.int64),
            "epoch": np.tile(np.arange(epochs, dtype=np.int64), members),
            "psnr": psnr_from_loss(loss).reshape(-1).double().numpy(),
            "loss": loss.reshape(-1).double().numpy(),
            "lr": lr.reshape(-1).numpy(),
            "target_index": per_member([s.target_index for s in specs], np.int64),
            "target_label": per_member([s.target_label for s in specs], np.int64),
            "prefit_index": nullable([s.prefit_index for s in specs]),
            "prefit_label": nullable([s.prefit_label for s in specs]),
            "seed": np.int64(cfg.seed),
            "engine": str(cfg.train.engine),
        }
    )


def _recon(cfg: Config, plan: Plan, parts) -> dict[str, np.ndarray]:
    """recon.npz contents (docs/formats.md)."""
    rows = plan.rows
    triple_indices = np.array([[t.target, t.same, t.other] for t in plan.triples], dtype=np.int64)
    return {
        "hls": np.int64(cfg.model.hls),
        "hfs": np.int64(cfg.model.hfs),
        "epochs": np.array(snapshot_epochs_resolved(cfg.train.epochs, cfg.train.snapshot_epochs), dtype=np.int64),
        "scheme": np.array([s for p in parts for s in p[0]], dtype=str),
        "triple": np.array([t for p in parts for t in p[1]], dtype=np.int64),
        "recon": to_uint8(torch.cat([p[2] for p in parts]), plan.side),
        "psnr": psnr_from_loss(torch.cat([p[3] for p in parts])).double().numpy(),
        "triple_images": plan.images[np.vectorize(rows.__getitem__, otypes=[np.int64])(triple_indices)],
        "triple_indices": triple_indices,
    }
