"""Paired statistics of every scheme against `random` and their verdicts: stats.parquet.

For every cell, scheme and measure: the per-triple difference value(scheme) - value(random) (same A, same
initialisation), its mean `delta`, a bootstrap CI of that mean (`scipy.stats.bootstrap`, percentile or BCa, 10,000
resamples from a generator seeded by BOOTSTRAP_SEED and the cell and scheme, so that a cell's numbers depend on no
other cell and a rerun repeats them) and the two-sided Wilcoxon signed-rank `p`, uncorrected for multiple tests.
The verdict: `beats` when the CI lies entirely on the favourable side of 0 (above for the AUCs, below for the
epochs to a PSNR) and p < ALPHA, `worse` when on the other side and p < ALPHA, else `unclear`; `no data` without
a usable pair.
"""

from __future__ import annotations

import inspect
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from prefit.schema import BASELINE

from .groups import group_keys, keys_text, sort_table, study_columns
from .reduce import MEASURE_BY_NAME, by, cell_flags, measures_in, paired_frame

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
CI_METHODS = ("percentile", "bca")
VERDICTS = ("beats", "worse", "unclear", "no data")
# stats.parquet after its group columns and `scheme`, one row per measure (docs/formats.md)
STATS_COLUMNS = ["measure", "baseline", "n", "delta", "ci_low", "ci_high", "p", "verdict"]
COUNT_COLUMNS = ["n_diverged", "n_saturated", "n_unreached"]
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"


def group_rng(seed: int, key: Sequence[object]) -> np.random.Generator:
    """A generator for one (cell, scheme), seeded by the seed and the key itself (crc32 of each part's text)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(str(k).encode()) for k in key)])


def rng_key(row: dict, study: Sequence[str]) -> tuple:
    """What a comparison's generator is seeded with: hls, hfs, protocol, the study keys as one text, scheme."""
    return (row["hls"], row["hfs"], row["protocol"], *([keys_text(row, study)] if study else []), row["scheme"])


def bootstrap_ci(diffs: Sequence[float], rng: np.random.Generator, method: str = CI_METHODS[0]) -> tuple[float, float]:
    """Bootstrap CI of the mean (scipy.stats.bootstrap, method percentile or bca). NaN if empty; one difference, or
    all equal, gives [d, d] (there is nothing to resample)."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0 or np.all(d == d[0]):
        return (np.nan, np.nan) if len(d) == 0 else (float(d[0]), float(d[0]))
    if method not in CI_METHODS:
        raise ValueError(f"ci method must be one of {', '.join(CI_METHODS)}, got {method!r}")
    options = {"n_resamples": BOOTSTRAP_RESAMPLES, "confidence_level": CONFIDENCE, _RNG_KEYWORD: rng}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # BCa on a handful of pairs may warn that it is degenerate
        options |= {"method": "BCa" if method == "bca" else "percentile", "batch": max(1, 4_000_000 // len(d))}
        options["vectorized"] = True
        low, high = scipy_stats.bootstrap((d,), np.mean, **options).confidence_interval
    return float(low), float(high)


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences (scipy's defaults: zeros dropped, the exact
    distribution for small samples without ties); NaN when fewer than 2 differences or all are 0."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2 or not np.any(d != 0):
        return np.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return float(scipy_stats.wilcoxon(d, alternative="two-sided").pvalue)
        except ValueError:
            return np.nan


def verdict_of(n: int, low: float, high: float, p: float, higher_is_better: bool = True) -> str:
    """The verdict of one comparison: beats, worse, unclear, or no data (see the module's docstring)."""
    if not n or pd.isna(low) or pd.isna(high):
        return "no data" if not n else "unclear"
    if pd.isna(p) or p >= ALPHA or not (low > 0 or high < 0):
        return "unclear"
    return "beats" if (low > 0) == higher_is_better else "worse"


def stats_table(auc: pd.DataFrame, ci_method: str = CI_METHODS[0], psnr_cap: float | None = None) -> pd.DataFrame:
    """stats.parquet: one row per cell, scheme but the baseline, and measure of the AUC table (in lead order): the
    group columns, scheme, STATS_COLUMNS, the pairs left out (`n_diverged`, `n_saturated`: see `paired_frame`) or
    counted with a threshold never reached (`n_unreached`), the cell's raw-AUC flag (`n_fits_over_100db`,
    `flag_raw_auc`) and the options (`ci_method`, `psnr_cap`). A cell without baseline fits has no rows."""
    keys, study, rows = [*group_keys(auc), "scheme"], study_columns(auc), []
    for m in measures_in(auc.columns):
        for key, group in by(paired_frame(auc, m.name), keys):
            row, d = dict(zip(keys, key)), group["diff"].dropna().to_numpy(dtype=np.float64)
            low, high = bootstrap_ci(d, group_rng(BOOTSTRAP_SEED, rng_key(row, study)), ci_method)
            p, delta = wilcoxon_p(d), float(d.mean()) if len(d) else np.nan
            verdict = verdict_of(len(d), low, high, p, m.higher_is_better)
            unreached = (group["unreached"] & group["diff"].notna()).sum()
            counts = [group["diverged"].sum(), group["saturated"].sum(), unreached]
            rows.append([*key, m.name, BASELINE, len(d), delta, low, high, p, verdict, *map(int, counts)])
    table = pd.DataFrame(rows, columns=[*keys, *STATS_COLUMNS, *COUNT_COLUMNS])
    floats = dict.fromkeys(["delta", "ci_low", "ci_high", "p"], "float64")
    table = table.astype({**{k: auc[k].dtype for k in keys}, **dict.fromkeys(["n", *COUNT_COLUMNS], "int64"), **floats})
    table = table.merge(cell_flags(auc), on=group_keys(auc), how="left")
    table = table.assign(ci_method=ci_method, psnr_cap=np.nan if psnr_cap is None else float(psnr_cap))
    rank = {name: i for i, name in enumerate(MEASURE_BY_NAME)}
    return sort_table(table.assign(_rank=table["measure"].map(rank)), ["_rank"]).drop(columns="_rank")
