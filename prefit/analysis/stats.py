"""Paired statistics of every scheme against `random` and the verdicts the reports read from them.

For every cell, scheme and measure (prefit.analysis.reduce.MEASURES): the per-triple difference
value(scheme) - value(random) (same A, same initialisation), its mean, a bootstrap confidence interval of
that mean (`scipy.stats.bootstrap`, percentile method by default, BCa on request; 10,000 resamples from a
generator seeded by BOOTSTRAP_SEED and the cell and scheme, so that a cell's numbers never depend on which
other cells are analysed with it, a rerun gives the same numbers, and two measures with the same differences
(a capped AUC no fit reaches the cap of) the same interval), and the two-sided Wilcoxon
signed-rank p. No correction is made for the number of cells, schemes and measures tested.

Verdict (one per measure): `beats` when the CI lies entirely on the favourable side of 0 (above for the AUCs,
below for the epochs to a PSNR: reaching it sooner) and p < ALPHA; `worse` when it lies entirely on the other
side and p < ALPHA; `unclear` otherwise; `no data` without a single usable pair.
"""

from __future__ import annotations

import inspect
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from prefit.schema import BASELINE, CELL_KEYS

from .reduce import MEASURE_BY_NAME, MEASURES, Measure, cell_flags, measures_in, paired_frame, sort_rows
from .variants import VARIANT, group_keys

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
CI_METHODS = ("percentile", "bca")
DEFAULT_CI_METHOD = "percentile"
VERDICTS = ("beats", "worse", "unclear", "no data")
STAT_COLUMNS = ["n", "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "verdict"]
# stats.parquet: the columns of the original format first (docs/formats.md), then the rest; in a sweep with
# variants `variant` follows `protocol` (`base_columns`).
BASE_COLUMNS = [
    *CELL_KEYS,
    "scheme",
    "baseline",
    "n",
    "mean_diff_auc",
    "ci_low",
    "ci_high",
    "p_wilcoxon",
    "n_diverged",
    "n_saturated",
]
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"


def base_columns(frame: pd.DataFrame) -> list[str]:
    """BASE_COLUMNS, with `variant` after `protocol` when the frame has one."""
    if VARIANT not in frame.columns:
        return list(BASE_COLUMNS)
    at = BASE_COLUMNS.index("protocol") + 1
    return [*BASE_COLUMNS[:at], VARIANT, *BASE_COLUMNS[at:]]


def group_rng(seed: int, key: Sequence[object]) -> np.random.Generator:
    """A generator for one (cell[, variant], scheme), seeded by the seed and the key itself (crc32 of its text)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(str(k).encode()) for k in key)])


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    method: str = DEFAULT_CI_METHOD,
) -> tuple[float, float]:
    """Bootstrap CI of the mean through scipy.stats.bootstrap (method percentile or bca). NaN if empty; a
    single difference, or all equal, gives [d, d] (there is nothing to resample)."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return np.nan, np.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    if method not in CI_METHODS:
        raise ValueError(f"ci method must be one of {', '.join(CI_METHODS)}, got {method!r}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # BCa on a handful of pairs may warn that it is degenerate
        result = scipy_stats.bootstrap(
            (d,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            vectorized=True,
            method="BCa" if method == "bca" else "percentile",
            batch=max(1, 4_000_000 // len(d)),
            **{_RNG_KEYWORD: rng},
        )
    low, high = result.confidence_interval
    return float(low), float(high)


def wilcoxon_p(diffs: Sequence[float] | np.ndarray) -> float:
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


def decide(n: int, low: float, high: float, p: float, higher_is_better: bool = True, alpha: float = ALPHA) -> str:
    """The verdict of one comparison: beats, worse, unclear, or no data (see the module's docstring)."""
    if not n or pd.isna(low) or pd.isna(high):
        return "no data" if not n else "unclear"
    if pd.isna(p) or p >= alpha:
        return "unclear"
    above, below = low > 0, high < 0
    if above or below:
        return "beats" if above == higher_is_better else "worse"
    return "unclear"


def paired_stats(
    auc: pd.DataFrame,
    measure: Measure | str = "auc",
    baseline: str = BASELINE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
    ci_method: str = DEFAULT_CI_METHOD,
) -> pd.DataFrame:
    """One row per cell (and variant) and scheme other than the baseline, for one measure: hls, hfs, protocol,
    [variant,] scheme, baseline, measure, n (pairs used), mean_diff, ci_low, ci_high, p_wilcoxon, verdict,
    n_diverged and n_saturated (pairs left out, see `paired_frame`), n_unreached (pairs counted with a threshold never
    reached). A cell without baseline fits has no rows."""
    m = MEASURE_BY_NAME[measure] if isinstance(measure, str) else measure
    keys = [*group_keys(auc), "scheme"]
    columns = [*keys, "baseline", "measure", *STAT_COLUMNS, "n_diverged", "n_saturated", "n_unreached"]
    rows = []
    for key, group in paired_frame(auc, m, baseline).groupby(keys, sort=False):
        d = group["diff"].dropna().to_numpy(dtype=np.float64)
        low, high = bootstrap_ci(d, group_rng(seed, key), n_resamples, confidence, ci_method)
        p = wilcoxon_p(d)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "baseline": baseline,
                "measure": m.name,
                "n": len(d),
                "mean_diff": float(d.mean()) if len(d) else np.nan,
                "ci_low": low,
                "ci_high": high,
                "p_wilcoxon": p,
                "verdict": decide(len(d), low, high, p, m.higher_is_better),
                "n_diverged": int(group["diverged"].sum()),
                "n_saturated": int(group["saturated"].sum()),
                "n_unreached": int((group["unreached"] & group["diff"].notna()).sum()),
            }
        )
    table = pd.DataFrame.from_records(rows, columns=columns)
    ints = ["hls", "hfs", "n", "n_diverged", "n_saturated", "n_unreached"]
    table = table.astype(
        {**dict.fromkeys(ints, "int64"), **dict.fromkeys(["mean_diff", "ci_low", "ci_high", "p_wilcoxon"], "float64")}
    )
    for name in ("protocol", "scheme", "baseline", "measure", "verdict", VARIANT):
        if name in table.columns:
            table[name] = table[name].astype(str)
    return sort_rows(table, keys)


def stats_long(auc: pd.DataFrame, ci_method: str = DEFAULT_CI_METHOD, **options) -> pd.DataFrame:
    """`paired_stats` of every measure the AUC table holds, stacked (one row per cell, scheme and measure),
    with each cell's raw-AUC flag (`flag_raw_auc`: a fit of the cell passes 100 dB)."""
    parts = [paired_stats(auc, m, ci_method=ci_method, **options) for m in measures_in(auc.columns)]
    long = pd.concat(parts, ignore_index=True) if parts else paired_stats(auc, "auc")
    return long.merge(cell_flags(auc), on=group_keys(auc), how="left").assign(ci_method=ci_method)


def stats_table(auc: pd.DataFrame, ci_method: str = DEFAULT_CI_METHOD, **options) -> pd.DataFrame:
    """stats.parquet, one row per cell (and variant) and scheme: the raw AUC's statistics under their original names
    (BASE_COLUMNS), then per measure n, mean_diff, ci_low, ci_high, p_wilcoxon, verdict (named by
    `Measure.col`) and for the time measures n_unreached; the raw-AUC flag; the CI method."""
    return wide(stats_long(auc, ci_method, **options))


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """A long stats table (`stats_long`) as stats.parquet's columns."""
    keys = [*group_keys(long), "scheme", "baseline"]
    raw = long[long["measure"] == "auc"]
    table = raw[[*keys, "n_diverged", "n_saturated", "flag_raw_auc", "n_fits_over_100db", "ci_method"]]
    table = table.reset_index(drop=True)
    columns = base_columns(long)
    for m in sorted(MEASURES, key=lambda m: m.name != "auc"):  # the raw AUC's verdict beside its old columns
        part = long[long["measure"] == m.name]
        if part.empty:
            continue
        stats = STAT_COLUMNS + (["n_unreached"] if m.is_time else [])
        part = part[[*keys, *stats]].rename(columns={s: m.col(s) for s in stats})
        table = table.merge(part, on=keys, how="left")
        columns += [m.col(s) for s in stats if m.col(s) not in columns]
    columns += ["flag_raw_auc", "n_fits_over_100db", "ci_method"]
    return sort_rows(table[columns], keys[:-1])


def long_from_wide(stats: pd.DataFrame) -> pd.DataFrame:
    """stats.parquet back into the long layout (one row per measure), e.g. for a report reading the file."""
    keys = [*group_keys(stats), "scheme", "baseline"]
    shared = [
        c for c in ("n_diverged", "n_saturated", "flag_raw_auc", "n_fits_over_100db", "ci_method") if c in stats.columns
    ]
    parts = []
    for m in measures_in(stats.columns):
        stats_cols = STAT_COLUMNS + (["n_unreached"] if m.is_time else [])
        present = {m.col(s): s for s in stats_cols if m.col(s) in stats.columns}
        part = stats[[*keys, *shared, *present]].rename(columns=present).assign(measure=m.name)
        if "verdict" not in part.columns:  # a stats.parquet of the earlier format
            part["verdict"] = [
                decide(r.n, r.ci_low, r.ci_high, r.p_wilcoxon, m.higher_is_better) for r in part.itertuples()
            ]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def verdict_counts(long: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, measure and scheme: in how many cells (and variants) each verdict was reached (VERDICTS)."""
    counts = long.groupby(["protocol", "measure", "scheme"])["verdict"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(VERDICTS), fill_value=0).reset_index()
    counts.columns.name = None
    counts["cells"] = counts[list(VERDICTS)].sum(axis=1) - counts["no data"]
    return counts
