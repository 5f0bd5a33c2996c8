"""The new schemes: pools disjoint from the triples, the class-mean image, Reptile, and the meta cache."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import fields, replace
from enum import Enum

import numpy as np
import pytest
import torch
from images import smooth_images

import prefit.meta
from prefit.cell import run_plan
from prefit.config import (
    ClassMeanConfig,
    Config,
    MetaConfig,
    ModelConfig,
    MultiSameConfig,
    SchemeConfig,
    SchemesConfig,
    TrainConfig,
)
from prefit.data import coordinate_grid, draw_triples, read_cifar_dir, to_signal
from prefit.engine import fit_batched, fit_sequential
from prefit.engine.options import FitOptions
from prefit.meta import META_STREAM, inner_options, learned_init, reptile
from prefit.model import SIREN, init_params, stack_params, triple_generator
from prefit.schemes import build_plan

CPU = torch.device("cpu")


def make_cfg(tmp_path, **meta) -> Config:
    schemes = SchemesConfig(
        random=SchemeConfig(),
        class_mean=ClassMeanConfig(pool_size=20),
        multi_same=MultiSameConfig(k=2),
        meta=MetaConfig(outer_steps=2, inner_steps=3, meta_batch=2, pool_size=10, cache_dir=str(tmp_path), **meta),
    )
    return Config(
        model=ModelConfig(hls=1, hfs=8),
        scheme=schemes,
        train=TrainConfig(epochs=5, progress=False, snapshot_epochs=[0]),
    )


@pytest.fixture
def data(make_cifar_dir):
    return read_cifar_dir(make_cifar_dir(per_batch=20), "train")  # 100 images, 10 per class


def test_extra_schemes_stay_outside_the_triples(data, tmp_path):
    cfg = make_cfg(tmp_path)
    triples = draw_triples(data.labels, 3, cfg.seed)
    in_triples = {i for t in triples for i in (t.target, t.same, t.other)}
    plan = build_plan(cfg, data, triples)
    assert not in_triples & set(plan.meta_pool.tolist())
    multi = [m for m in plan.members if m.fits[-1].scheme == "multi_same"]
    used = [f.target_index for m in multi for f in m.fits[:-1]]
    assert len(used) == len(set(used)) == 3 * 2 and not in_triples & set(used)  # disjoint, also across triples
    for m, t in zip(multi, triples):
        assert all(data.labels[f.target_index] == data.labels[t.target] for f in m.fits)
        assert m.fits[-1].prefit_index == m.fits[-2].target_index
    for m in plan.members:
        if m.fits[-1].scheme == "class_mean":
            mean_fit, label = m.fits[0], data.labels[m.fits[-1].target_index]
            assert mean_fit.target_index == -1 and mean_fit.target_label == label
            assert m.fits[-1].prefit_label == label
    assert {m.start for m in plan.members if m.fits[-1].scheme == "meta"} == {"meta"}


def test_class_mean_image_is_the_pool_mean_of_the_class(data, tmp_path):
    cfg = make_cfg(tmp_path)
    triples = draw_triples(data.labels, 2, cfg.seed)
    plan = build_plan(cfg, data, triples)
    in_triples = {i for t in triples for i in (t.target, t.same, t.other)}
    from prefit.data import draw_pool

    pool = draw_pool(data.labels, 20, cfg.seed, in_triples)
    label = int(data.labels[triples[0].target])
    expected = data.images[pool[data.labels[pool] == label]].astype(np.float64).mean(0)
    row = plan.rows[("class_mean", label)]
    torch.testing.assert_close(plan.signals[row], to_signal(expected[None]).squeeze(0).float())


def test_reptile_with_one_task_and_full_step_lands_on_the_fitted_weights(data, tmp_path):
    cfg = make_cfg(tmp_path)
    meta = replace(cfg.scheme.meta, outer_steps=1, meta_batch=1, outer_lr=1.0)
    signals = to_signal(data.images[:1])
    learned = reptile(cfg, meta, signals, CPU, max_members=1)
    start = init_params(1, 8, 30.0, triple_generator(cfg.seed, 1_000_003))
    inner = replace(cfg.train, epochs=3, lr=meta.inner_lr, snapshot_epochs=[])
    fitted = fit_batched(stack_params([start]), signals, coordinate_grid(), inner, SIREN, CPU, 1).params
    for (w, b), (fw, fb) in zip(learned, fitted):
        torch.testing.assert_close(w, fw[0])
        torch.testing.assert_close(b, fb[0, 0])
    assert not torch.equal(learned[0][0], start[0][0])


def test_reptile_moves_towards_the_mean_of_the_meta_batch_with_an_annealed_step(tmp_path):
    """Three outer steps over a meta-batch of three distinct images, computed here with the sequential engine:
    theta <- theta + outer_lr (1 - step / outer_steps) (mean of the fitted weights - theta). Taking one task
    instead of the mean, or a step that does not shrink, lands elsewhere."""
    cfg = make_cfg(tmp_path)
    meta = replace(cfg.scheme.meta, outer_steps=3, inner_steps=3, inner_lr=1e-2, outer_lr=0.8, meta_batch=3)
    side = 8
    signals = smooth_images(3, seed=4, side=side)  # the pool is the meta-batch: every step fits all three
    learned = reptile(cfg, meta, signals, CPU, max_members=3)

    hls, hfs, w0 = cfg.model.hls, cfg.model.hfs, cfg.model.w0
    theta = init_params(hls, hfs, w0, triple_generator(cfg.seed, META_STREAM))
    inner = replace(cfg.train, epochs=3, lr=1e-2, snapshot_epochs=[], progress=False)
    for step in range(3):
        fitted = fit_sequential(stack_params([theta] * 3), signals, coordinate_grid(side), inner, SIREN, CPU).params
        rate = 0.8 * (1 - step / 3)
        theta = [
            (w + rate * (fw.mean(0) - w), b + rate * (fb.mean(0).reshape(-1) - b))
            for (w, b), (fw, fb) in zip(theta, fitted)
        ]
        spread = max((fw - fw.mean(0)).abs().max().item() for fw, _ in fitted)
        assert spread > 1e-2  # the three tasks' fitted weights are far apart: the mean is not any one of them
    for (w, b), (lw, lb) in zip(theta, learned):
        torch.testing.assert_close(lw, w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lb, b, rtol=1e-4, atol=1e-5)


def _learn(args):
    cfg, pool, signals = args
    params, info = learned_init(cfg, "synthetic", pool, signals, CPU, 2)
    return info["cache"], [w.sum().item() for w, _ in params]


def test_meta_cache_hit_miss_config_change_and_racing_writers(data, tmp_path):
    cfg = make_cfg(tmp_path)
    pool = np.arange(10)
    signals = to_signal(data.images[pool])
    first, info = learned_init(cfg, "synthetic", pool, signals, CPU, 2)
    assert info["cache"] == "miss"
    again, info2 = learned_init(cfg, "synthetic", pool, signals, CPU, 2)
    assert info2["cache"] == "hit" and info2["path"] == info["path"]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))

    changed = replace(cfg, scheme=replace(cfg.scheme, meta=replace(cfg.scheme.meta, inner_lr=2e-4)))
    _, info3 = learned_init(changed, "synthetic", pool, signals, CPU, 2)
    assert info3["cache"] == "miss" and info3["key"] != info["key"]
    _, info4 = learned_init(cfg, "synthetic", np.arange(1, 11), signals, CPU, 2)  # another pool
    assert info4["key"] != info["key"]

    # two jobs racing on one key: both learn, one complete entry remains
    path = tmp_path / "racing"
    raced = replace(cfg, scheme=replace(cfg.scheme, meta=replace(cfg.scheme.meta, cache_dir=str(path))))
    with mp.get_context("spawn").Pool(2) as workers:
        outcomes = workers.map(_learn, [(raced, pool, signals)] * 2)
    assert outcomes[0][1] == outcomes[1][1]  # both learned the same thing
    files = list(path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # one complete entry, no temporary left
    assert _learn((raced, pool, signals))[0] == "hit"
    files[0].write_bytes(b"garbage")  # a damaged entry is relearned, not used
    assert _learn((raced, pool, signals))[0] == "miss"


def another(value):
    """Another valid value of a config field's type (the same kind of value, changed)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, Enum):
        return next(member for member in type(value) if member != value)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, (tuple, list)):
        return type(value)(another(v) for v in value) if value else type(value)([0])
    if value is None:
        return 1
    raise TypeError(f"no other value for {value!r}")


