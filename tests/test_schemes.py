"""Plans of fits per scheme and protocol, and the rows a cell produces."""

import numpy as np
import pytest
import torch
from reference import batched_forward

from prefit.cell import run_plan
from prefit.config import Config, ModelConfig, ProtocolConfig, SchemeConfig, SchemesConfig, TrainConfig
from prefit.data import coordinate_grid, draw_triples, read_cifar_dir, to_signal
from prefit.model import init_params, stack_params, triple_generator
from prefit.schemes import build_plan

CPU = torch.device("cpu")
THREE = SchemesConfig(random=SchemeConfig(), same_class=SchemeConfig(), other_class=SchemeConfig())


def make_cfg(protocol: str = "independent", epochs: int = 6, schemes: SchemesConfig = THREE) -> Config:
    return Config(
        model=ModelConfig(hls=2, hfs=8),
        scheme=schemes,
        protocol=ProtocolConfig(protocol),
        train=TrainConfig(epochs=epochs, progress=False, snapshot_epochs=[0, -1]),
    )


@pytest.fixture
def data(cifar_dir):
    return read_cifar_dir(cifar_dir, "train")


def test_independent_plan(data):
    triples = draw_triples(data.labels, 3, 42)
    plan = build_plan(make_cfg(), data, triples)
    assert len(plan.members) == 9
    by_scheme = {}
    for m in plan.members:
        by_scheme.setdefault(m.fits[-1].scheme, []).append(m)
    t = triples[0]
    random, same, other = (by_scheme[s][0] for s in ("random", "same_class", "other_class"))
    assert [f.target_index for f in random.fits] == [t.target]
    assert [(f.phase, f.target_index) for f in same.fits] == [("prefit", t.same), ("fit", t.target)]
    assert [(f.phase, f.target_index) for f in other.fits] == [("prefit", t.other), ("fit", t.target)]
    assert same.fits[1].prefit_index == t.same and same.fits[1].prefit_label == data.labels[t.target]
    assert other.fits[1].prefit_label != data.labels[t.target]
    assert random.fits[0].prefit_index is None
    for f in same.fits + other.fits:  # each fit's row in the bank holds the image it names
        assert np.array_equal(plan.images[f.image], data.images[f.target_index])


def test_chained_plan_is_one_chain_per_triple(data):
    triples = draw_triples(data.labels, 2, 42)
    plan = build_plan(make_cfg("chained"), data, triples)
    assert len(plan.members) == 2
    t, chain = triples[0], plan.members[0].fits
    assert [(f.scheme, f.phase, f.target_index) for f in chain] == [
        ("random", "fit", t.target),
        ("same_class", "prefit", t.same),
        ("same_class", "fit", t.target),
        ("other_class", "prefit", t.other),
        ("other_class", "fit", t.target),
    ]


@pytest.mark.parametrize(
    "selected",
    [("random",), ("random", "same_class"), ("same_class",), ("other_class",), ("random", "other_class")],
    ids="+".join,
)
def test_chained_runs_its_chain_only_up_to_the_last_selected_scheme(data, selected):
    """A -> B -> A -> C -> A is cut after the fit on A that the last selected scheme reports: no stage, fit or
    member-epoch beyond it is run."""
    order = ("random", "same_class", "other_class")
    stages = {"random": 1, "same_class": 3, "other_class": 5}[max(selected, key=order.index)]
    epochs, n = 3, 2
    cfg = make_cfg("chained", epochs=epochs, schemes=SchemesConfig(**{s: SchemeConfig() for s in selected}))
    plan = build_plan(cfg, data, draw_triples(data.labels, n, 42))
    assert [len(m.fits) for m in plan.members] == [stages] * n
    result = run_plan(cfg, plan, CPU, max_members=2)
    rows = result.rows
    assert sorted(set(rows.stage)) == list(range(stages)) and len(rows) == n * stages * epochs
    assert result.fits == n * stages and result.members == n
    assert len(result.info["stages"]) == stages and result.info["member_epochs"] == n * stages * epochs
    reported = order[: order.index(max(selected, key=order.index)) + 1]  # the chain's fits on A up to the cut
    assert sorted(set(rows[rows.phase == "fit"].scheme)) == sorted(reported)
    assert sorted(set(result.recon["scheme"])) == sorted(reported)


