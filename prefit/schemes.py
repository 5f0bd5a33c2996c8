"""Schemes and protocols as plans: which images each member of a cell fits, in which order.

A *member* is one SIREN of a cell, starting from its triple's random initialisation and running a list of *fits*,
each for `train.epochs` epochs with a fresh optimiser. The schemes differ only in that list:

    random        [A]
    same_class    [B, A]        B: another image of A's class
    other_class   [C, A]        C: an image of another class
    class_mean    [mean, A]     mean: the mean image of A's class over a pool outside the triples
    multi_same    [B1..Bk, A]   k images of A's class, none in any triple
    meta          [A]           from a Reptile-learned initialisation (prefit.meta) instead of the random one
    shared_encoder [B1+..+Bk, A] one network with a head per image fits multi_same's k images jointly; A's fit starts
                                from its shared layers and the triple's random head (prefit.shared)

`protocol=independent`: each scheme its own member, from the triple's shared initialisation. `protocol=chained`
(the original's aliasing defect): one member per triple fitting [A, B, A, C, A], its fits on A reported as random,
same_class and other_class. `run_plan` fits stage k as one batch of every member with a k-th fit (the joint pre-fits
as a batch of their own).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from prefit.config import Config
from prefit.data import DataError, ImageSet, Triple, coordinate_grid, draw_pool, to_signal, to_uint8
from prefit.engine import fit, flops_per_member_epoch, psnr_from_loss, snapshot_epochs_resolved
from prefit.meta import learned_init
from prefit.model import Params, member_params, stack_params, triple_generator
from prefit.shared import class_images, fit_groups, fresh_head, merged, stage_groups

if TYPE_CHECKING:  # types only: the checkpoint is made by the app
    from prefit.checkpoint import CellCheckpoint


@dataclass(frozen=True)
class FitSpec:
    """One fit of a member: the image it fits and how its rows are reported."""

    scheme: str  # the scheme its rows are reported under
    phase: str  # "prefit" or "fit" (the fit on A)
    image: int  # row in Plan.signals (-1 for a joint pre-fit)
    target_index: int  # index of the image in the split (-1 for a synthesised image or a joint pre-fit)
    target_label: int
    prefit_index: int | None = None  # for a fit on A: the image fit just before
    prefit_label: int | None = None
    joint: tuple[int, ...] = ()  # a joint pre-fit's (shared_encoder's) images: rows in Plan.signals, one per head


@dataclass
class Member:
    triple: int
    fits: list[FitSpec]
    start: str = "triple"  # "triple": the triple's random initialisation; "meta": the learned one


@dataclass
class Plan:
    """Members and the images they fit (as [-1, 1] signals, one row per distinct image)."""

    members: list[Member]
    signals: torch.Tensor  # float32 [K, pixels, 3]
    images: np.ndarray  # uint8 [K, side, side, 3], the same images for pictures
    triples: list[Triple]
    rows: dict = field(default_factory=dict)  # split index (or a synthetic image's key) -> row in signals
    meta_pool: np.ndarray | None = None  # split indices the meta-initialisation learns on
    meta_signals: torch.Tensor | None = None  # their signals
    data_source: str = ""

    @property
    def side(self) -> int:
        """Pixels a side of every image in the plan."""
        return int(self.images.shape[1])


class _Bank:
    """Collects the distinct images a plan needs (split images and synthetic ones) and gives each a row."""

    def __init__(self, data: ImageSet):
        self.data = data
        self.rows: dict = {}
        self.pixels: list[np.ndarray] = []  # float32 [side, side, 3] in 0..255

    def row(self, key, pixels: np.ndarray | None = None) -> int:
        if key not in self.rows:
            self.rows[key] = len(self.pixels)
            self.pixels.append(np.asarray(self.data.images[key] if pixels is None else pixels, dtype=np.float32))
        return self.rows[key]

    def fit(self, scheme: str, phase: str, index: int, before: int | None = None) -> FitSpec:
        label = int(self.data.labels[index])
        prefit_label = None if before is None else int(self.data.labels[before])
        return FitSpec(scheme, phase, self.row(index), index, label, before, prefit_label)

    def class_mean(self, label: int, pool: np.ndarray) -> FitSpec:
        """A pre-fit on the mean image of class `label` over the pool's images of that class."""
        members = pool[self.data.labels[pool] == label]
        if members.size == 0:
            raise DataError(f"the class_mean pool has no image of class {label}; raise scheme.class_mean.pool_size")
        mean = self.data.images[members].astype(np.float64).mean(axis=0)
        return FitSpec("class_mean", "prefit", self.row(("class_mean", label), mean), -1, label)


