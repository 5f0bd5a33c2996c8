"""prefit.analyze on constructed trajectories: the numbers, the files, the figures and the errors."""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from prefit.analyze import (
    CAPPED_STATS_COLUMNS,
    QUANTISATION_PSNR_DB,
    AnalysisError,
    analyze,
    atomic_write,
    auc_table,
    bootstrap_ci,
    cell_label,
    cell_order,
    curves_table,
    load_sweep,
    main,
    markdown_table,
    paired_differences,
    paired_stats,
    plot_auc_boxplot,
    scheme_order,
    scheme_palette,
    stats_table,
    verdict,
    wilcoxon_p,
)

try:
    from tests.synthetic_sweep import ALL_SCHEMES, SCHEMES, psnr_frame, write_cell, write_synthetic_sweep
except ImportError:  # tests/ is not a package: pytest puts it on sys.path itself
    from synthetic_sweep import ALL_SCHEMES, SCHEMES, psnr_frame, write_cell, write_synthetic_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def one_cell(tmp_path: Path, trajectories: dict, hls: int = 2, hfs: int = 32, **kwargs) -> Path:
    """A sweep folder with a single job folder holding the given trajectories."""
    sweep = tmp_path / "sweep"
    write_cell(sweep / "0", hls, hfs, trajectories, recon=False, **kwargs)
    return sweep


def every_scheme(curve_of_scheme: dict[str, list[float]], n_triples: int = 1) -> dict:
    return {(s, t): np.asarray(c, dtype=float) for s, c in curve_of_scheme.items() for t in range(n_triples)}


def auc_rows(sweep: Path, psnr_cap: float | None = None) -> pd.DataFrame:
    loaded = load_sweep(sweep)
    return auc_table(loaded.fits, loaded.members, psnr_cap)


# ------------------------------------------------------------------------------------------ reductions


def test_auc_is_the_unit_spaced_trapezoid(tmp_path: Path) -> None:
    curve = [10.0, 20.0, 40.0, 30.0]  # (10+20)/2 + (20+40)/2 + (40+30)/2 = 80
    sweep = one_cell(tmp_path, every_scheme({s: curve for s in SCHEMES}))
    auc = auc_rows(sweep)
    assert len(auc) == 3
    assert auc["auc"].tolist() == [80.0, 80.0, 80.0]  # the 500 dB pre-fit rows are not counted
    assert auc["final_psnr"].tolist() == [30.0] * 3
    assert auc["n_epochs"].tolist() == [4] * 3
    assert auc["epochs_to_30db"].tolist() == [2] * 3
    assert auc["epochs_to_40db"].tolist() == [2] * 3
    assert not auc["diverged"].any() and not auc["saturated"].any()


def test_epochs_to_threshold_on_a_ramp(tmp_path: Path) -> None:
    trajectories = {
        ("random", 0): np.arange(50.0),  # reaches 30 dB at epoch 30 and 40 dB at epoch 40
        ("same_class", 0): np.arange(36.0),  # never reaches 40 dB
        ("other_class", 0): 2.0 * np.arange(40.0),  # 30 dB at 15, 40 dB at 20, 59 dB at 30
    }
    auc = auc_rows(one_cell(tmp_path, trajectories), psnr_cap=45.0).set_index("scheme")
    assert auc.loc["random", "epochs_to_30db"] == 30
    assert auc.loc["random", "epochs_to_40db"] == 40
    assert auc.loc["same_class", "epochs_to_30db"] == 30
    assert pd.isna(auc.loc["same_class", "epochs_to_40db"])
    assert auc.loc["other_class", "epochs_to_30db"] == 15
    assert auc.loc["other_class", "epochs_to_40db"] == 20
    assert auc.loc["other_class", "epochs_to_59db"] == 30
    assert pd.isna(auc.loc["random", "epochs_to_59db"])
    assert str(auc["epochs_to_30db"].dtype) == "Int64"
    # The capped AUC clips the curve at the cap before integrating.
    assert auc.loc["random", "auc_capped"] == pytest.approx(np.trapezoid(np.minimum(np.arange(50.0), 45.0)))
    assert auc.loc["random", "auc"] == pytest.approx(np.trapezoid(np.arange(50.0)))


