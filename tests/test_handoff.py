"""Each stage of a member starts where that member's previous stage ended, under every protocol and scheme.

A stage's epoch-0 loss is the loss of the weights it starts from on its own target. The tests record every
stage's final weights, evaluate each member's previous-stage weights on the member's next target with a plain
float64 SIREN, and demand the loss the cell recorded. The images are distinct smooth patterns and the learning
rate is large, so a start from another member's weights, from an earlier stage or from the initialisation gives
a clearly different loss (checked, so that the test keeps its power if the sizes change).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from images import smooth_images

import prefit.cell
from prefit.cell import run_plan
from prefit.config import (
    ClassMeanConfig,
    Config,
    MetaConfig,
    ModelConfig,
    MultiSameConfig,
    ProtocolConfig,
    SchemeConfig,
    SchemesConfig,
    TrainConfig,
)
from prefit.data import ImageSet, coordinate_grid, draw_pool, draw_triples, to_signal
from prefit.meta import reptile
from prefit.model import Field, FieldNet, Params, init_params, member_params, triple_generator
from prefit.schemes import build_plan

CPU = torch.device("cpu")
SIDE, HLS, HFS, W0 = 8, 1, 16, 30.0
EPOCHS = 4
CLASSES, PER_CLASS = 4, 10
ALL = ("random", "same_class", "other_class", "class_mean", "multi_same", "meta")
CHAINED = ("random", "same_class", "other_class")  # the schemes the chain reports
TOLERANCE = 2e-6  # relative, on a loss: float32 rounding of the recorded loss is below 1e-7


@pytest.fixture(scope="module")
def data() -> ImageSet:
    """Distinct smooth colour patterns, 8 x 8 pixels, 10 per class in 4 classes."""
    signals = smooth_images(CLASSES * PER_CLASS, seed=5, side=SIDE)
    images = np.rint((signals.numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8).reshape(-1, SIDE, SIDE, 3)
    labels = np.arange(CLASSES * PER_CLASS, dtype=np.int64) % CLASSES
    return ImageSet(images, labels, [f"class {c}" for c in range(CLASSES)], "smooth patterns")


def make_cfg(protocol: str, schemes: tuple[str, ...], cache_dir) -> Config:
    options = {
        "random": SchemeConfig(),
        "same_class": SchemeConfig(),
        "other_class": SchemeConfig(),
        "class_mean": ClassMeanConfig(pool_size=8),
        "multi_same": MultiSameConfig(k=2),
        "meta": MetaConfig(
            outer_steps=2, inner_steps=3, inner_lr=1e-2, meta_batch=2, pool_size=4, cache_dir=str(cache_dir)
        ),
    }
    return Config(
        model=ModelConfig(hls=HLS, hfs=HFS, w0=W0),
        scheme=SchemesConfig(**{name: options[name] for name in schemes}),
        protocol=ProtocolConfig(protocol),
        train=TrainConfig(epochs=EPOCHS, lr=1e-2, progress=False, snapshot_epochs=[0, -1]),
    )


def loss_of(params: Params, target: torch.Tensor) -> float:
    """The mean squared error of one SIREN's weights on a [pixels, 3] target, in float64."""
    model = FieldNet.for_params([(w.double(), b.double()) for w, b in params], Field(w0=W0)).double()
    with torch.no_grad():
        return F.mse_loss(model(coordinate_grid(SIDE).double()), target.double()).item()


def same_weights(a: Params, b: Params) -> bool:
    return all(torch.equal(wa, wb) and torch.equal(ba.reshape(-1), bb.reshape(-1)) for (wa, ba), (wb, bb) in zip(a, b))


def run_recording(cfg: Config, data: ImageSet, monkeypatch):
    """Run a cell of 2 triples (at most 4 members fitted at once) and keep each stage's final weights."""
    finals: list[Params] = []
    engine_fit = prefit.cell.fit

    def recording_fit(*args, **kwargs):
        result = engine_fit(*args, **kwargs)
        finals.append(result.params)
        return result

    monkeypatch.setattr(prefit.cell, "fit", recording_fit)
    triples = draw_triples(data.labels, 2, cfg.seed)
    result = run_plan(cfg, build_plan(cfg, data, triples), CPU, max_members=4)
    return triples, result.rows, finals


