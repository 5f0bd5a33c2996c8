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
same_class and other_class. `prefit.cell.run_plan` runs a plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from prefit.config import Config
from prefit.data import DataError, ImageSet, Triple, draw_pool, to_signal
from prefit.shared import class_images


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