def test_cap_columns_only_with_a_cap(tmp_path: Path) -> None:
    auc = auc_rows(one_cell(tmp_path, every_scheme({s: [1.0, 2.0] for s in SCHEMES})))
    assert "auc_capped" not in auc.columns and "epochs_to_59db" not in auc.columns


def test_curves_mean_std_count_over_two_triples(tmp_path: Path) -> None:
    trajectories = {
        ("random", 0): np.array([10.0, 20.0, 30.0]),
        ("random", 1): np.array([14.0, 22.0, np.nan]),
        ("same_class", 0): np.array([1.0, 1.0, 1.0]),
        ("same_class", 1): np.array([3.0, 3.0, 3.0]),
    }
    loaded = load_sweep(one_cell(tmp_path, trajectories))
    curves = curves_table(loaded.fits)
    assert list(curves.columns) == [
        "hls", "hfs", "protocol", "scheme", "epoch", "mean", "std", "count", "n_nonfinite",
    ]  # fmt: skip
    random_ = curves[curves["scheme"] == "random"].set_index("epoch")
    np.testing.assert_allclose(random_["mean"], [12.0, 21.0, 30.0])
    np.testing.assert_allclose(random_["std"].iloc[:2], [np.sqrt(8.0), np.sqrt(2.0)])  # ddof 1
    assert np.isnan(random_["std"].iloc[2])  # a single finite value has no spread
    assert random_["count"].tolist() == [2, 2, 1]
    assert random_["n_nonfinite"].tolist() == [0, 0, 1]
    same = curves[curves["scheme"] == "same_class"]  # pre-fit rows at 500 dB must not leak in
    np.testing.assert_allclose(same["mean"], [2.0, 2.0, 2.0])
    assert curves["scheme"].tolist()[:3] == ["random"] * 3  # study order, not alphabetical