def planned_targets(cfg: Config, triple, scheme: str, chained: bool) -> list[int | str]:
    """The split index each stage of a member fits ("mean": its class-mean image, "same": one of multi_same's
    images of A's class outside the triples)."""
    if chained:
        chain = [triple.target, triple.same, triple.target, triple.other, triple.target]
        return chain[: {"random": 1, "same_class": 3, "other_class": 5}[scheme]]
    if scheme == "multi_same":
        return ["same"] * cfg.scheme.multi_same.k + [triple.target]
    return {
        "random": [triple.target],
        "meta": [triple.target],
        "same_class": [triple.same, triple.target],
        "other_class": [triple.other, triple.target],
        "class_mean": ["mean", triple.target],
    }[scheme]


@pytest.mark.parametrize(
    "protocol,schemes",
    [("independent", ALL), *(("independent", (s,)) for s in ALL), ("chained", CHAINED)]
    + [("chained", (s,)) for s in CHAINED],
    ids=lambda v: v if isinstance(v, str) else "+".join(v),
)
def test_every_stage_starts_from_its_own_members_previous_weights(data, tmp_path, monkeypatch, protocol, schemes):
    cfg = make_cfg(protocol, schemes, tmp_path)
    chained = protocol == "chained"
    triples, rows, finals = run_recording(cfg, data, monkeypatch)
    in_triples = {i for t in triples for i in (t.target, t.same, t.other)}
    by_triple = {t.triple: t for t in triples}
    targets = {}  # split index, or ("mean", label) -> [pixels, 3], made from the images afresh
    if "class_mean" in schemes:
        pool = draw_pool(data.labels, cfg.scheme.class_mean.pool_size, cfg.seed, in_triples)
        for label in range(CLASSES):
            mean = data.images[pool[data.labels[pool] == label]].astype(np.float64).mean(axis=0)
            targets["mean", label] = to_signal(mean[None])[0]
    if "meta" in schemes:
        pool = draw_pool(data.labels, cfg.scheme.meta.pool_size, cfg.seed, in_triples)
        learned = reptile(cfg, cfg.scheme.meta, to_signal(data.images[pool]), CPU, max_members=2)

    stages = int(rows.stage.max()) + 1
    assert len(finals) == stages  # one batch of fits per stage
    history: dict = {}  # member -> the weights it has held: its start, then its final weights after each stage
    fitted: dict = {}  # member -> how many stages it took part in
    for stage in range(stages):
        epoch0 = rows[(rows.stage == stage) & (rows.epoch == 0)].reset_index(drop=True)
        assert len(rows[rows.stage == stage]) == EPOCHS * len(epoch0)
        keys = [row.triple if chained else (row.triple, row.scheme) for row in epoch0.itertuples()]
        assert len(set(keys)) == len(keys)
        for key, row in zip(keys, epoch0.itertuples()):
            triple = by_triple[row.triple]
            if stage == 0:
                init = init_params(HLS, HFS, W0, triple_generator(cfg.seed, row.triple))
                history[key] = [learned if row.scheme == "meta" else init]
            assert len(history[key]) == stage + 1, (stage, key)  # no stage skipped

            # the stage fits the image its scheme and protocol name
            scheme = max(schemes, key=CHAINED.index) if chained else row.scheme
            plan = planned_targets(cfg, triple, scheme, chained)
            assert stage < len(plan), (stage, key)  # no fit beyond the member's plan
            planned = plan[stage]
            if planned == "mean":
                assert row.target_index == -1 and row.target_label == data.labels[triple.target]
            elif planned == "same":
                assert (
                    row.target_index not in in_triples and data.labels[row.target_index] == data.labels[triple.target]
                )
            else:
                assert row.target_index == planned, (stage, key)
            if row.target_index >= 0:
                target = targets.setdefault(row.target_index, to_signal(data.images[[row.target_index]])[0])
            else:
                target = targets["mean", row.target_label]

            # its first loss is that of the member's own latest weights on the stage's target
            want = loss_of(history[key][-1], target)
            assert row.loss == pytest.approx(want, rel=TOLERANCE), (stage, key)
            # ... and far from that of any other member's latest weights or of this member's earlier ones (members
            # that share their start, at stage 0, aside)
            others = [h[-1] for k, h in history.items() if k != key] + history[key][:-1]
            for other in (o for o in others if not same_weights(o, history[key][-1])):
                assert abs(loss_of(other, target) - want) > 50 * TOLERANCE * want, (stage, key)
        for j, key in enumerate(keys):
            history[key].append(member_params(finals[stage], j))
            fitted[key] = fitted.get(key, 0) + 1
    for key, count in fitted.items():  # every member ran its whole list of fits, no more
        triple = by_triple[key if chained else key[0]]
        scheme = max(schemes, key=CHAINED.index) if chained else key[1]
        assert count == len(planned_targets(cfg, triple, scheme, chained)), key
