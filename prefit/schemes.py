"""Schemes and protocols as plans: which images each member of a cell fits, in which order.

A *member* is one SIREN of a cell. It starts from its triple's random initialisation and runs a list of
*fits*, each for `train.epochs` epochs with a fresh optimiser. The schemes differ only in that list:

    random        [A]
    same_class    [B, A]        B: another image of A's class
    other_class   [C, A]        C: an image of another class

Under `protocol=independent` each scheme is its own member, all three starting from the same initialisation.
Under `protocol=chained` (the original code's aliasing defect) each triple is one member whose fits are
[A, B, A, C, A]; its three fits on A are reported as random, same_class and other_class.

`run_plan` executes a plan stage by stage: stage k fits, as one batch, every member that has a k-th fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from prefit.config import Config
from prefit.data import ImageSet, Triple, coordinate_grid, to_signal, to_uint8
from prefit.engine import fit, psnr_from_loss, snapshot_epochs_resolved
from prefit.model import Params, init_params, member_params, stack_params, triple_generator


@dataclass(frozen=True)
class FitSpec:
    """One fit of a member: the image it fits and how its rows are reported."""

    scheme: str  # the scheme its rows are reported under
    phase: str  # "prefit" or "fit" (the fit on A)
    image: int  # row in Plan.signals
    target_index: int  # index of the image in the split (-1 for a synthesised image)
    target_label: int
    prefit_index: int | None = None  # for a fit on A: the image fit just before
    prefit_label: int | None = None


@dataclass
class Member:
    triple: int
    fits: list[FitSpec]


@dataclass
class Plan:
    """Members and the images they fit (as [-1, 1] signals, one row per distinct image)."""

    members: list[Member]
    signals: torch.Tensor  # float32 [K, pixels, 3]
    images: np.ndarray  # uint8 [K, 32, 32, 3], the same images for pictures
    triples: list[Triple]
    rows: dict[int, int] = field(default_factory=dict)  # split index -> row in signals


class _Bank:
    """Collects the distinct images a plan needs and gives each a row."""

    def __init__(self, data: ImageSet):
        self.data = data
        self.rows: dict[int, int] = {}

    def row(self, index: int) -> int:
        return self.rows.setdefault(index, len(self.rows))

    def fit(self, scheme: str, phase: str, index: int, before: int | None = None) -> FitSpec:
        label = int(self.data.labels[index])
        prefit_label = None if before is None else int(self.data.labels[before])
        return FitSpec(scheme, phase, self.row(index), index, label, before, prefit_label)


def _independent(bank: _Bank, t: Triple, schemes: Sequence[str]) -> list[Member]:
    prefit_image = {"same_class": t.same, "other_class": t.other}
    members = []
    for scheme in schemes:
        if scheme == "random":
            members.append(Member(t.triple, [bank.fit(scheme, "fit", t.target)]))
        elif scheme in prefit_image:
            b = prefit_image[scheme]
            members.append(
                Member(t.triple, [bank.fit(scheme, "prefit", b), bank.fit(scheme, "fit", t.target, before=b)])
            )
        else:
            raise ValueError(f"scheme {scheme!r} has no plan")
    return members


def _chained(bank: _Bank, t: Triple, schemes: Sequence[str]) -> list[Member]:
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
    schemes = cfg.scheme.selected()
    build = _chained if cfg.protocol.name == "chained" else _independent
    members = [m for t in triples for m in build(bank, t, schemes)]
    order = np.array(sorted(bank.rows, key=bank.rows.get), dtype=np.int64)
    images = data.images[order]
    return Plan(members, to_signal(images), images, triples, dict(bank.rows))


@dataclass
class CellResult:
    rows: pd.DataFrame  # psnr.parquet
    recon: dict[str, np.ndarray]  # recon.npz
    members: int
    fits: int


def run_plan(cfg: Config, plan: Plan, device: torch.device, max_members: int) -> CellResult:
    """Run every stage of the plan; collect per-epoch rows and the snapshots of the fits on A."""
    hls, hfs, w0 = cfg.model.hls, cfg.model.hfs, cfg.model.w0
    coords = coordinate_grid()
    inits: dict[int, Params] = {
        t.triple: init_params(hls, hfs, w0, triple_generator(cfg.seed, t.triple)) for t in plan.triples
    }
    current: list[Params] = [inits[m.triple] for m in plan.members]
    frames, recon_parts = [], []
    stages = max(len(m.fits) for m in plan.members)
    for stage in range(stages):
        active = [i for i, m in enumerate(plan.members) if len(m.fits) > stage]
        specs = [plan.members[i].fits[stage] for i in active]
        targets = plan.signals[[s.image for s in specs]]
        desc = f"{hls}x{hfs} stage {stage + 1}/{stages}"
        result = fit(
            cfg.train.engine,
            stack_params([current[i] for i in active]),
            targets,
            coords,
            cfg.train,
            w0,
            device,
            max_members=max_members,
            desc=desc,
        )
        for j, i in enumerate(active):
            current[i] = member_params(result.params, j)
        triples = [plan.members[i].triple for i in active]
        frames.append(_rows(cfg, stage, specs, triples, result.loss, result.lr))
        is_fit = [j for j, s in enumerate(specs) if s.phase == "fit"]
        if is_fit:
            snap_loss = result.loss[is_fit][:, snapshot_epochs_resolved(cfg.train.epochs, cfg.train.snapshot_epochs)]
            recon_parts.append(
                ([specs[j].scheme for j in is_fit], [triples[j] for j in is_fit], result.snapshots[is_fit], snap_loss)
            )
    rows = pd.concat(frames, ignore_index=True)
    return CellResult(rows, _recon(cfg, plan, recon_parts), len(plan.members), len(rows) // cfg.train.epochs)


def _rows(
    cfg: Config, stage: int, specs: list[FitSpec], triples: list[int], loss: torch.Tensor, lr: torch.Tensor
) -> pd.DataFrame:
    """One row per (member, epoch) of a stage, in member-major order."""
    members, epochs = loss.shape

    def per_member(values, dtype=None) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=dtype), epochs)

    def nullable(values) -> pd.array:
        return pd.array(
            np.repeat(np.array([pd.NA if v is None else v for v in values], dtype=object), epochs), dtype="Int64"
        )

    return pd.DataFrame(
        {
            "hls": np.int64(cfg.model.hls),
            "hfs": np.int64(cfg.model.hfs),
            "protocol": cfg.protocol.name,
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
            "engine": cfg.train.engine,
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
        "recon": to_uint8(torch.cat([p[2] for p in parts])),
        "psnr": psnr_from_loss(torch.cat([p[3] for p in parts])).double().numpy(),
        "triple_images": plan.images[np.vectorize(rows.__getitem__, otypes=[np.int64])(triple_indices)],
        "triple_indices": triple_indices,
    }
