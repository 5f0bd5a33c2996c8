"""prefit.analysis.groups: the study keys that set a sweep's jobs apart are typed columns of every table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_smoke_sweep
from synthetic_sweep import SCHEMES, ramp_trajectories, study_of, write_cell, write_variant_sweep

from prefit.analysis import AnalysisError, analyze, compute_analysis, load_sweep
from prefit.analysis.cli import analyze_main
from prefit.analysis.groups import categorize, group_keys, group_label, group_stem, job_keys, sort_table, varying_keys
from prefit.analysis.protocol import write_report
from prefit.analysis.robustness import compare
from prefit.schema import AUC_FILE, CURVES_FILE, STATS_FILE

LR = [{"train__lr": 1e-4}, {"train__lr": 2e-4}]
LABELS = ["train.lr=0.0001", "train.lr=0.0002"]


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """Two cells x two learning rates, analysed with the defaults."""
    sweep = write_variant_sweep(tmp_path_factory.mktemp("var") / "sweep", LR, n_triples=4, epochs=20)
    return sweep, analyze(sweep)


def test_the_keys_that_differ_become_typed_columns() -> None:
    a, b, c = Path("a"), Path("b"), Path("c")
    keys = job_keys(
        {
            a: study_of(2, 32, seed=1, train__lr=2e-4),
            b: study_of(3, 64, "chained", seed=2, train__lr=2e-4),
            c: study_of(2, 32, seed=1, train__lr=1e-4),
        }
    )
    assert list(keys.columns) == ["seed", "train.lr"]  # the cell's own keys never count
    assert keys["seed"].tolist() == [1, 2, 1] and str(keys["seed"].dtype) == "Int64"
    assert keys["train.lr"].tolist() == [2e-4, 2e-4, 1e-4] and str(keys["train.lr"].dtype) == "Float64"
    assert job_keys({a: study_of(2, 32), b: study_of(3, 64, "chained")}).columns.empty
    # null and absent are one (prefit.keys.config_diff); a key that only one study holds differs
    older = study_of(2, 32)
    older["dataset"]["resolution"] = None
    assert varying_keys([older, study_of(3, 32)]) == []
    del older["train"]["betas"]
    assert varying_keys([older, study_of(3, 32)]) == ["train.betas"]
    # a scheme without options is selected or not; no recorded study: NA
    picked = job_keys({a: study_of(2, 32, scheme__same_class=None), b: study_of(2, 32), c: None})
    assert list(picked.columns) == ["scheme.same_class"]
    assert picked["scheme.same_class"].tolist() == [False, True, False]
    lists = job_keys({a: study_of(2, 32, train__betas=[0.9, 0.99]), b: study_of(2, 32), c: None})
    assert lists["train.betas"].tolist()[:2] == ["[0.9,0.99]", "[0.9,0.999]"] and pd.isna(lists["train.betas"].iloc[2])


def test_labels_file_names_and_order() -> None:
    row = {"hls": 2, "hfs": 32, "protocol": "chained", "seed": 1, "train.lr": 2e-4}
    assert group_label(row, ["seed", "train.lr"]) == "2x32 seed=1,train.lr=0.0002" and group_label(row) == "2x32"
    assert group_stem(row, ["seed", "train.lr"]) == "2hls_32hfs_seed=1_train.lr=0.0002"
    assert group_stem(row, [], protocol=True) == "2hls_32hfs_chained"
    long = group_stem({**row, "dataset.path": "/a/b c/" + "x" * 100}, ["dataset.path"])
    assert "/" not in long and " " not in long and len(long) < 90
    assert long != group_stem({**row, "dataset.path": "/a/b c/" + "x" * 101}, ["dataset.path"])  # told apart
    frame = categorize(
        pd.DataFrame(
            {
                "hls": [2, 2, 2, 2, 3],
                "hfs": [32] * 5,
                "protocol": ["chained", "independent", "independent", "independent", "independent"],
                "train.lr": pd.array([1e-4, 1e-3, 5e-5, None, 1e-4]),
                "scheme": ["random"] * 5,
            }
        )
    )
    assert group_keys(frame) == ["hls", "hfs", "protocol", "train.lr"]
    ordered = sort_table(frame)
    assert ordered["protocol"].tolist()[:4] == ["independent"] * 3 + ["chained"]  # the study's order
    assert ordered["train.lr"].tolist()[:3] == [pd.NA, 5e-5, 1e-3]  # numbers by value, a missing value first


def test_an_lr_sweep_has_one_group_per_lr(lr_sweep: tuple[Path, dict[str, Path]]) -> None:
    sweep, outputs = lr_sweep
    out = sweep / "analysis"
    curves, auc, stats = (pd.read_parquet(out / name) for name in (CURVES_FILE, AUC_FILE, STATS_FILE))
    for frame in (curves, auc, stats):
        assert list(frame.columns[:5]) == ["hls", "hfs", "protocol", "train.lr", "scheme"]
        assert sorted(frame["train.lr"].unique()) == [1e-4, 2e-4] and frame["train.lr"].dtype.kind == "f"
    assert len(auc) == 2 * 2 * 3 * 4  # cells x lrs x schemes x triples
    first = stats[stats["measure"] == "auc"]
    assert first.groupby(["hls", "train.lr"]).size().tolist() == [2] * 4  # same_class and other_class per group
    assert first["train.lr"].tolist()[:4] == [1e-4, 1e-4, 2e-4, 2e-4] and first["delta"].notna().all()
    for kind in ("psnr", "recon"):
        for hls in (2, 3):
            for label in LABELS:
                assert f"figures/{kind}_{hls}hls_32hfs_{label}.png" in outputs
    summary = outputs["summary.md"].read_text()
    assert "`train.lr=0.0001`; `train.lr=0.0002`" in summary
    assert "| 2x32 train.lr=0.0002 | same_class |" in summary and "(of cells and variants)" in summary


def test_a_new_axis_needs_no_code_of_its_own(tmp_path: Path) -> None:
    """Any study key (here a made-up `model.family`) becomes a column, its groups labelled and drawn."""
    sweep = write_variant_sweep(tmp_path / "s", [{"model__family": "siren"}, {"model__family": "wire"}], n_triples=3)
    outputs = analyze(sweep)
    stats = pd.read_parquet(outputs["stats.parquet"])
    assert "model.family" in stats.columns and set(stats["model.family"]) == {"siren", "wire"}
    assert "figures/psnr_2hls_32hfs_model.family=wire.png" in outputs
    assert "| 3x32 model.family=siren | other_class |" in outputs["summary.md"].read_text()


def test_families_with_keys_of_their_own_analyse_as_one_sweep(tmp_path: Path) -> None:
    """A SIREN and a Fourier-feature network in one sweep: each family's own keys are null in the other's jobs, a
    value like any other (`null`), so every group is found in every table and figure; labels leave nulls out."""
    ffn = {"model__family": "ffn", "model__w0": None, "model__sigma": 5.0, "model__features": 256, "train__lr": 1e-3}
    sweep = write_variant_sweep(tmp_path / "s", [{"model__family": "siren"}, ffn], n_triples=3)
    outputs = analyze(sweep)
    stats = pd.read_parquet(outputs["stats.parquet"])
    assert set(stats["model.family"]) == {"siren", "ffn"} and set(stats["model.sigma"]) == {"5.0", "null"}
    assert len(stats.drop_duplicates(["hls", "model.family", "scheme", "measure"])) == len(stats)  # no group merged
    summary = outputs["summary.md"].read_text()
    assert "| 2x32 model.family=siren,model.w0=30.0,train.lr=0.0001 | same_class |" in summary
    assert "model.sigma=null" not in summary and "| 3x32 model.family=ffn,model.features=256," in summary
    assert any(name.startswith("figures/psnr_3hls_32hfs_model.family=ffn") for name in outputs)


def test_a_sweep_without_study_keys_has_none(tmp_path: Path) -> None:
    for hls in (2, 3):  # studies recorded, but they differ only in the cell
        traj = ramp_trajectories(2, 8, seed=hls)
        write_cell(tmp_path / "s" / f"{hls}hls_32hfs", hls, 32, traj, recon=False, study=study_of(hls, 32))
    analysis = compute_analysis(tmp_path / "s")
    for frame in (analysis.curves, analysis.auc, analysis.stats, analysis.sweep.fits, analysis.sweep.jobs):
        assert group_keys(frame) == ["hls", "hfs", "protocol"]


def test_a_job_run_twice_still_stops_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write_variant_sweep(tmp_path / "s", LR, cells=[(2, 32)], n_triples=2, epochs=6, recon=False)
    first = sweep / "2hls_32hfs,train.lr=0.0002"
    shutil.copytree(first, sweep / "2hls_32hfs,train.lr=0.0002,again")  # the same study, twice
    with pytest.raises(AnalysisError) as info:
        load_sweep(sweep)
    message = str(info.value)
    assert "\n" not in message and "a job run twice?" in message and "train.lr=0.0002" in message
    assert str(first / "psnr.parquet") in message and str(sweep / "2hls_32hfs,train.lr=0.0002,again") in message
    assert analyze_main([str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is also in" in err[0]


def test_robustness_matches_cell_and_study_keys(lr_sweep: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    sweep, _ = lr_sweep
    other = tmp_path / "other"
    shutil.copytree(sweep, other, ignore=shutil.ignore_patterns("analysis"))
    comparison = compare(compute_analysis(sweep), compute_analysis(other))
    assert [c[3] for c in comparison.cells] == [1e-4, 2e-4] * 2 and comparison.table["agree"].all()
    plain = tmp_path / "plain"
    write_cell(plain / "0", 2, 32, ramp_trajectories(4, 20), recon=False)
    with pytest.raises(AnalysisError, match="the sweeps vary different study keys"):
        compare(compute_analysis(sweep), compute_analysis(plain))


def test_the_protocol_report_refuses_study_keys_in_one_line(
    lr_sweep: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    sweep, _ = lr_sweep
    chained = tmp_path / "chained"
    traj = {(s, t): ramp_trajectories(4, 20)[(s, t)] for s in SCHEMES for t in range(4)}
    write_cell(chained / "0", 2, 32, traj, protocol="chained", recon=False)
    with pytest.raises(AnalysisError) as info:
        write_report(sweep, chained, tmp_path / "findings.md")
    message = str(info.value)
    assert "\n" not in message and str(sweep) in message and "train.lr=0.0001; train.lr=0.0002" in message


@pytest.mark.slow  # a subprocess sweep: `make test-fast` leaves it out
def test_a_real_sweep_over_the_learning_rate(cifar_dir: Path, tmp_path: Path) -> None:
    """`python -m prefit.train -m ... train.lr=1e-4,2e-4`: two jobs of one cell, analysed one group per lr."""
    out = tmp_path / "sweep"
    run_smoke_sweep(cifar_dir, out, "train.epochs=20", "dataset.n_triples=3", "train.lr=1e-4,2e-4")
    outputs = analyze(out)
    stats = pd.read_parquet(outputs["stats.parquet"])
    assert sorted(stats["train.lr"].unique()) == [1e-4, 2e-4] and len(stats) == 2 * 2 * 4
    assert {f"figures/psnr_1hls_8hfs_{label}.png" for label in LABELS} <= set(outputs)
