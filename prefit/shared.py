"""The shared-encoder scheme (STRAINER, Vyas et al., NeurIPS 2024): per triple, ONE network pre-fit jointly on k
images of A's class (outside the triples), sharing every layer but the last `head_layers`, with a head per image;
A's fit then starts from the shared layers and a fresh head.

The fresh head is the triple's own random initialisation's last `head_layers` layers, so that shared_encoder differs
from `random` only in the shared layers: a paired comparison. The joint pre-fit starts from the triple's random
initialisation's shared layers and k heads drawn from the family's initialisation by a generator of its own per
triple (`triple_generator(seed, HEAD_STREAM + triple)`, one network drawn per head, its last layers kept). The joint
network is a `Field` with `heads` (`prefit.model`): each head layer's blocks side by side along the output axis, the
output the heads' images side by side along the channels, so that the engines' loss (the mean over every element of
[pixels, 3k]) is the mean of the k images' MSEs.

A stage holding joint pre-fits fits them as a batch of their own (their parameters are shaped differently) and its
other members as another: `fit_groups` runs the batches in turn, and `merged` puts their records back in member
order. `class_images` draws the k images, the same ones for multi_same and shared_encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from prefit.checkpoint import FitSaver
from prefit.data import DataError, ImageSet, Triple
from prefit.engine import FitResult
from prefit.model import Field, Params, member_params, stack_params, triple_generator

if TYPE_CHECKING:  # types only: schemes imports this module
    from prefit.config import Config
    from prefit.engine.state import Saver
    from prefit.schemes import FitSpec

HEAD_STREAM = 2_000_000  # the heads' generators are (seed, HEAD_STREAM + triple): no triple's, B's or meta's stream


def joint_field(field: Field, k: int, head_layers: int) -> Field:
    """The joint pre-fit's network: the cell's family with k heads of `head_layers` layers."""
    return replace(field, heads=k, head_layers=head_layers)


def joint_start(
    field: Field, hls: int, hfs: int, init: Params, k: int, head_layers: int, seed: int, triple: int
) -> Params:
    """The joint pre-fit's start: `init`'s (the triple's random initialisation's) shared layers, then k heads drawn
    afresh, each head layer's blocks concatenated along the output axis (head j's columns j*out .. (j+1)*out)."""
    generator = triple_generator(seed, HEAD_STREAM + triple)
    heads = [field.init_params(hls, hfs, generator)[-head_layers:] for _ in range(k)]
    layers = [tuple(torch.cat([h[layer][p] for h in heads], dim=-1) for p in (0, 1)) for layer in range(head_layers)]
    return [*init[: len(init) - head_layers], *layers]


def fresh_head(fitted: Params, init: Params, head_layers: int) -> Params:
    """A's start after the joint pre-fit: its fitted shared layers, then the last `head_layers` layers of `init`,
    the triple's random initialisation (so that only the shared layers differ from the `random` scheme's start)."""
    return [*fitted[: len(fitted) - head_layers], *init[len(init) - head_layers :]]


def joint_targets(signals: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """The joint pre-fit's target [pixels, 3k]: the images of `rows` (of signals [K, pixels, 3]) along channels."""
    return torch.cat(list(signals[list(rows)]), dim=-1)


def class_images(
    data: ImageSet, triples: list[Triple], k: int, seed: int, exclude: set[int], scheme: str = "multi_same"
) -> dict:
    """k images of each triple's class per triple, none in any triple and none shared between triples: the same for
    multi_same and shared_encoder when both are selected with the same k (a draw of the seed alone)."""
    rng = np.random.default_rng([seed, 2])
    free = np.array(sorted(set(range(len(data))) - exclude), dtype=np.int64)
    by_class = {int(c): list(rng.permutation(free[data.labels[free] == c])) for c in np.unique(data.labels)}
    chosen = {}
    for t in triples:
        label = int(data.labels[t.target])
        if len(by_class.get(label, [])) < k:
            raise DataError(
                f"scheme {scheme} needs {k} more images of class {label} outside the triples; "
                f"lower scheme.{scheme}.k or dataset.n_triples"
            )
        chosen[t.triple] = [int(by_class[label].pop()) for _ in range(k)]
    return chosen


