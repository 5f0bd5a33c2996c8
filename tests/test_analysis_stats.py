"""prefit.analysis.stats: bootstrap through scipy, Wilcoxon p, verdicts per measure, stats.parquet's layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from synthetic_sweep import write_cell, write_synthetic_sweep

from prefit.analysis.load import load_sweep
from prefit.analysis.reduce import auc_table
from prefit.analysis.stats import bootstrap_ci, group_rng, stats_table, verdict_of, wilcoxon_p

KNOWN_DIFFS = [10.0, -4.0, 6.0, 2.0, 1.0]  # AUC(other_class) - AUC(random) of triples 0..4: mean exactly 3


def auc_of(folder: Path, trajectories: dict, psnr_cap: float | None = 59.0) -> pd.DataFrame:
    write_cell(folder / "0", 2, 32, trajectories, recon=False)
    loaded = load_sweep(folder)
    return auc_table(loaded.fits, loaded.members, psnr_cap)


def hand_computed_auc(tmp_path: Path) -> pd.DataFrame:
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
    traj[("meta", 0)] = np.full(3, 14.0)  # AUC 28 vs 20: +8
    return auc_of(tmp_path / "sweep", traj)


def measure_rows(auc: pd.DataFrame, measure: str) -> pd.DataFrame:
    """stats.parquet's rows of one measure, by scheme."""
    stats = stats_table(auc)
    return stats[stats["measure"] == measure].set_index("scheme")


def test_paired_stats_against_a_hand_computed_example(tmp_path: Path) -> None:
    auc = hand_computed_auc(tmp_path)
    stats = measure_rows(auc, "auc")
    assert list(stats.index) == ["same_class", "other_class", "meta"]  # study order
    other = stats.loc["other_class"]
    assert other["delta"] == 3.0  # exactly: (10 - 4 + 6 + 2 + 1) / 5
    assert other["n"] == 5 and other["n_diverged"] == 1 and other["n_saturated"] == 0  # triple 5 out, counted
    assert other["p"] == scipy_stats.wilcoxon(KNOWN_DIFFS).pvalue
    # The interval is scipy.stats.bootstrap's percentile interval, from the generator of this cell and scheme:
    # the old hand-rolled resampling drew other resamples, so the numbers moved (its bounds checks still hold).
    expected = scipy_stats.bootstrap(
        (np.array(KNOWN_DIFFS),),
        np.mean,
        n_resamples=10_000,
        method="percentile",
        rng=group_rng(0, (2, 32, "independent", "other_class")),
    )
    assert (other["ci_low"], other["ci_high"]) == pytest.approx(tuple(expected.confidence_interval), abs=1e-12)
    assert min(KNOWN_DIFFS) <= other["ci_low"] < other["delta"] < other["ci_high"] <= max(KNOWN_DIFFS)
    assert other["verdict"] == "unclear"  # 5 pairs: the smallest two-sided p is 0.0625
    # All differences zero: no test, a degenerate interval; a single pair: no test, the interval is the pair.
    same, meta = stats.loc["same_class"], stats.loc["meta"]
    assert same["n"] == 6 and same["delta"] == 0.0 and np.isnan(same["p"])
    assert same["ci_low"] == same["ci_high"] == 0.0 and same["verdict"] == "unclear"
    assert meta["n"] == 1 and meta["ci_low"] == meta["ci_high"] == 8.0 and np.isnan(meta["p"])
    pd.testing.assert_frame_equal(stats_table(auc), stats_table(auc))  # the same resamples


def test_bca_is_an_option_and_deterministic() -> None:
    d = np.random.default_rng(3).lognormal(0.0, 1.0, 30)  # skewed: BCa moves the interval
    percentile = bootstrap_ci(d, group_rng(0, ("x",)))
    bca = bootstrap_ci(d, group_rng(0, ("x",)), method="bca")
    assert bca != percentile and bca == bootstrap_ci(d, group_rng(0, ("x",)), method="bca")
    assert bca[0] < d.mean() < bca[1]
    with pytest.raises(ValueError, match="percentile, bca"):
        bootstrap_ci(d, group_rng(0, ("x",)), method="student")


def test_bootstrap_ci_matches_the_normal_approximation_on_a_large_sample() -> None:
    d = np.random.default_rng(1).normal(5.0, 2.0, 400)
    low, high = bootstrap_ci(d, np.random.default_rng(0))
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert all(np.isnan(bootstrap_ci([], np.random.default_rng(0))))


def test_wilcoxon_p_edge_cases_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(wilcoxon_p([])) and np.isnan(wilcoxon_p([5.0])) and np.isnan(wilcoxon_p([0.0, 0.0]))
        assert wilcoxon_p([0.0, 0.0, 3.0]) == pytest.approx(scipy_stats.wilcoxon([0.0, 0.0, 3.0]).pvalue)
        assert wilcoxon_p([1.0, 2.0, 3.0, -1.0, 5.0]) == scipy_stats.wilcoxon([1.0, 2.0, 3.0, -1.0, 5.0]).pvalue


