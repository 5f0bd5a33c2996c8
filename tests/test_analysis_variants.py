"""prefit.analysis.variants: sweeps over keys other than hls, hfs and protocol are analysed per cell and variant."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from prefit.analysis import AnalysisError, analyse, analyze, load_sweep
from prefit.analysis.cli import analyze_main
from prefit.analysis.protocol import write_report
from prefit.analysis.robustness import compare, write_robustness_report
from prefit.analysis.variants import flatten, study_variants, variant_order, variant_suffix
from prefit.schema import AUC_FILE, CURVES_FILE, STATS_FILE

try:
    from tests.synthetic_sweep import SCHEMES, ramp_trajectories, study_of, write_cell, write_variant_sweep
except ImportError:  # tests/ is not a package: pytest puts it on sys.path itself
    from synthetic_sweep import SCHEMES, ramp_trajectories, study_of, write_cell, write_variant_sweep

LR = [{"train__lr": 1e-4}, {"train__lr": 2e-4}]
VARIANTS = ["train.lr=0.0001", "train.lr=0.0002"]


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """Two cells x two learning rates, analysed with the defaults."""
    sweep = write_variant_sweep(tmp_path_factory.mktemp("var") / "sweep", LR, n_triples=4, epochs=20)
    return sweep, analyze(sweep)


def test_variants_name_the_keys_that_differ() -> None:
    a, b, c = Path("a"), Path("b"), Path("c")
    studies = {
        a: study_of(2, 32, seed=1, train__lr=2e-4),
        b: study_of(3, 64, "chained", seed=2, train__lr=2e-4),
        c: study_of(2, 32, seed=1, train__lr=1e-4),
    }
    assert study_variants(studies) == {
        a: "seed=1,train.lr=0.0002",
        b: "seed=2,train.lr=0.0002",
        c: "seed=1,train.lr=0.0001",
    }
    # the cell's own keys never count; nothing else differs: no variants
    assert set(study_variants({a: study_of(2, 32), b: study_of(3, 64, "chained")}).values()) == {""}
    # a key only some studies hold (an earlier version's run.json) counts only if its values differ
    older = study_of(2, 32)
    del older["train"]["betas"]
    assert set(study_variants({a: older, b: study_of(3, 32), c: None}).values()) == {""}
    # the scheme selection reads as one key; no study (no run.json): no variant
    picked = study_of(2, 32, scheme__same_class=None)
    assert flatten(picked)["scheme"] == ["random", "other_class"]
    assert study_variants({a: picked, b: study_of(2, 32), c: None}) == {
        a: "scheme=[random,other_class]",
        b: "scheme=[random,same_class,other_class]",
        c: "",
    }


def test_variant_order_and_file_names() -> None:
    assert variant_order(["train.lr=0.0001", "train.lr=5e-05", "", "train.lr=0.001"]) == [
        "",
        "train.lr=5e-05",
        "train.lr=0.0001",
        "train.lr=0.001",
    ]
    assert variant_suffix("") == "" and variant_suffix("seed=1,train.lr=0.0002") == "_seed=1_train.lr=0.0002"
    long = variant_suffix("dataset.path=/a/b c/" + "x" * 100)
    assert "/" not in long and " " not in long and len(long) < 80
    assert long != variant_suffix("dataset.path=/a/b c/" + "x" * 101)  # cut, but told apart


def test_an_lr_sweep_has_one_group_per_lr(lr_sweep: tuple[Path, dict[str, Path]]) -> None:
    sweep, outputs = lr_sweep
    out = sweep / "analysis"
    curves, auc, stats = (pd.read_parquet(out / name) for name in (CURVES_FILE, AUC_FILE, STATS_FILE))
    for frame in (curves, auc, stats):
        assert list(frame.columns[:4]) == ["hls", "hfs", "protocol", "variant"]
        assert sorted(frame["variant"].unique()) == VARIANTS
    assert len(auc) == 2 * 2 * 3 * 4  # cells x lrs x schemes x triples
    assert stats.groupby(["hls", "variant"]).size().tolist() == [2] * 4  # same_class and other_class per group
    assert stats["variant"].tolist()[:4] == [VARIANTS[0], VARIANTS[0], VARIANTS[1], VARIANTS[1]]
    assert stats["mean_diff_auc"].notna().all()
    for kind in ("psnr", "recon"):
        for hls in (2, 3):
            for variant in VARIANTS:
                assert f"figures/{kind}_{hls}hls_32hfs_{variant}.png" in outputs
    summary = outputs["summary.md"].read_text()
    assert "`train.lr=0.0001`; `train.lr=0.0002`" in summary
    assert "| 2x32 train.lr=0.0002 | same_class |" in summary and "(of cells and variants)" in summary


def test_a_sweep_without_variants_has_no_variant_column(tmp_path: Path) -> None:
    for hls in (2, 3):  # studies recorded, but they differ only in the cell
        traj = ramp_trajectories(2, 8, seed=hls)
        write_cell(tmp_path / "s" / f"{hls}hls_32hfs", hls, 32, traj, recon=False, study=study_of(hls, 32))
    analysed = analyse(tmp_path / "s")
    for frame in (analysed.curves, analysed.auc, analysed.stats, analysed.sweep.fits):
        assert "variant" not in frame.columns
    assert analysed.cells() == {(2, 32, "independent"), (3, 32, "independent")}


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


def test_robustness_matches_cell_and_variant(lr_sweep: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    sweep, _ = lr_sweep
    other = tmp_path / "other"
    shutil.copytree(sweep, other, ignore=shutil.ignore_patterns("analysis"))
    comparison = compare(analyse(sweep), analyse(other))
    assert [c[3] for c in comparison.cells] == VARIANTS * 2 and comparison.table["agree"].all()
    text = write_robustness_report(sweep, other, tmp_path / "r.md")["r.md"].read_text()
    assert "2x32 train.lr=0.0002" in text


def test_the_protocol_report_refuses_variants_in_one_line(
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
    command = [
        sys.executable,
        "-m",
        "prefit.train",
        "-m",
        "+experiment=smoke",
        "model.hls=1",
        "model.hfs=8",
        "train.epochs=20",
        "dataset.n_triples=3",
        "dataset=cifar_dir",
        f"dataset.path={cifar_dir}",
        f"hydra.sweep.dir={out}",
        "hydra.launcher.n_jobs=1",
        "train.progress=false",
        "train.lr=1e-4,2e-4",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    outputs = analyze(out)
    stats = pd.read_parquet(outputs["stats.parquet"])
    assert sorted(stats["variant"].unique()) == VARIANTS and len(stats) == 2 * 2
    assert {f"figures/psnr_1hls_8hfs_{v}.png" for v in VARIANTS} <= set(outputs)
