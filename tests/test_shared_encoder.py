"""scheme=shared_encoder (STRAINER): its plan, the starts of its joint pre-fit and of the fit on A, the joint loss, both
engines, checkpoints, and bad options refused in one line."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import prefit.cell
from prefit.cell import run_plan
from prefit.checkpoint import CHECKPOINT_FILE, CellCheckpoint, read_position
from prefit.choices import Family
from prefit.config import (
    Config,
    ConfigError,
    ModelConfig,
    MultiSameConfig,
    ProtocolConfig,
    SchemeConfig,
    SchemesConfig,
    SharedEncoderConfig,
    TrainConfig,
    register,
    study_config,
    validate,
)
from prefit.data import DataError, coordinate_grid, draw_triples, read_cifar_dir, to_signal
from prefit.model import FieldNet, Params, member_params, triple_generator
from prefit.schemes import build_plan
from prefit.shared import HEAD_STREAM

CPU = torch.device("cpu")
CONF = Path(prefit.cell.__file__).resolve().parents[1] / "conf"
FIT = dict(progress=False, lr=1e-3, snapshot_epochs=[0, -1], compile_generic=False)  # the step: tests/test_families.py


def make_cfg(
    k: int = 2,
    head_layers: int = 1,
    epochs: int = 3,
    hls: int = 2,
    engine: str = "batched",
    model: ModelConfig | None = None,
    **schemes,
) -> Config:
    selected = {
        "random": SchemeConfig(),
        "shared_encoder": SharedEncoderConfig(k=k, head_layers=head_layers),
        **schemes,
    }
    return Config(
        model=model or ModelConfig(hls=hls, hfs=8),
        scheme=SchemesConfig(**selected),
        train=TrainConfig(epochs=epochs, engine=engine, **FIT),
    )


@pytest.fixture
def data(cifar_dir):
    return read_cifar_dir(cifar_dir, "train")


def split_index(plan, row: int) -> int:
    """The split index of a row of the plan's signals."""
    return next(key for key, value in plan.rows.items() if value == row and isinstance(key, int | np.integer))


def record_fits(monkeypatch) -> list[tuple[Params, torch.Tensor, object, Params]]:
    """Every engine call of run_plan: (stacked start, targets, field, stacked final parameters)."""
    calls = []
    engine_fit = prefit.cell.fit

    def recording(*args, **kwargs):
        result = engine_fit(*args, **kwargs)
        calls.append((args[1], args[2], args[5], result.params))
        return result

    monkeypatch.setattr(prefit.cell, "fit", recording)
    return calls


def head(params: Params, j: int, k: int, head_layers: int) -> Params:
    """Head j of a joint network as a network of one head: the shared layers, then head j's block of each head layer
    (columns j*out .. (j+1)*out of the layers stored side by side)."""
    shared, blocks = params[: len(params) - head_layers], []
    for w, b in params[len(params) - head_layers :]:
        out = w.shape[-1] // k
        blocks.append((w[:, j * out : (j + 1) * out], b.reshape(-1)[j * out : (j + 1) * out]))
    return [*shared, *blocks]


def test_each_triple_pre_fits_k_images_of_as_class_outside_the_triples(data):
    k = 2
    cfg = make_cfg(k=k, multi_same=MultiSameConfig(k=k))
    triples = draw_triples(data.labels, 2, cfg.seed)
    plan = build_plan(cfg, data, triples)
    in_triples = {i for t in triples for i in (t.target, t.same, t.other)}
    members = {(m.triple, m.fits[-1].scheme): m for m in plan.members}
    used = []
    for t in triples:
        joint, fit_a = members[t.triple, "shared_encoder"].fits
        label = data.labels[t.target]
        assert (joint.phase, joint.image, joint.target_index, joint.target_label) == ("prefit", -1, -1, label)
        images = [split_index(plan, row) for row in joint.joint]
        assert len(set(images)) == k and not set(images) & in_triples
        assert all(data.labels[i] == label for i in images)
        for row, index in zip(joint.joint, images):
            assert np.array_equal(plan.images[row], data.images[index])
        assert (fit_a.phase, fit_a.target_index, fit_a.prefit_index) == ("fit", t.target, None)
        assert fit_a.prefit_label == label
        # multi_same's images, when both are selected with the same k
        assert images == [f.target_index for f in members[t.triple, "multi_same"].fits[:-1]]
        used += images
    assert len(set(used)) == len(used)  # no image shared between triples


