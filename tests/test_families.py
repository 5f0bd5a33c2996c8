"""Every model family: the generic step (torch.func) equals the sequential engine, the SIREN's hand-written steps
equal the generic one, each family starts as its paper initialises it, and configs name the family or fail in one
line."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from images import smooth_images
from omegaconf import OmegaConf

from prefit import train as app
from prefit.config import TrainConfig, study_of, validate
from prefit.data import coordinate_grid
from prefit.engine import fit_batched, fit_sequential, psnr_from_loss
from prefit.engine.steps import GenericStep, SirenStep
from prefit.errors import ConfigError
from prefit.model import SIREN, Field, FieldNet, make_field, member_params, stack_params, triple_generator
from prefit.schema import PSNR_FILE, RUN_FILE

CPU = torch.device("cpu")
CONF = Path(app.__file__).resolve().parents[1] / "conf"
FIELDS = {
    "siren": SIREN,
    "ffn": make_field("ffn", 0, None, 5.0, 16, None),
    "gauss": make_field("gauss", 0, None, None, None, 10.0),
}
TRAIN = TrainConfig(
    epochs=60, lr=1e-3, snapshot_epochs=[0, -1], progress=False, plateau_patience=8, plateau_threshold=0.2
)  # a schedule that acts within the fit


def members(field: Field, n: int = 3, hls: int = 2, hfs: int = 16):
    return stack_params([field.init_params(hls, hfs, triple_generator(7, i)) for i in range(n)])


def psnr_gap(a, b) -> float:
    return (psnr_from_loss(a.loss) - psnr_from_loss(b.loss)).abs().max().item()


@pytest.mark.parametrize("family", list(FIELDS))
def test_generic_step_equals_the_sequential_engine(family):
    """Per member: one FieldNet and torch's Adam and plateau schedule, against all members through vmap(grad) with
    the batched Adam, in chunks of two. A wrong activation, encoding or gradient breaks the agreement."""
    field, targets = FIELDS[family], smooth_images(3, side=16)
    params, coords = members(field), coordinate_grid(16)
    generic = fit_batched(params, targets, coords, replace(TRAIN, kernels="generic"), field, CPU, max_members=2)
    sequential = fit_sequential(params, targets, coords, TRAIN, field, CPU)
    assert psnr_gap(generic, sequential) < 1e-3
    assert torch.equal(generic.lr, sequential.lr) and (generic.lr[:, -1] < generic.lr[:, 0]).any()  # the plateau acted
    assert (psnr_from_loss(generic.loss[:, -1]) > psnr_from_loss(generic.loss[:, 0]) + 0.5).all()  # real fits
    torch.testing.assert_close(generic.snapshots, sequential.snapshots, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernels", ["compiled", "torch"])
def test_siren_fast_steps_equal_the_generic_step(kernels):
    params, targets, coords = members(SIREN), smooth_images(3, side=16), coordinate_grid(16)
    fast = fit_batched(params, targets, coords, replace(TRAIN, kernels=kernels), SIREN, CPU, max_members=2)
    generic = fit_batched(params, targets, coords, replace(TRAIN, kernels="generic"), SIREN, CPU, max_members=2)
    assert psnr_gap(fast, generic) < 1e-3


@pytest.mark.parametrize("family", ["siren", "gauss"])
def test_the_compiled_generic_step_equals_the_eager_one(family):
    """torch.compile's step against the eager step on one chunk: the same loss, predictions and gradients to float
    rounding; a wrong compiled graph (or one compiled for another network and reused) would differ."""
    field, target, coords = FIELDS[family], smooth_images(3), coordinate_grid()
    params = members(field, hls=3, hfs=12)
    eager, compiled = GenericStep(params, coords, target, field), GenericStep(params, coords, target, field, True)
    assert compiled.compiled and not eager.compiled
    for a, b in zip(_flat(eager()), _flat(compiled()), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    other = make_field("gauss", 0, None, None, None, 3.0) if family == "gauss" else Field(w0=10.0)
    for a, b in zip(
        _flat(GenericStep(params, coords, target, other)()),
        _flat(GenericStep(params, coords, target, other, True)()),
        strict=True,
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)  # another constant, the same shapes: compiled anew


def test_a_step_that_cannot_compile_runs_eagerly_with_one_warning(monkeypatch, caplog):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler\nsecond line")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    field, target, coords = FIELDS["gauss"], smooth_images(3), coordinate_grid()
    params = members(field)
    with caplog.at_level(logging.WARNING, logger="prefit.engine.steps"):
        step = GenericStep(params, coords, target, field, True)
    assert not step.compiled
    assert [r.getMessage() for r in caplog.records] == [
        "the generic step runs eagerly: torch.compile failed (no C++ compiler second line)"
    ]
    for a, b in zip(_flat(step()), _flat(GenericStep(params, coords, target, field)()), strict=True):
        assert torch.equal(a, b)


def _flat(step_result) -> list[torch.Tensor]:
    loss, pred, grads = step_result
    return [loss, pred, *[t for pair in grads for t in pair]]


def test_generic_gradients_equal_the_hand_written_backward():
    params, target, coords = members(SIREN, hls=3, hfs=12), smooth_images(3), coordinate_grid()
    loss, pred, grads = GenericStep(params, coords, target, SIREN)()
    ref_loss, ref_pred, ref_grads = SirenStep(params, coords, target, 30.0)()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-4, atol=1e-5)
    for (gw, gb), (rw, rb) in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(gw, rw, rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(gb, rb, rtol=1e-3, atol=1e-6)


def test_fourier_features_are_fixed_by_the_seed_and_widen_the_first_layer():
    a, b, c = (make_field("ffn", seed, None, 5.0, 16, None) for seed in (1, 1, 2))
    assert torch.equal(a.encoding, b.encoding) and not torch.equal(a.encoding, c.encoding)
    assert a.encoding.shape == (2, 16) and 3.5 < a.encoding.std().item() < 6.5  # N(0, 5^2)
    coords = coordinate_grid(8)
    features = a.encode(coords)
    assert features.shape == (64, 32) and a.inputs == 32
    angle = 2 * math.pi * coords @ a.encoding
    torch.testing.assert_close(features, torch.cat([angle.cos(), angle.sin()], dim=1))
    first_w, _ = a.init_params(2, 64, triple_generator(0, 0))[0]
    assert first_w.shape == (32, 64)


def test_each_family_initialises_as_its_paper():
    gen = lambda: triple_generator(3, 1)  # noqa: E731
    ffn = FIELDS["ffn"].init_params(2, 256, gen())
    w, b = ffn[1]  # Glorot normal: std sqrt(2 / (256 + 256)); biases N(0, 0.01^2)
    assert abs(w.std().item() - math.sqrt(2 / 512)) < 0.004 and abs(b.std().item() - 0.01) < 0.003
    gauss = FIELDS["gauss"].init_params(2, 256, gen())
    w, b = gauss[1]  # PyTorch's nn.Linear: U(-1/sqrt(fan_in), +)
    assert w.abs().max() <= 1 / 16 and w.abs().max() > 0.9 / 16 and b.abs().max() <= 1 / 16
    siren = SIREN.init_params(2, 256, gen())
    assert siren[1][0].abs().max() <= math.sqrt(6 / 256) / 30  # unchanged: the SIREN's own


@pytest.mark.parametrize("family", list(FIELDS))
def test_module_forward_is_the_family_network(family):
    """FieldNet computes encode -> (linear, activation) x (hls + 1) -> linear, written out by hand here."""
    field = FIELDS[family]
    params = field.init_params(2, 8, triple_generator(1, 1))
    coords = coordinate_grid(4)
    x = field.encode(coords)
    for w, b in params[:-1]:
        x = x @ w + b
        x = {"siren": lambda z: torch.sin(30 * z), "ffn": torch.relu, "gauss": lambda z: torch.exp(-((10 * z) ** 2))}[
            family
        ](x)
    expected = x @ params[-1][0] + params[-1][1]
    torch.testing.assert_close(FieldNet.for_params(params, field)(field.encode(coords)), expected)
    assert member_params(stack_params([params]), 0)[0][0].shape == params[0][0].shape


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def test_family_configs_set_their_own_keys_and_learning_rate():
    siren, ffn, gauss = composed(), composed("model=ffn"), composed("model=gauss")
    assert siren.model.family == "siren" and siren.model.w0 == 30.0 and siren.train.lr == 1e-4
    assert ffn.model.family == "ffn" and ffn.model.w0 is None and ffn.model.features == 256 and ffn.train.lr == 1e-3
    assert gauss.model.family == "gauss" and gauss.model.scale == 10.0 and gauss.train.lr == 1e-3
    assert composed("model=ffn", "train.lr=5e-4").train.lr == 5e-4  # the command line still wins
    for cfg in (siren, ffn, gauss):
        validate(cfg)


@pytest.mark.parametrize(
    "overrides,mentions",
    [
        (["model.sigma=3"], "model.sigma"),  # another family's key on a SIREN
        (["model=ffn", "model.w0=30"], "model.w0"),
        (["model=ffn", "model.features=0"], "model.features"),
        (["model=gauss", "model.scale=null"], "model.scale"),
    ],
)
def test_family_keys_of_the_wrong_family_are_refused_in_one_line(overrides, mentions):
    with pytest.raises(ConfigError, match=mentions) as error:
        validate(composed(*overrides))
    assert "\n" not in str(error.value)


def test_siren_only_steps_are_refused_for_other_families(cifar_dir, tmp_path):
    cfg = composed(
        "model=ffn", "train.kernels=compiled", "dataset=cifar_dir", f"dataset.path={cifar_dir}", "dataset.n_triples=2"
    )
    with pytest.raises(ConfigError, match="SIRENs only"):
        app.run(cfg, tmp_path / "out")


def test_records_from_before_families_are_sirens():
    old = {"model": {"hls": 2, "hfs": 32, "w0": 30.0}, "seed": 42}
    assert study_of(old)["model"]["family"] == "siren"
    assert study_of({"model": {"family": "ffn", "hls": 2}})["model"]["family"] == "ffn"


def test_a_fourier_feature_cell_runs_like_a_siren_cell(cifar_dir, tmp_path):
    """`python -m prefit.train model=ffn ...` in process: the generic step runs, run.json says so and records the
    family, and every fit improves."""
    cfg = composed(
        "model=ffn",
        "model.hls=1",
        "model.hfs=8",
        "model.features=8",
        "train.epochs=15",
        "dataset.n_triples=2",
        "dataset=cifar_dir",
        f"dataset.path={cifar_dir}",
        "train.progress=false",
        "train.threads=1",
    )
    out = tmp_path / "ffn"
    app.run(cfg, out)
    rows = pd.read_parquet(out / PSNR_FILE)
    record = pd.read_json(out / RUN_FILE, typ="series")
    assert record["step"] == "generic" and record["config"]["model"]["family"] == "ffn"
    assert sorted(rows["scheme"].astype(str).unique()) == ["other_class", "random", "same_class"]
    first = rows[rows.epoch == 0].set_index(["scheme", "phase", "triple"])["psnr"]
    last = rows[rows.epoch == 14].set_index(["scheme", "phase", "triple"])["psnr"]
    assert (last > first).all()