def test_cell_rows_and_shared_initialisation(data):
    cfg = make_cfg(epochs=6)
    triples = draw_triples(data.labels, 2, 42)
    result = run_plan(cfg, build_plan(cfg, data, triples), CPU, max_members=4)
    rows = result.rows
    assert len(rows) == (3 + 2) * 2 * 6  # stage 0: 3 fits per triple, stage 1: 2 pre-fit schemes' fits on A
    fits = rows[rows.phase == "fit"]
    assert fits.groupby(["scheme", "triple"]).size().eq(6).all() and len(fits) == 3 * 2 * 6
    assert rows.epoch.max() == 5 and rows.psnr.notna().all()
    assert fits[fits.scheme == "random"].prefit_index.isna().all()
    assert fits[fits.scheme == "same_class"].prefit_index.notna().all()
    # every member's first fit starts from its triple's seeded initialisation, whatever its scheme
    for (t, scheme), row in rows[(rows.epoch == 0) & (rows.stage == 0)].set_index(["triple", "scheme"]).iterrows():
        init = stack_params([init_params(2, 8, 30.0, triple_generator(cfg.seed, t))])
        target = to_signal(data.images[[row.target_index]])
        expected = (batched_forward(init, coordinate_grid(), 30.0) - target).square().mean()
        assert row.loss == pytest.approx(expected.item(), rel=1e-5), (t, scheme)
    recon = result.recon
    assert recon["recon"].shape == (6, 2, 32, 32, 3) and recon["recon"].dtype == np.uint8
    assert list(recon["epochs"]) == [0, 5]
    assert recon["triple_images"].shape == (2, 3, 32, 32, 3)
    assert np.array_equal(recon["triple_images"][0, 0], data.images[triples[0].target])
    np.testing.assert_allclose(  # the pictures' PSNR is the trajectory's
        recon["psnr"][0],
        fits[(fits.scheme == recon["scheme"][0]) & (fits.triple == recon["triple"][0])]
        .sort_values("epoch")
        .psnr.to_numpy()[[0, 5]],
        rtol=1e-6,
    )


def test_all_schemes_start_from_one_initialisation(data):
    """Fitting A from the shared init must give the same trajectory in the independent random scheme
    and the chain's first fit; the chain's later fits on A start from a model already fit to A."""
    triples = draw_triples(data.labels, 2, 42)
    ind_cfg, chain_cfg = make_cfg(epochs=30), make_cfg("chained", epochs=30)
    ind = run_plan(ind_cfg, build_plan(ind_cfg, data, triples), CPU, max_members=1).rows
    chain = run_plan(chain_cfg, build_plan(chain_cfg, data, triples), CPU, max_members=1).rows

    def fit_psnr(rows, scheme):
        sel = rows[(rows.phase == "fit") & (rows.scheme == scheme)].sort_values(["triple", "epoch"])
        return sel.psnr.to_numpy()

    np.testing.assert_array_equal(fit_psnr(ind, "random"), fit_psnr(chain, "random"))
    # the original's defect: its "same_class" fit starts where a fit on A left off, so it begins higher
    start = chain[(chain.phase == "fit") & (chain.epoch == 0)].pivot(index="triple", columns="scheme", values="psnr")
    assert (start["same_class"] > start["random"]).all()


def test_run_plan_is_reproducible(data):
    cfg = make_cfg(epochs=4)
    triples = draw_triples(data.labels, 2, 42)
    a = run_plan(cfg, build_plan(cfg, data, triples), CPU, max_members=3).rows
    b = run_plan(cfg, build_plan(cfg, data, triples), CPU, max_members=3).rows
    assert a.equals(b)


def test_a_pool_larger_than_the_images_left_names_the_key_to_lower(data):
    from prefit.config import ClassMeanConfig
    from prefit.data import DataError

    cfg = make_cfg(schemes=SchemesConfig(random=SchemeConfig(), class_mean=ClassMeanConfig(pool_size=1000)))
    triples = draw_triples(data.labels, 3, cfg.seed)
    with pytest.raises(DataError, match=r"outside the triples: lower scheme.class_mean.pool_size") as error:
        build_plan(cfg, data, triples)
    assert "\n" not in str(error.value)