def test_too_few_images_name_the_key_to_lower(data):
    cfg = make_cfg(k=5)
    with pytest.raises(DataError, match=r"scheme shared_encoder needs 5 .* lower scheme.shared_encoder.k") as error:
        build_plan(cfg, data, draw_triples(data.labels, 2, cfg.seed))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("head_layers", [1, 2])
def test_the_joint_start_and_as_start_are_the_schemes(data, monkeypatch, head_layers):
    """The joint pre-fit starts from the triple's random initialisation's shared layers and k heads of their own; A's
    fit starts from the pre-fit's shared layers and exactly the triple's random head."""
    k = 3
    cfg = make_cfg(k=k, head_layers=head_layers)
    triples = draw_triples(data.labels, 2, cfg.seed)
    calls = record_fits(monkeypatch)
    result = run_plan(cfg, build_plan(cfg, data, triples), CPU, max_members=4)
    assert [field.heads for *_, field, _ in calls] == [1, k, 1]  # stage 0: random, joint pre-fits; stage 1: fits on A
    (_, _, _, _), (joint_start, joint_targets, field, joint_final), (a_start, *_) = calls
    assert field.head_layers == head_layers and joint_targets.shape == (2, 32 * 32, 3 * k)
    model_field, shared = cfg.model.field(cfg.seed), cfg.model.hls + 2 - head_layers
    for row, t in enumerate(triples):
        init = model_field.init_params(cfg.model.hls, cfg.model.hfs, triple_generator(cfg.seed, t.triple))
        start, final, a = (member_params(p, row) for p in (joint_start, joint_final, a_start))
        assert len(start) == len(a) == len(init)
        for layer in range(shared):
            assert torch.equal(start[layer][0], init[layer][0]) and torch.equal(start[layer][1], init[layer][1])
            assert torch.equal(a[layer][0], final[layer][0]) and not torch.equal(a[layer][0], init[layer][0])
        heads = [head(start, j, k, head_layers)[shared:] for j in range(k)]
        for x, y in itertools.combinations(heads, 2):
            assert all(not torch.equal(wx, wy) for (wx, _), (wy, _) in zip(x, y))
        generator = triple_generator(cfg.seed, HEAD_STREAM + t.triple)
        drawn = model_field.init_params(cfg.model.hls, cfg.model.hfs, generator)
        assert all(torch.equal(w, d[0]) for (w, _), d in zip(heads[0], drawn[shared:]))  # head 0: the first draw
        for layer in range(shared, len(init)):  # A's head: the triple's random one, untouched by the pre-fit
            assert torch.equal(a[layer][0], init[layer][0]) and torch.equal(a[layer][1].reshape(-1), init[layer][1])
    fits = result.rows[result.rows.phase == "fit"]
    assert set(fits.scheme) == {"random", "shared_encoder"} and set(result.recon["scheme"]) == set(fits.scheme)
    assert result.recon["recon"].shape[-1] == 3


@pytest.mark.parametrize(
    "head_layers,model",
    [(1, None), (2, None), (2, ModelConfig(family=Family.gauss, hls=2, hfs=8, w0=None, scale=10.0))],
    ids=["siren-1", "siren-2", "gauss-2"],
)
@pytest.mark.parametrize("engine", ["batched", "sequential"])
def test_the_joint_loss_is_the_mean_of_the_heads_mses(data, monkeypatch, head_layers, model, engine):
    """Each head, taken out as a network of one head (FieldNet), fits its own image: the joint pre-fit's recorded loss
    is the mean of the k images' MSEs (a wrong block layout of the heads or the targets breaks this)."""
    k = 3
    cfg = make_cfg(k=k, head_layers=head_layers, epochs=2, engine=engine, model=model)
    triples = draw_triples(data.labels, 2, cfg.seed)
    plan = build_plan(cfg, data, triples)
    calls = record_fits(monkeypatch)
    rows = run_plan(cfg, plan, CPU, max_members=4).rows
    joint = rows[(rows.scheme == "shared_encoder") & (rows.phase == "prefit")].set_index(["triple", "epoch"])
    single = cfg.model.field(cfg.seed)
    inputs = single.encode(coordinate_grid()).double()
    members = {m.triple: m for m in plan.members if m.fits[0].joint}
    start = calls[1][0]
    for row, t in enumerate(triples):
        mses = []
        for j, row_j in enumerate(members[t.triple].fits[0].joint):
            net = FieldNet.for_params(head(member_params(start, row), j, k, head_layers), single).double()
            target = to_signal(data.images[[split_index(plan, row_j)]])[0].double()
            with torch.no_grad():
                mses.append(F.mse_loss(net(inputs), target).item())
        assert joint.loc[(t.triple, 0), "loss"] == pytest.approx(np.mean(mses), rel=1e-5)
        assert np.ptp(mses) > 1e-3 * np.mean(mses)  # distinct heads on distinct images: the layout matters


