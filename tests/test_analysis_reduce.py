"""prefit.analysis.reduce on constructed trajectories: AUCs, thresholds, curves, pairs and orders."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import ALL_SCHEMES, SCHEMES, write_cell

from prefit.analysis.figures import scheme_palette
from prefit.analysis.groups import categorize, cell_order, sort_table
from prefit.analysis.load import load_sweep
from prefit.analysis.reduce import (
    MEASURES,
    QUANTISATION_PSNR_DB,
    auc_table,
    cell_flags,
    curves_table,
    measure_values,
    measures_in,
    paired_differences,
    paired_frame,
)
from prefit.schema import cell_label


def auc_of(tmp_path: Path, trajectories: dict, psnr_cap: float | None = 59.0) -> pd.DataFrame:
    write_cell(tmp_path / "sweep" / "0", 2, 32, trajectories, recon=False)
    loaded = load_sweep(tmp_path / "sweep")
    return auc_table(loaded.fits, loaded.members, psnr_cap)


def test_auc_is_the_unit_spaced_trapezoid(tmp_path: Path) -> None:
    curve = np.array([10.0, 20.0, 40.0, 30.0])  # (10+20)/2 + (20+40)/2 + (40+30)/2 = 80
    auc = auc_of(tmp_path, {(s, 0): curve for s in SCHEMES})
    assert auc["auc"].tolist() == [80.0] * 3  # the 500 dB pre-fit rows are not counted
    assert auc["final_psnr"].tolist() == [30.0] * 3 and auc["max_psnr"].tolist() == [40.0] * 3
    assert auc["epochs_to_30db"].tolist() == [2] * 3 and auc["n_epochs"].tolist() == [4] * 3
    assert not auc["diverged"].any() and not auc["saturated"].any() and not auc["over_100db"].any()


def test_thresholds_cap_and_their_columns(tmp_path: Path) -> None:
    trajectories = {
        ("random", 0): np.arange(50.0),  # 30 dB at epoch 30, 40 dB at 40, never 59
        ("same_class", 0): np.arange(36.0),  # never 40 dB
        ("other_class", 0): 2.0 * np.arange(40.0),  # 30 dB at 15, 40 at 20, 59 at 30
    }
    auc = auc_of(tmp_path, trajectories, psnr_cap=45.0).set_index("scheme")
    assert auc.loc["random", "epochs_to_30db"] == 30 and auc.loc["random", "epochs_to_40db"] == 40
    assert pd.isna(auc.loc["same_class", "epochs_to_40db"]) and pd.isna(auc.loc["random", "epochs_to_59db"])
    assert auc.loc["other_class", "epochs_to_59db"] == 30 and str(auc["epochs_to_30db"].dtype) == "Int64"
    assert auc.loc["random", "auc_capped"] == pytest.approx(np.trapezoid(np.minimum(np.arange(50.0), 45.0)))
    assert auc.loc["random", "auc"] == pytest.approx(np.trapezoid(np.arange(50.0)))
    plain = auc_of(tmp_path / "b", {(s, 0): np.arange(3.0) for s in SCHEMES}, psnr_cap=None)
    assert "auc_capped" not in plain.columns and "epochs_to_59db" not in plain.columns
    assert [m.name for m in measures_in(plain.columns)] == ["epochs_to_30db", "epochs_to_40db", "auc"]


def test_the_measures_lead_with_the_capped_auc_and_time() -> None:
    assert [m.name for m in MEASURES] == ["auc_capped", "epochs_to_30db", "epochs_to_40db", "auc"]
    assert [m.higher_is_better for m in MEASURES] == [True, False, False, True]
    assert [m.suffix for m in MEASURES] == ["_capped", "_epochs_to_30db", "_epochs_to_40db", ""]  # figure names
    assert QUANTISATION_PSNR_DB == pytest.approx(58.92, abs=0.01)


def test_a_threshold_never_reached_counts_as_the_epoch_count(tmp_path: Path) -> None:
    trajectories = {("random", 0): np.full(20, 10.0), ("same_class", 0): np.arange(20.0) * 3}  # 30 dB at 10
    auc = auc_of(tmp_path, trajectories)
    values = measure_values(auc, "epochs_to_30db")
    assert values.tolist() == [20.0, 10.0]  # random never: its 20 epochs
    pairs = paired_frame(auc, "epochs_to_30db").iloc[0]
    assert pairs["diff"] == -10.0 and pairs["unreached"] and not pairs["diverged"]
    assert paired_differences(auc, "epochs_to_30db").iloc[0].tolist() == [-10.0, 1]  # delta, n_pairs


def test_fits_past_100_db_flag_their_cell(tmp_path: Path) -> None:
    trajectories = {("random", 0): np.linspace(10, 120, 30), ("same_class", 0): np.linspace(10, 50, 30)}
    auc = auc_of(tmp_path, trajectories)
    assert auc.set_index("scheme")["over_100db"].to_dict() == {"random": True, "same_class": False}
    flags = cell_flags(auc)
    assert flags[["n_fits_over_100db", "flag_raw_auc"]].values.tolist() == [[1, True]]


def test_curves_mean_std_count_over_two_triples(tmp_path: Path) -> None:
    trajectories = {
        ("random", 0): np.array([10.0, 20.0, 30.0]),
        ("random", 1): np.array([14.0, 22.0, np.nan]),
        ("same_class", 0): np.array([1.0, 1.0, 1.0]),
        ("same_class", 1): np.array([3.0, 3.0, 3.0]),
    }
    write_cell(tmp_path / "s" / "0", 2, 32, trajectories, recon=False)
    curves = curves_table(load_sweep(tmp_path / "s").fits)
    assert list(curves.columns) == ["hls", "hfs", "protocol", "scheme", "epoch", "mean", "std", "count", "n_nonfinite"]
    random_ = curves[curves["scheme"] == "random"].set_index("epoch")
    np.testing.assert_allclose(random_["mean"], [12.0, 21.0, 30.0])
    np.testing.assert_allclose(random_["std"].iloc[:2], [np.sqrt(8.0), np.sqrt(2.0)])  # ddof 1
    assert np.isnan(random_["std"].iloc[2]) and random_["count"].tolist() == [2, 2, 1]
    assert random_["n_nonfinite"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(curves[curves["scheme"] == "same_class"]["mean"], [2.0] * 3)  # no pre-fit rows
    assert curves["scheme"].tolist()[:3] == ["random"] * 3  # study order, not alphabetical


def test_paired_difference_matched_on_triple(tmp_path: Path) -> None:
    trajectories = {  # 3 epochs of a constant c have AUC 2c
        ("random", 0): np.full(3, 10.0),
        ("random", 1): np.full(3, 20.0),
        ("same_class", 0): np.full(3, 13.0),
        ("same_class", 1): np.full(3, 18.0),  # +6, -4
        ("other_class", 0): np.array([30.0, np.nan, 30.0]),
        ("other_class", 1): np.full(3, 25.0),  # out, +10
    }
    paired = paired_differences(auc_of(tmp_path, trajectories), "auc").droplevel([0, 1, 2])
    assert paired.loc["same_class", "delta"] == pytest.approx(1.0) and paired.loc["same_class", "n_pairs"] == 2
    # Paired on triple: +10, not the difference of the means over whatever is finite (50 - 30 = 20).
    assert paired.loc["other_class", "delta"] == pytest.approx(10.0) and paired.loc["other_class", "n_pairs"] == 1
    pairs = paired_frame(auc_of(tmp_path / "again", trajectories), "auc")
    assert pairs[pairs["scheme"] == "same_class"]["diff"].tolist() == [6.0, -4.0]


def test_cells_ordered_by_size_then_hidden_layers() -> None:
    grid = [(h, f) for h in range(2, 9) for f in (32, 64, 128, 256, 512, 1024)]
    shuffled = grid[:]
    random.Random(0).shuffle(shuffled)
    order = cell_order(shuffled + shuffled[:5])
    assert len(order) == 42
    assert [cell_label(*c) for c in order[:11]] == [
        "2x32",
        "3x32",
        "2x64",
        "4x32",
        "5x32",
        "3x64",
        "6x32",
        "7x32",
        "2x128",
        "4x64",
        "8x32",
    ]
    assert [cell_label(*c) for c in order[-3:]] == ["6x1024", "7x1024", "8x1024"]


def test_rows_sort_through_the_schema_orders() -> None:
    frame = pd.DataFrame(
        {
            "hls": [2, 3, 2, 2, 2],
            "hfs": [64, 32, 32, 32, 32],
            "protocol": ["independent", "independent", "chained", "independent", "independent"],
            "scheme": ["random", "random", "random", "zeta", "meta"],
        }
    )
    rows = sort_table(categorize(frame))
    got = list(zip(rows["hls"], rows["hfs"], rows["protocol"], rows["scheme"]))
    assert got == [
        (2, 32, "independent", "meta"),
        (2, 32, "independent", "zeta"),
        (2, 32, "chained", "random"),
        (3, 32, "independent", "random"),
        (2, 64, "independent", "random"),
    ]
    assert rows["scheme"].cat.ordered  # ordered categoricals: every sort follows the study's order
    mixed = ["meta", "zeta", "other_class", "random", "multi_same", "alpha", "class_mean", "same_class"]
    assert list(categorize(pd.DataFrame({"scheme": mixed}))["scheme"].cat.categories) == [*ALL_SCHEMES, "alpha", "zeta"]
    assert list(scheme_palette(mixed)) == [*ALL_SCHEMES, "alpha", "zeta"]