@dataclass
class Group:
    """Members of a stage fitted as one batch: their positions in the stage, stacked starts, targets, network."""

    positions: list[int]
    start: Params
    targets: torch.Tensor  # [members, pixels, channels]
    field: Field
    max_members: int


def stage_groups(
    cfg: Config, signals: torch.Tensor, specs: list[FitSpec], starts: list[Params], triples: list[int], max_members: int
) -> list[Group]:
    """A stage's batches: its plain fits, then its joint pre-fits (absent ones left out). A joint member holds k
    heads' work, so its batch holds k times fewer members at once (the results do not depend on it)."""
    field, groups = cfg.model.field(cfg.seed), []
    plain = [j for j, s in enumerate(specs) if not s.joint]
    joint = [j for j, s in enumerate(specs) if s.joint]
    if plain:
        targets = signals[[specs[j].image for j in plain]]
        groups.append(Group(plain, stack_params([starts[j] for j in plain]), targets, field, max_members))
    if joint:
        k, h = cfg.scheme.shared_encoder.k, cfg.scheme.shared_encoder.head_layers
        model = (field, cfg.model.hls, cfg.model.hfs)
        start = stack_params([joint_start(*model, starts[j], k, h, cfg.seed, triples[j]) for j in joint])
        targets = torch.stack([joint_targets(signals, specs[j].joint) for j in joint])
        groups.append(Group(joint, start, targets, joint_field(field, k, h), max(1, max_members // k)))
    return groups


def fit_groups(
    groups: list[Group],
    run: Callable[[Group, Saver | None, dict | None], FitResult],
    saver: Saver | None,
    resume: dict | None,
    epochs: int,
) -> list[FitResult]:
    """Fit the batches in turn by `run(group, saver, resume)`. One batch saves and resumes the engine's own fit state;
    several save `{"member_epochs", "groups": [finished batches' records], "fit": the running batch's state}`."""
    if len(groups) == 1:
        return [run(groups[0], saver, resume)]
    keys = ("loss", "lr", "snapshots", "params")
    results = [FitResult(**{key: r[key] for key in keys}) for r in resume["groups"]] if resume is not None else []
    for index in range(len(results), len(groups)):
        finished = [{key: getattr(r, key) for key in keys} for r in results]
        before = sum(len(g.positions) for g in groups[:index]) * epochs
        inner = None
        if saver is not None:  # the running batch's state, saved beside the finished batches' records
            inner = FitSaver(
                saver,
                lambda s, f=finished, b=before: {"member_epochs": b + int(s["member_epochs"]), "groups": f, "fit": s},
            )
        results.append(run(groups[index], inner, resume["fit"] if resume is not None else None))
        resume = None
    return results


def merged(
    groups: list[Group], results: list[FitResult], keep: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Params]]:
    """The batches' records in member order: loss and lr [members, epochs], the snapshots of the positions `keep`
    (fits on A, never a joint pre-fit), and each member's final parameters."""
    members = sum(len(g.positions) for g in groups)
    loss = results[0].loss.new_empty(members, results[0].loss.shape[1])
    lr = results[0].lr.new_empty(members, results[0].lr.shape[1])
    where: dict[int, tuple[int, int]] = {}
    for index, (group, result) in enumerate(zip(groups, results, strict=True)):
        loss[group.positions], lr[group.positions] = result.loss, result.lr
        where.update({j: (index, row) for row, j in enumerate(group.positions)})
    finals = [member_params(results[where[j][0]].params, where[j][1]) for j in range(members)]
    kept = [results[where[j][0]].snapshots[where[j][1]] for j in keep]
    snapshots = torch.stack(kept) if kept else results[0].snapshots[:0]
    return loss, lr, snapshots, finals