def test_batched_and_sequential_engines_agree(data):
    triples = draw_triples(data.labels, 2, 42)
    rows = {}
    for engine in ("batched", "sequential"):
        cfg = make_cfg(k=2, head_layers=2, epochs=12, engine=engine)
        rows[engine] = run_plan(cfg, build_plan(cfg, data, triples), CPU, max_members=4).rows
    a, b = rows["batched"], rows["sequential"]
    assert len(a) == (2 + 2 + 2) * 12 and set(a[a.stage == 0].scheme) == {"random", "shared_encoder"}
    keys = ["stage", "scheme", "triple", "epoch"]
    pd.testing.assert_frame_equal(a[keys], b[keys])
    np.testing.assert_allclose(a.psnr.to_numpy(), b.psnr.to_numpy(), atol=1e-3, rtol=0)


def test_a_cell_resumes_from_any_of_its_checkpoints(data, tmp_path):
    """Checkpoints in the random fits, in the joint pre-fits and in the fits on A each resume to the same bits: a
    stage's batches are saved with the finished ones' records, and the fit on A starts from the fresh head."""
    cfg = make_cfg(k=2, hls=1, epochs=20)
    plan = build_plan(cfg, data, draw_triples(data.labels, 2, cfg.seed))
    study = study_config(cfg)
    whole = run_plan(cfg, plan, CPU, max_members=2)
    path, saved = tmp_path / CHECKPOINT_FILE, []
    checkpoint = CellCheckpoint(path, study, minutes=9 / 60, clock=itertools.count().__next__)
    write = checkpoint.save
    checkpoint.save = lambda state: (write(state), saved.append(path.read_bytes()))
    run_plan(cfg, plan, CPU, 2, checkpoint)
    positions = [read_position(io.BytesIO(blob)) for blob in saved]
    done = [p["member_epochs"] for p in positions if p["stage"] == 0]
    assert min(done) < 2 * 20 < max(done) and any(p["stage"] == 1 for p in positions)  # both batches, and stage 1
    for blob in saved:
        path.write_bytes(blob)
        resumed = run_plan(cfg, plan, CPU, 2, CellCheckpoint(path, study, minutes=0))
        pd.testing.assert_frame_equal(resumed.rows, whole.rows, check_exact=True)
        assert all(np.array_equal(resumed.recon[key], whole.recon[key]) for key in whole.recon)


def composed(*overrides: str) -> Config:
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def test_the_scheme_composes_with_its_defaults():
    cfg = composed("scheme=[random,shared_encoder]")
    validate(cfg)
    assert cfg.scheme.selected() == ["random", "shared_encoder"]
    assert (cfg.scheme.shared_encoder.k, cfg.scheme.shared_encoder.head_layers) == (10, 1)


BAD = [
    (["scheme.shared_encoder.k=0"], "scheme.shared_encoder.k must be >= 1"),
    (["scheme.shared_encoder.head_layers=0"], "scheme.shared_encoder.head_layers must be >= 1"),
    (["model.hls=2", "scheme.shared_encoder.head_layers=4"], "scheme.shared_encoder.head_layers must be <= model.hls"),
    (["protocol=chained"], "protocol=chained reproduces the original's three schemes only"),
]


@pytest.mark.parametrize("overrides,mentions", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_options_are_refused_in_one_line(overrides, mentions):
    cfg = composed("scheme=[random,shared_encoder]", *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert mentions in str(error.value) and "\n" not in str(error.value)


def test_head_layers_up_to_every_layer_but_the_first_are_allowed():
    validate(composed("scheme=[shared_encoder]", "model.hls=2", "scheme.shared_encoder.head_layers=3"))
    validate(Config(scheme=SchemesConfig(shared_encoder=SharedEncoderConfig()), protocol=ProtocolConfig()))


@pytest.mark.slow
def test_a_bad_option_ends_the_app_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "prefit.train", "scheme=[random,shared_encoder]", "scheme.shared_encoder.k=0"]
        + [f"hydra.run.dir={tmp_path / 'bad'}", "train.progress=false"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "scheme.shared_encoder.k" in lines[0]