@dataclass
class _Extras:
    """What the extra schemes draw from outside the triples."""

    class_mean_pool: np.ndarray | None = None
    multi_same: dict[int, list[int]] = field(default_factory=dict)  # triple -> its k same-class images
    shared_encoder: dict[int, list[int]] = field(default_factory=dict)  # the same, for the joint pre-fit


def _independent(bank: _Bank, t: Triple, schemes: Sequence[str], extras: _Extras) -> list[Member]:
    prefit_image = {"same_class": t.same, "other_class": t.other}
    label = int(bank.data.labels[t.target])
    members = []
    for scheme in schemes:
        if scheme in ("random", "meta"):
            start = "meta" if scheme == "meta" else "triple"
            members.append(Member(t.triple, [bank.fit(scheme, "fit", t.target)], start))
        elif scheme in prefit_image:
            b = prefit_image[scheme]
            members.append(
                Member(t.triple, [bank.fit(scheme, "prefit", b), bank.fit(scheme, "fit", t.target, before=b)])
            )
        elif scheme == "class_mean":
            fit_a = replace(bank.fit(scheme, "fit", t.target), prefit_label=label)
            members.append(Member(t.triple, [bank.class_mean(label, extras.class_mean_pool), fit_a]))
        elif scheme == "multi_same":
            images = extras.multi_same[t.triple]
            fits = [bank.fit(scheme, "prefit", b) for b in images]
            members.append(Member(t.triple, [*fits, bank.fit(scheme, "fit", t.target, before=images[-1])]))
        elif scheme == "shared_encoder":
            rows = tuple(bank.row(b) for b in extras.shared_encoder[t.triple])
            fit_a = replace(bank.fit(scheme, "fit", t.target), prefit_label=label)
            members.append(Member(t.triple, [FitSpec(scheme, "prefit", -1, -1, label, joint=rows), fit_a]))
        else:
            raise ValueError(f"scheme {scheme!r} has no plan")
    return members


def _chained(bank: _Bank, t: Triple, schemes: Sequence[str], extras: _Extras) -> list[Member]:
    """The original's chain A -> B -> A -> C -> A, cut after the last selected scheme."""
    chain = [
        bank.fit("random", "fit", t.target),
        bank.fit("same_class", "prefit", t.same),
        bank.fit("same_class", "fit", t.target, before=t.same),
        bank.fit("other_class", "prefit", t.other),
        bank.fit("other_class", "fit", t.target, before=t.other),
    ]
    last = max({"random": 0, "same_class": 2, "other_class": 4}[s] for s in schemes)
    return [Member(t.triple, chain[: last + 1])]


def build_plan(cfg: Config, data: ImageSet, triples: list[Triple]) -> Plan:
    bank = _Bank(data)
    for t in triples:  # every triple's three images, for the pictures, whatever the schemes
        for index in (t.target, t.same, t.other):
            bank.row(index)
    in_triples = {i for t in triples for i in (t.target, t.same, t.other)}
    extras, meta_pool = _Extras(), None
    if cfg.scheme.class_mean is not None:
        extras.class_mean_pool = _pool(data, cfg.scheme.class_mean.pool_size, cfg.seed, in_triples, "class_mean")
    if cfg.scheme.multi_same is not None:
        extras.multi_same = class_images(data, triples, cfg.scheme.multi_same.k, cfg.seed, in_triples)
    if (shared := cfg.scheme.shared_encoder) is not None:
        extras.shared_encoder = class_images(data, triples, shared.k, cfg.seed, in_triples, "shared_encoder")
    if cfg.scheme.meta is not None:
        meta_pool = _pool(data, cfg.scheme.meta.pool_size, cfg.seed, in_triples, "meta")
    schemes = cfg.scheme.selected()
    build = _chained if cfg.protocol.name == "chained" else _independent
    members = [m for t in triples for m in build(bank, t, schemes, extras)]
    pixels = np.stack(bank.pixels)
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    meta_signals = None if meta_pool is None else to_signal(data.images[meta_pool])
    return Plan(members, to_signal(pixels), images, triples, dict(bank.rows), meta_pool, meta_signals, data.source)


def _pool(data: ImageSet, size: int, seed: int, in_triples: set[int], scheme: str) -> np.ndarray:
    """A scheme's pool of images outside the triples; too few images is one line naming the key to lower."""
    try:
        return draw_pool(data.labels, size, seed, in_triples)
    except DataError as error:
        raise DataError(f"{error}: lower scheme.{scheme}.pool_size (or dataset.n_triples)") from None


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