def test_paired_difference_matched_on_triple(tmp_path: Path) -> None:
    # 3 epochs of a constant c have AUC 2c.
    trajectories = {
        ("random", 0): np.full(3, 10.0),  # 20
        ("random", 1): np.full(3, 20.0),  # 40
        ("same_class", 0): np.full(3, 13.0),  # 26: +6
        ("same_class", 1): np.full(3, 18.0),  # 36: -4   -> mean +1 over 2 pairs, 1 better
        ("other_class", 0): np.array([30.0, np.nan, 30.0]),  # diverged: its pair is left out
        ("other_class", 1): np.full(3, 25.0),  # 50: +10 -> mean +10 over 1 pair
    }
    sweep = one_cell(tmp_path, trajectories)
    paired = paired_differences(auc_rows(sweep)).set_index("scheme")
    assert paired.loc["same_class", "mean_diff"] == pytest.approx(1.0)
    assert paired.loc["same_class", "n_pairs"] == 2
    assert paired.loc["same_class", "n_better"] == 1
    assert paired.loc["same_class", "std_diff"] == pytest.approx(np.std([6.0, -4.0], ddof=1))
    # Paired on triple: +10, not the difference of the means over whatever is finite (50 - 30 = 20).
    assert paired.loc["other_class", "mean_diff"] == pytest.approx(10.0)
    assert paired.loc["other_class", "n_pairs"] == 1
    assert (paired["baseline"] == "random").all()

    outputs = analyze(sweep, tmp_path / "out")
    summary = outputs["summary.md"].read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| 2x32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(line for line in summary.splitlines() if line.startswith("| cell |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    values = dict(zip(columns, cells, strict=True))
    assert values["Δ same_class − random (pairs)"] == "+1 (2)"
    assert values["Δ other_class − random (pairs)"] == "+10 (1)"
    assert values["mean AUC random"] == "30"
    assert values["best"] == "other_class"  # mean over finite AUCs: 50
    assert values["diverged (random/same_class/other_class)"] == "0/0/1"


# ---------------------------------------------------------------------------------- paired statistics

STATS_PARQUET_COLUMNS = [
    "hls", "hfs", "protocol", "scheme", "baseline", "n", "mean_diff_auc", "ci_low", "ci_high", "p_wilcoxon",
    "n_diverged", "n_saturated",
]  # fmt: skip
KNOWN_DIFFS = [10.0, -4.0, 6.0, 2.0, 1.0]  # AUC(other_class) - AUC(random) of triples 0..4: mean exactly 3


def hand_computed_cell(tmp_path: Path) -> Path:
    """Six triples; 3 epochs of a constant c have AUC 2c, so other_class = random + d/2 differs by exactly d.

    other_class: triples 0..4 differ by KNOWN_DIFFS, triple 5 diverges (NaN). same_class: identical to random
    (all differences 0). meta: run for triple 0 only (a single pair).
    """
    traj = {}
    for t in range(6):
        base = 10.0 + 3.0 * t
        traj[("random", t)] = np.full(3, base)
        traj[("same_class", t)] = np.full(3, base)
        traj[("other_class", t)] = np.full(3, base + KNOWN_DIFFS[t] / 2) if t < 5 else np.array([base, np.nan, base])
    traj[("meta", 0)] = np.full(3, 10.0 + 4.0)  # AUC 28 vs 20: +8
    return one_cell(tmp_path, traj)


def test_paired_stats_against_a_hand_computed_example(tmp_path: Path) -> None:
    auc = auc_rows(hand_computed_cell(tmp_path))
    stats = paired_stats(auc).set_index("scheme")
    assert list(stats.index) == ["same_class", "other_class", "meta"]  # study order
    other = stats.loc["other_class"]
    assert other["mean_diff"] == 3.0  # exactly: (10 - 4 + 6 + 2 + 1) / 5
    assert other["n"] == 5 and other["n_diverged"] == 1 and other["n_saturated"] == 0  # triple 5 out, counted
    assert min(KNOWN_DIFFS) <= other["ci_low"] <= other["mean_diff"] <= other["ci_high"] <= max(KNOWN_DIFFS)
    assert other["ci_low"] < other["ci_high"]
    assert other["p_wilcoxon"] == scipy_stats.wilcoxon(KNOWN_DIFFS).pvalue
    assert other["baseline"] == "random"
    # All differences zero: no test, a degenerate interval; a single pair: no test, the interval is the pair.
    same = stats.loc["same_class"]
    assert same["n"] == 6 and same["mean_diff"] == 0.0 and np.isnan(same["p_wilcoxon"])
    assert same["ci_low"] == same["ci_high"] == 0.0
    meta = stats.loc["meta"]
    assert meta["n"] == 1 and meta["mean_diff"] == 8.0 and np.isnan(meta["p_wilcoxon"])
    assert meta["ci_low"] == meta["ci_high"] == 8.0
    # The mean and pair count agree with the plain paired differences; reruns give the same interval.
    plain = paired_differences(auc).set_index("scheme")
    assert plain.loc["other_class", "mean_diff"] == 3.0 and plain.loc["other_class", "n_pairs"] == 5
    pd.testing.assert_frame_equal(paired_stats(auc), paired_stats(auc))


def test_wilcoxon_p_edge_cases_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning/UserWarning spam from scipy
        assert np.isnan(wilcoxon_p([]))
        assert np.isnan(wilcoxon_p([5.0]))
        assert np.isnan(wilcoxon_p([0.0, 0.0, 0.0]))
        assert wilcoxon_p([0.0, 0.0, 3.0]) == pytest.approx(scipy_stats.wilcoxon([0.0, 0.0, 3.0]).pvalue)
        assert wilcoxon_p([1.0, 2.0, 3.0, -1.0, 5.0]) == scipy_stats.wilcoxon([1.0, 2.0, 3.0, -1.0, 5.0]).pvalue


def test_bootstrap_ci_matches_the_normal_approximation_on_a_large_sample() -> None:
    d = np.random.default_rng(1).normal(5.0, 2.0, 400)
    low, high = bootstrap_ci(d, np.random.default_rng(0))
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert all(np.isnan(bootstrap_ci([], np.random.default_rng(0))))


def test_a_cells_stats_do_not_depend_on_the_other_cells(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=[(2, 32), (3, 32)], n_triples=5, epochs=6, recon=False)
    auc = auc_rows(sweep)
    both = stats_table(auc)
    alone = stats_table(auc[auc["hls"] == 3].reset_index(drop=True))
    pd.testing.assert_frame_equal(both[both["hls"] == 3].reset_index(drop=True), alone)


def test_stats_parquet_columns_exact(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=[(2, 32), (3, 32)], n_triples=4, epochs=10,
                                  recon=False, nonfinite=True)  # fmt: skip
    stats = pd.read_parquet(analyze(sweep, tmp_path / "plain")["stats.parquet"])
    assert list(stats.columns) == STATS_PARQUET_COLUMNS
    assert len(stats) == 2 * 2  # cells x schemes other than random
    assert (stats["baseline"] == "random").all() and set(stats["scheme"]) == {"same_class", "other_class"}
    for name in ("hls", "hfs", "n", "n_diverged", "n_saturated"):
        assert stats[name].dtype == np.int64, name
    # With a cap: the capped columns follow; a saturated pair (+inf AUC) is left out of the plain statistics
    # but its capped AUC is finite, so it counts there.
    capped = stats_table(auc_rows(sweep, psnr_cap=59.0))  # what analyze writes with the cap
    assert list(capped.columns) == STATS_PARQUET_COLUMNS + CAPPED_STATS_COLUMNS
    assert CAPPED_STATS_COLUMNS == ["n_capped", "mean_diff_auc_capped", "ci_low_capped", "ci_high_capped",
                                    "p_wilcoxon_capped"]  # fmt: skip
    first = capped[(capped["hls"] == 2) & (capped["hfs"] == 32)].set_index("scheme")
    # nonfinite: other_class triple 0 diverged; random triple 3 saturated (it pairs with both schemes).
    assert first.loc["other_class", "n_diverged"] == 1 and first.loc["other_class", "n_saturated"] == 1
    assert first.loc["other_class", "n"] == 2 and first.loc["other_class", "n_capped"] == 3
    assert first.loc["same_class", "n_diverged"] == 0 and first.loc["same_class", "n_saturated"] == 1
    pd.testing.assert_frame_equal(capped[STATS_PARQUET_COLUMNS], stats)


def test_stats_in_the_summary(tmp_path: Path) -> None:
    outputs = analyze(hand_computed_cell(tmp_path), tmp_path / "out")
    summary = outputs["summary.md"].read_text()
    assert "## Paired statistics: each scheme against `random`" in summary
    header = next(line for line in summary.splitlines() if line.startswith("| cell | scheme | Δ mean AUC"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["cell", "scheme", "Δ mean AUC [95% CI]", "p (Wilcoxon)", "n", "diverged"]
    row = next(line for line in summary.splitlines() if line.startswith("| 2x32 | other_class | +3 ["))
    values = [c.strip() for c in row.strip("|").split("|")]
    assert values[3:] == [f"{scipy_stats.wilcoxon(KNOWN_DIFFS).pvalue:.3f}", "5", "1"]
    assert "not corrected for multiple comparisons" in summary
    stats = pd.read_parquet(outputs["stats.parquet"])
    assert stats.set_index("scheme").loc["other_class", "mean_diff_auc"] == 3.0
    check_png(outputs["figures/paired_differences.png"])


def test_verdict_wording() -> None:
    row = {"n": 20, "mean_diff_auc": 5.0, "ci_low": 1.0, "ci_high": 9.0, "p_wilcoxon": 0.01}
    assert verdict(row) == "better"
    assert verdict({**row, "p_wilcoxon": 0.2}) == "unclear"  # the CI alone is not enough
    assert verdict({**row, "mean_diff_auc": -5.0, "ci_low": -9.0, "ci_high": -1.0}) == "worse"
    assert verdict({**row, "ci_low": -1.0}) == "unclear"
    assert verdict({**row, "n": 0, "mean_diff_auc": np.nan}) == "no data" and verdict(None) == "no data"


# ----------------------------------------------------------------------------------------- PSNR cap CLI


def test_quantisation_psnr_is_59_db() -> None:
    # Rounding to steps of 1/255: error uniform over one step, mse (1/255)^2 / 12.
    steps = np.random.default_rng(0).uniform(0, 1, 200_000)
    mse = np.mean((np.round(steps * 255) / 255 - steps) ** 2)
    assert 10 * np.log10(1 / mse) == pytest.approx(QUANTISATION_PSNR_DB, abs=0.05)
    assert QUANTISATION_PSNR_DB == pytest.approx(58.92, abs=0.01)


def test_psnr_cap_in_the_hydra_spelling(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=[(2, 32)], n_triples=2, epochs=8, recon=False)
    # The override may come before the folder, and may agree with --psnr-cap.
    assert main(["analysis.psnr_cap=59", str(sweep), "--out", str(tmp_path / "a"), "--psnr-cap", "59"]) == 0
    auc = pd.read_parquet(tmp_path / "a" / "auc.parquet")
    assert {"auc_capped", "epochs_to_59db"} <= set(auc.columns)
    assert "mean_diff_auc_capped" in pd.read_parquet(tmp_path / "a" / "stats.parquet").columns
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "PSNR cap: 59 dB" in summary and "58.9 dB" in summary
    header = "| cell | scheme | mean AUC | mean capped AUC | epochs to 30 dB | epochs to 40 dB | epochs to 59 dB |"
    assert header in summary
    assert main([str(sweep), "analysis.psnr_cap=null", "--out", str(tmp_path / "c")]) == 0
    assert "auc_capped" not in pd.read_parquet(tmp_path / "c" / "auc.parquet").columns
    capsys.readouterr()
    for bad, message in [
        (["analysis.psnr_cap=abc"], "analysis.psnr_cap must be a number"),
        (["analysis.cap=59"], "unknown override 'analysis.cap=59'"),
        (["analysis.psnr_cap=59", "--psnr-cap", "50"], "disagree"),
        (["analysis.psnr_cap=inf"], "psnr_cap must be a finite number"),
    ]:
        assert main([str(sweep), *bad, "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# ------------------------------------------------------------------------------------- order and labels


def test_cells_ordered_by_size_then_hidden_layers() -> None:
    grid = [(h, f) for h in range(2, 9) for f in (32, 64, 128, 256, 512, 1024)]
    shuffled = grid[:]
    random.Random(0).shuffle(shuffled)
    order = cell_order(shuffled + shuffled[:5])  # duplicates collapse
    assert len(order) == 42
    # The x axis of the original's auc.png.
    assert [cell_label(*c) for c in order[:11]] == [
        "2x32", "3x32", "2x64", "4x32", "5x32", "3x64", "6x32", "7x32", "2x128", "4x64", "8x32",
    ]  # fmt: skip
    assert [cell_label(*c) for c in order[-3:]] == ["6x1024", "7x1024", "8x1024"]
    sizes = [h * f for h, f in order]
    assert sizes == sorted(sizes)


def test_box_plot_uses_the_cell_order(tmp_path: Path) -> None:
    cells = [(3, 64), (2, 32), (2, 128), (4, 64), (8, 32)]
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=cells, n_triples=2, epochs=5, recon=False)
    auc = auc_rows(sweep)
    fig = plot_auc_boxplot(auc, scheme_palette(auc["scheme"].unique()))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["2x32", "3x64", "2x128", "4x64", "8x32"]


def test_new_schemes_order_and_colours() -> None:
    mixed = ["meta", "zeta", "other_class", "random", "multi_same", "alpha", "class_mean", "same_class"]
    assert scheme_order(mixed) == [*ALL_SCHEMES, "alpha", "zeta"]
    palette = scheme_palette(mixed)
    assert list(palette) == scheme_order(mixed) and len(set(palette.values())) == len(mixed)
    assert scheme_palette(["meta"]) == {"meta": palette["meta"]}  # a scheme's colour never depends on the rest


def test_new_schemes_just_work(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=[(2, 32)], n_triples=2, epochs=12, new_schemes=True)
    rows = pd.read_parquet(sweep / "0" / "psnr.parquet")
    multi = rows[(rows["scheme"] == "multi_same") & (rows["triple"] == 0)]
    assert sorted(multi.groupby("stage")["phase"].first().items()) == [
        (0, "prefit"), (1, "prefit"), (2, "prefit"), (3, "fit")
    ]  # fmt: skip
    outputs = analyze(sweep, tmp_path / "out")
    auc = pd.read_parquet(outputs["auc.parquet"])
    assert auc["scheme"].drop_duplicates().tolist() == list(ALL_SCHEMES)
    assert (auc["auc"] < 500.0 * 11).all()  # only the fit of A counts, not the 500 dB pre-fit rows
    classes = auc.set_index(["scheme", "triple"])
    assert pd.isna(classes.loc[("class_mean", 1), "prefit_index"])
    assert classes.loc[("class_mean", 1), "prefit_label"] == 1  # A's class
    stats = pd.read_parquet(outputs["stats.parquet"])
    assert stats["scheme"].tolist() == list(ALL_SCHEMES[1:])
    assert (stats["n"] == 2).all()
    for name in ("figures/recon_2hls_32hfs.png", "figures/psnr_2hls_32hfs.png", "figures/paired_differences.png"):
        check_png(outputs[name])
    assert "diverged (random/same_class/other_class/class_mean/multi_same/meta)" in outputs["summary.md"].read_text()


def test_palette_is_fixed_per_scheme() -> None:
    assert scheme_palette(["other_class", "random"]) == {"random": "cornflowerblue", "other_class": "mediumseagreen"}
    with_unknown = scheme_palette(["random", "zeta", "alpha"])
    assert list(with_unknown) == ["random", "alpha", "zeta"]
    assert len(set(with_unknown.values())) == 3


def test_markdown_table_escapes_pipes() -> None:
    table = markdown_table(["a", "b"], [[1, "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


# ------------------------------------------------------------------------------------ files and figures


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, path


def test_all_outputs_written(tmp_path: Path) -> None:
    cells = [(3, 32), (2, 32)]
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=cells, n_triples=2, epochs=30, nonfinite=True)
    outputs = analyze(sweep, psnr_cap=45.0)
    out = sweep / "analysis"
    expected = {"curves.parquet", "auc.parquet", "auc.csv", "stats.parquet", "summary.md"}
    expected |= {"figures/auc_boxplot.png", "figures/auc_capped_boxplot.png"}
    expected |= {"figures/paired_differences.png", "figures/paired_differences_capped.png"}
    expected |= {f"figures/{kind}_{h}hls_{f}hfs.png" for h, f in cells for kind in ("psnr", "recon")}
    assert set(outputs) == expected
    assert all(path == out / name and path.is_file() for name, path in outputs.items())
    for name, path in outputs.items():
        if name.endswith(".png"):
            check_png(path)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporaries left behind

    auc = pd.read_parquet(out / "auc.parquet")
    assert len(auc) == 2 * 3 * 2  # cells x schemes x triples
    assert {"auc", "auc_capped", "final_psnr", "epochs_to_30db", "epochs_to_40db", "epochs_to_59db",
            "diverged", "saturated", "n_nonfinite", "target_index", "prefit_index"} <= set(auc.columns)  # fmt: skip
    csv = pd.read_csv(out / "auc.csv")
    assert len(csv) == len(auc)
    summary = (out / "summary.md").read_text()
    assert "cells: 2" in summary and "triples per cell: 2" in summary and "epochs per fit: 30" in summary
    assert "## AUC per cell" in summary and "capped at 45 dB" in summary

    # Running again (the analysis folder now exists inside the sweep) gives the same tables; without the cap,
    # the capped box plot of the first run goes, while files the analysis does not write stay.
    (out / "figures" / "notes.png").write_bytes(b"mine")
    again = analyze(sweep)
    pd.testing.assert_frame_equal(
        pd.read_parquet(again["auc.parquet"]), auc.drop(columns=["auc_capped", "epochs_to_59db"])
    )
    assert not (out / "figures" / "auc_capped_boxplot.png").exists()
    assert not (out / "figures" / "paired_differences_capped.png").exists()
    assert (out / "figures" / "notes.png").exists()
    assert {p.relative_to(out).as_posix() for p in (out / "figures").iterdir()} == {
        name for name in again if name.startswith("figures/")
    } | {"figures/notes.png"}


def test_nonfinite_psnr_kept_counted_and_plotted(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=[(2, 32)], n_triples=3, epochs=20, nonfinite=True)
    outputs = analyze(sweep, tmp_path / "out")
    auc = pd.read_parquet(outputs["auc.parquet"]).set_index(["scheme", "triple"])
    # other_class triple 0 is NaN from epoch 10: diverged, AUC NaN; random triple 2 ends at +inf: saturated.
    assert auc.loc[("other_class", 0), "diverged"]
    assert np.isnan(auc.loc[("other_class", 0), "auc"])
    assert auc.loc[("other_class", 0), "n_nonfinite"] == 10
    assert auc.loc[("random", 2), "saturated"] and not auc.loc[("random", 2), "diverged"]
    assert auc.loc[("random", 2), "auc"] == np.inf
    assert auc.loc[("random", 2), "n_nonfinite"] == 3
    assert auc["diverged"].sum() == 1 and auc["saturated"].sum() == 1

    curves = pd.read_parquet(outputs["curves.parquet"])
    assert curves["n_nonfinite"].sum() == 13
    assert np.isfinite(curves["mean"]).all()  # over the finite values
    assert (curves["count"] + curves["n_nonfinite"] == 3).all()
    for name, path in outputs.items():
        if name.endswith(".png"):
            check_png(path)
    summary = outputs["summary.md"].read_text()
    assert "diverged (NaN or -inf PSNR): 1" in summary and "saturated (+inf PSNR, loss exactly 0): 1" in summary


def test_all_nonfinite_cell_still_plots(tmp_path: Path) -> None:
    trajectories = every_scheme({s: [np.nan] * 4 for s in SCHEMES}, n_triples=2)
    outputs = analyze(one_cell(tmp_path, trajectories), tmp_path / "out")
    check_png(outputs["figures/auc_boxplot.png"])
    check_png(outputs["figures/psnr_2hls_32hfs.png"])
    assert "| 2/2/2 |" in outputs["summary.md"].read_text()


def test_two_protocols_get_separate_figures(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    traj = every_scheme({s: [10.0, 20.0, 30.0] for s in SCHEMES}, n_triples=2)
    write_cell(sweep / "a", 2, 32, traj, protocol="independent", recon=False)
    write_cell(sweep / "b", 2, 32, traj, protocol="chained", recon=False)
    outputs = analyze(sweep)
    assert {"figures/psnr_2hls_32hfs_independent.png", "figures/psnr_2hls_32hfs_chained.png"} <= set(outputs)
    auc = pd.read_parquet(outputs["auc.parquet"])
    assert auc["protocol"].drop_duplicates().tolist() == ["independent", "chained"]


def test_corrupt_recon_is_skipped_with_a_warning(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=[(2, 32), (3, 32)], n_triples=2, epochs=12)
    (sweep / "0" / "recon.npz").write_bytes(b"not an npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = analyze(sweep)
    assert any("recon.npz" in str(w.message) for w in caught)
    assert "figures/recon_2hls_32hfs.png" not in outputs
    assert "figures/recon_3hls_32hfs.png" in outputs


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"

    def fail(tmp: Path) -> None:
        tmp.write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: tmp.write_text("done"))
    assert target.read_text() == "done" and list(tmp_path.iterdir()) == [target]


# -------------------------------------------------------------------------------------------- errors


def make_broken(kind: str, root: Path) -> Path:
    """A sweep folder that cannot be analysed; returns the file the error must name (or the folder)."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        (root / "notes.txt").write_text("no parquet here")
        return root
    if kind == "missing_folder":
        return root / "nowhere"
    job = root / "0"
    job.mkdir()
    path = job / "psnr.parquet"
    if kind == "corrupt":
        path.write_bytes(b"PAR1 this is not really a parquet file")
    elif kind == "missing_columns":
        pd.DataFrame({"step": [0, 1], "value": [1.0, 2.0]}).to_parquet(path)
    elif kind == "wrong_dtype":
        frame = psnr_frame(2, 32, {("random", 0): np.arange(3.0)})
        frame.assign(psnr=frame["psnr"].astype(str)).to_parquet(path)
    elif kind == "duplicate_job":
        traj = {("random", 0): np.arange(3.0)}
        write_cell(job, 2, 32, traj, recon=False)
        write_cell(root / "1", 2, 32, traj, recon=False)
        return root / "1" / "psnr.parquet"
    elif kind == "no_fit_rows":
        frame = psnr_frame(2, 32, {("random", 0): np.arange(3.0)})
        frame.assign(phase="prefit").to_parquet(path)
    elif kind == "gap":
        frame = psnr_frame(2, 32, {("random", 0): np.arange(5.0)})
        frame[frame["epoch"] != 2].to_parquet(path)
    return path


ERROR_CASES = {
    "empty": "no psnr.parquet found",
    "missing_folder": "no such folder",
    "corrupt": "not a readable parquet file",
    "missing_columns": "missing column(s) hls, hfs",
    "wrong_dtype": "column 'psnr' has type",
    "duplicate_job": "is also in",
    "no_fit_rows": "no rows with phase == 'fit'",
    "gap": "not 0..n-1",
}


@pytest.mark.parametrize("kind", list(ERROR_CASES))
def test_unusable_input_raises_naming_the_file(tmp_path: Path, kind: str) -> None:
    named = make_broken(kind, tmp_path / "sweep")
    sweep = tmp_path / "sweep" if kind != "missing_folder" else named
    with pytest.raises(AnalysisError) as info:
        analyze(sweep)
    message = str(info.value)
    assert str(named) in message
    assert ERROR_CASES[kind] in message
    assert "\n" not in message


def test_cli_reports_one_line_and_exits_2(tmp_path: Path) -> None:
    named = make_broken("corrupt", tmp_path / "sweep")
    result = subprocess.run(
        [sys.executable, "-m", "prefit.analyze", str(tmp_path / "sweep")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and str(named) in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["empty", "missing_columns", "no_fit_rows"])
def test_main_reports_one_line_and_returns_2(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture) -> None:
    named = make_broken(kind, tmp_path / "sweep")
    assert main([str(tmp_path / "sweep")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0]


def test_cli_success(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "sweep", cells=[(2, 32)], n_triples=2, epochs=8, recon=False)
    out = tmp_path / "elsewhere"
    result = subprocess.run(
        [sys.executable, "-m", "prefit.analyze", str(sweep), "--out", str(out), "analysis.psnr_cap=50"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "auc.parquet").is_file() and (out / "figures" / "auc_capped_boxplot.png").is_file()
    assert not (sweep / "analysis").exists()