def test_meta_cache_key_holds_every_setting_the_inner_fits_use_and_no_runtime_one(tmp_path, monkeypatch):
    """A learned initialisation depends on the model, the meta settings, the seed and every fit option its
    inner fits run with (Adam's betas and eps, the plateau schedule, the products' precision): changing any of
    them must learn it afresh. Runtime settings (progress bars, kernels, device, chunking) must reuse it."""

    def stand_in(cfg, meta, signals, device, max_members):  # learning itself is not what is tested here
        return init_params(cfg.model.hls, cfg.model.hfs, cfg.model.w0, triple_generator(0, 0))

    monkeypatch.setattr(prefit.meta, "reptile", stand_in)
    base = make_cfg(tmp_path)
    pool = np.arange(4)
    signals = smooth_images(4, side=8)

    def cache(cfg: Config) -> str:
        return learned_init(cfg, "synthetic", pool, signals, CPU, 2)[1]["cache"]

    assert cache(base) == "miss" and cache(base) == "hit"

    def changed(cfg: Config, section: str, name: str) -> Config:
        part = getattr(cfg, section)
        return replace(cfg, **{section: replace(part, **{name: another(getattr(part, name))})})

    def inner(cfg: Config) -> FitOptions:
        return inner_options(cfg, cfg.scheme.meta)

    overridden, counted = [], []  # fit options that the meta settings replace in the inner fits; the others
    for f in fields(FitOptions):
        if f.metadata.get("runtime"):
            continue
        other = changed(base, "train", f.name)
        if getattr(inner(other), f.name) == getattr(inner(base), f.name):
            overridden.append(f.name)
            assert cache(other) == "hit", f"train.{f.name} does not reach the inner fits"
        else:
            assert cache(other) == "miss", f"train.{f.name} changes the inner fits, yet the cache was reused"
            assert cache(other) == "hit"
            counted.append(f.name)
    assert sorted(overridden) == ["epochs", "lr", "snapshot_epochs"]  # scheme.meta's inner_steps and inner_lr
    assert {"betas", "eps", "plateau_patience", "plateau_factor", "plateau_threshold", "matmul_precision"} <= {*counted}

    meta = base.scheme.meta
    for f in fields(meta):
        if not f.metadata.get("runtime"):
            other = replace(meta, **{f.name: another(getattr(meta, f.name))})
            assert cache(replace(base, scheme=replace(base.scheme, meta=other))) == "miss", f"scheme.meta.{f.name}"
    for f in fields(base.model):
        assert cache(changed(base, "model", f.name)) == "miss", f"model.{f.name}"
    assert cache(replace(base, seed=base.seed + 1)) == "miss"

    runtime = [f.name for f in fields(base.train) if f.metadata.get("runtime")]
    assert "progress" in runtime
    for name in [*runtime, "engine"]:  # the batched engine learns it, whatever train.engine fits the cell with
        assert cache(changed(base, "train", name)) == "hit", f"train.{name} does not change what is learned"


def test_all_schemes_run_in_one_cell(data, tmp_path):
    cfg = make_cfg(tmp_path)
    cfg = replace(cfg, scheme=replace(cfg.scheme, same_class=SchemeConfig(), other_class=SchemeConfig()))
    triples = draw_triples(data.labels, 2, cfg.seed)
    result = run_plan(cfg, build_plan(cfg, data, triples), CPU, max_members=4)
    fits = result.rows[result.rows.phase == "fit"]
    assert set(fits.scheme) == {"random", "same_class", "other_class", "class_mean", "multi_same", "meta"}
    assert fits.groupby(["scheme", "triple"]).size().eq(5).all()
    assert result.info["meta"]["cache"] in ("hit", "miss")
    assert set(result.recon["scheme"]) == set(fits.scheme)
