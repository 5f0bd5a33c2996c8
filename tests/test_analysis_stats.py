"""prefit.analysis.stats: bootstrap through scipy, Wilcoxon p, verdicts per measure, stats.parquet's layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from prefit.analysis.load import load_sweep
from prefit.analysis.reduce import auc_table
from prefit.analysis.stats import (
    BASE_COLUMNS,
    bootstrap_ci,
    decide,
    group_rng,
    long_from_wide,
    paired_stats,
    stats_long,
    stats_table,
    verdict_counts,
    wilcoxon_p,
)

try:
    from tests.synthetic_sweep import ramp_trajectories, write_cell, write_synthetic_sweep
except ImportError:  # tests/ is not a package: pytest puts it on sys.path itself
    from synthetic_sweep import ramp_trajectories, write_cell, write_synthetic_sweep

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


def test_paired_stats_against_a_hand_computed_example(tmp_path: Path) -> None:
    auc = hand_computed_auc(tmp_path)
    stats = paired_stats(auc, "auc").set_index("scheme")
    assert list(stats.index) == ["same_class", "other_class", "meta"]  # study order
    other = stats.loc["other_class"]
    assert other["mean_diff"] == 3.0  # exactly: (10 - 4 + 6 + 2 + 1) / 5
    assert other["n"] == 5 and other["n_diverged"] == 1 and other["n_saturated"] == 0  # triple 5 out, counted
    assert other["p_wilcoxon"] == scipy_stats.wilcoxon(KNOWN_DIFFS).pvalue
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
    assert min(KNOWN_DIFFS) <= other["ci_low"] < other["mean_diff"] < other["ci_high"] <= max(KNOWN_DIFFS)
    assert other["verdict"] == "unclear"  # 5 pairs: the smallest two-sided p is 0.0625
    # All differences zero: no test, a degenerate interval; a single pair: no test, the interval is the pair.
    same, meta = stats.loc["same_class"], stats.loc["meta"]
    assert same["n"] == 6 and same["mean_diff"] == 0.0 and np.isnan(same["p_wilcoxon"])
    assert same["ci_low"] == same["ci_high"] == 0.0 and same["verdict"] == "unclear"
    assert meta["n"] == 1 and meta["ci_low"] == meta["ci_high"] == 8.0 and np.isnan(meta["p_wilcoxon"])
    pd.testing.assert_frame_equal(paired_stats(auc, "auc"), paired_stats(auc, "auc"))  # the same resamples


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
    assert decide(20, 1.0, 9.0, 0.01) == "beats"
    assert decide(20, 1.0, 9.0, 0.2) == "unclear"  # the CI alone is not enough
    assert decide(20, -9.0, -1.0, 0.01) == "worse"
    assert decide(20, -1.0, 9.0, 0.01) == "unclear"  # p alone is not enough
    assert decide(20, -9.0, -1.0, 0.01, higher_is_better=False) == "beats"  # fewer epochs: sooner
    assert decide(20, 1.0, 9.0, 0.01, higher_is_better=False) == "worse"
    assert decide(0, np.nan, np.nan, np.nan) == "no data"


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
    rows = paired_stats(auc, "epochs_to_30db").set_index("scheme")
    assert rows.loc["same_class", "mean_diff"] < 0 and rows.loc["same_class", "verdict"] == "beats"
    assert rows.loc["other_class", "mean_diff"] > 0 and rows.loc["other_class", "verdict"] == "worse"
    assert rows.loc["same_class", "n_unreached"] == 0
    never = {**traj, **{("random", t): np.full(40, 20.0) for t in range(8)}}
    rows = paired_stats(auc_of(tmp_path / "never", never), "epochs_to_30db").set_index("scheme")
    assert rows.loc["same_class", "verdict"] == "beats" and rows.loc["same_class", "n_unreached"] == 8


def test_stats_parquet_layout(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(
        tmp_path / "s", cells=[(2, 32), (3, 32)], n_triples=4, epochs=30, recon=False, nonfinite=True
    )
    loaded = load_sweep(sweep)
    auc = auc_table(loaded.fits, loaded.members, 59.0)
    stats = stats_table(auc)
    assert list(stats.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS  # the earlier format's columns first
    for measure in ("auc", "auc_capped", "epochs_to_30db", "epochs_to_40db"):
        assert f"verdict_{measure}" in stats.columns and f"mean_diff_{measure}" in stats.columns
    assert {"n_unreached_epochs_to_30db", "p_wilcoxon_epochs_to_40db", "flag_raw_auc", "ci_method"} <= set(stats)
    assert len(stats) == 2 * 2 and (stats["ci_method"] == "percentile").all()
    first = stats[stats["hls"] == 2].set_index("scheme")
    # nonfinite: other_class triple 0 diverged; random triple 3 saturated (+inf): out of the raw AUC only.
    assert first.loc["other_class", "n_diverged"] == 1 and first.loc["other_class", "n_saturated"] == 1
    assert first.loc["other_class", "n"] == 2 and first.loc["other_class", "n_capped"] == 3
    assert first.loc["other_class", "n_epochs_to_30db"] == 3
    assert bool(first.loc["other_class", "flag_raw_auc"]) and not stats[stats["hls"] == 3]["flag_raw_auc"].any()
    # 3x32 never reaches the cap: the capped AUC is the raw one, and the same resamples give the same interval.
    second = stats[stats["hls"] == 3]
    assert (second["ci_low"] == second["ci_low_capped"]).all() and (second["ci_high"] == second["ci_high_capped"]).all()
    for name in ("hls", "hfs", "n", "n_diverged", "n_saturated", "n_capped"):
        assert stats[name].dtype == np.int64, name
    # Back to the long layout, the same numbers.
    long = stats_long(auc)
    again = long_from_wide(stats)
    key = ["hls", "hfs", "protocol", "scheme", "measure"]
    merged = long.merge(again, on=key, suffixes=("", "_w"))
    assert len(merged) == len(long) == 4 * 4
    for column in ("n", "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "verdict"):
        pd.testing.assert_series_equal(merged[column], merged[f"{column}_w"], check_names=False)


def test_a_cells_stats_do_not_depend_on_the_other_cells(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32), (3, 32)], n_triples=5, epochs=6, recon=False)
    loaded = load_sweep(sweep)
    auc = auc_table(loaded.fits, loaded.members)
    both = stats_table(auc)
    alone = stats_table(auc[auc["hls"] == 3].reset_index(drop=True))
    pd.testing.assert_frame_equal(both[both["hls"] == 3].reset_index(drop=True), alone)


def test_verdict_counts(tmp_path: Path) -> None:
    traj = ramp_trajectories(8, 20, seed=1)
    for t in range(8):
        traj[("other_class", t)] = traj[("random", t)] + 3.0
        traj[("same_class", t)] = traj[("random", t)] - 3.0
    counts = verdict_counts(stats_long(auc_of(tmp_path / "s", traj))).set_index(["measure", "scheme"])
    assert counts.loc[("auc_capped", "other_class"), "beats"] == 1 and counts.loc[("auc", "same_class"), "worse"] == 1
    assert (counts["cells"] == 1).all()