def test_verdict_rule_and_direction() -> None:
    assert verdict_of(20, 1.0, 9.0, 0.01) == "beats"
    assert verdict_of(20, 1.0, 9.0, 0.2) == "unclear"  # the CI alone is not enough
    assert verdict_of(20, -9.0, -1.0, 0.01) == "worse"
    assert verdict_of(20, -1.0, 9.0, 0.01) == "unclear"  # p alone is not enough
    assert verdict_of(20, -9.0, -1.0, 0.01, higher_is_better=False) == "beats"  # fewer epochs: sooner
    assert verdict_of(20, 1.0, 9.0, 0.01, higher_is_better=False) == "worse"
    assert verdict_of(0, np.nan, np.nan, np.nan) == "no data"


def test_reaching_a_threshold_sooner_beats_random(tmp_path: Path) -> None:
    """same_class reaches 30 dB at epochs 10-17 while random never does within 40 (counted as 40); other_class
    reaches it later than random in every triple."""
    traj = {}
    for t in range(8):
        traj[("random", t)] = np.full(40, 20.0)
        traj[("same_class", t)] = np.where(np.arange(40) >= 10 + t, 31.0, 20.0)
        traj[("random", t)][25 + t % 3 :] = 31.0  # random reaches 30 dB at 25..27
        traj[("other_class", t)] = np.where(np.arange(40) >= 30 + t % 4, 31.0, 20.0)
    auc = auc_of(tmp_path / "s", traj)
    rows = measure_rows(auc, "epochs_to_30db")
    assert rows.loc["same_class", "delta"] < 0 and rows.loc["same_class", "verdict"] == "beats"
    assert rows.loc["other_class", "delta"] > 0 and rows.loc["other_class", "verdict"] == "worse"
    assert rows.loc["same_class", "n_unreached"] == 0
    never = {**traj, **{("random", t): np.full(40, 20.0) for t in range(8)}}
    rows = measure_rows(auc_of(tmp_path / "never", never), "epochs_to_30db")
    assert rows.loc["same_class", "verdict"] == "beats" and rows.loc["same_class", "n_unreached"] == 8


def test_stats_parquet_layout(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(
        tmp_path / "s", cells=[(2, 32), (3, 32)], n_triples=4, epochs=30, recon=False, nonfinite=True
    )
    loaded = load_sweep(sweep)
    auc = auc_table(loaded.fits, loaded.members, 59.0)
    stats = stats_table(auc, psnr_cap=59.0)
    assert list(stats.columns) == [
        *("hls", "hfs", "protocol", "scheme", "measure", "baseline", "n", "delta", "ci_low", "ci_high", "p"),
        *("verdict", "n_diverged", "n_saturated", "n_unreached", "n_fits_over_100db", "flag_raw_auc"),
        *("ci_method", "psnr_cap"),
    ]
    assert len(stats) == 2 * 2 * 4  # cells x schemes x measures, one row each
    first = stats[(stats["hls"] == 2) & (stats["scheme"] == "other_class")]
    assert first["measure"].tolist() == ["auc_capped", "epochs_to_30db", "epochs_to_40db", "auc"]  # lead order
    assert set(stats["verdict"]) <= {"beats", "worse", "unclear", "no data"}
    assert (stats["ci_method"] == "percentile").all() and (stats["psnr_cap"] == 59.0).all()
    first = first.set_index("measure")
    # nonfinite: other_class triple 0 diverged; random triple 3 saturated (+inf): out of the raw AUC only.
    assert (first["n_diverged"] == 1).all() and first.loc["auc", "n_saturated"] == 1
    assert first.loc["auc", "n"] == 2 and first.loc["auc_capped", "n"] == 3 and first.loc["epochs_to_30db", "n"] == 3
    assert first["flag_raw_auc"].all() and not stats[stats["hls"] == 3]["flag_raw_auc"].any()
    # 3x32 never reaches the cap: the capped AUC is the raw one, and the same resamples give the same interval.
    second = stats[stats["hls"] == 3]
    capped, raw = (second[second["measure"] == m].reset_index(drop=True) for m in ("auc_capped", "auc"))
    assert capped[["delta", "ci_low", "ci_high", "p"]].equals(raw[["delta", "ci_low", "ci_high", "p"]])
    for name in ("hls", "hfs", "n", "n_diverged", "n_saturated", "n_unreached"):
        assert stats[name].dtype == np.int64, name
    assert stats_table(auc[auc["scheme"] != "random"]).empty  # no baseline: no comparison


def test_a_cells_stats_do_not_depend_on_the_other_cells(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32), (3, 32)], n_triples=5, epochs=6, recon=False)
    loaded = load_sweep(sweep)
    auc = auc_table(loaded.fits, loaded.members, 59.0)
    both = stats_table(auc)
    alone = stats_table(auc[auc["hls"] == 3].reset_index(drop=True))
    pd.testing.assert_frame_equal(both[both["hls"] == 3].reset_index(drop=True), alone)
