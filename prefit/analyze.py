"""Turn a sweep's trajectories into the study's curves, AUCs, paired statistics, figures and a summary.

    python -m prefit.analyze SWEEP_DIR [--out DIR] [--psnr-cap DB | analysis.psnr_cap=DB]

The module reads top to bottom as the pipeline runs: load every `psnr.parquet` below the sweep folder ->
validate it against docs/formats.md -> reduce the `fit` rows to per-epoch curves and per-fit AUCs -> pair
each scheme with `random` on the triple and test the differences -> write the tables -> draw the figures ->
write `summary.md`. Everything lands in one output folder (default `SWEEP_DIR/analysis`), each file written
atomically (a temporary file in the same folder, then a rename):

    curves.parquet   hls, hfs, protocol, scheme, epoch, mean, std, count, n_nonfinite
    auc.parquet/.csv hls, hfs, protocol, scheme, triple, target_index, target_label, prefit_index,
                     prefit_label, n_epochs, auc, [auc_capped], final_psnr, epochs_to_30db, epochs_to_40db,
                     [epochs_to_59db], n_nonfinite, diverged, saturated   ([..]: only with a PSNR cap)
    stats.parquet    hls, hfs, protocol, scheme, baseline, n, mean_diff_auc, ci_low, ci_high, p_wilcoxon,
                     n_diverged, n_saturated, [n_capped, mean_diff_auc_capped, ci_low_capped, ci_high_capped,
                     p_wilcoxon_capped]: one row per cell and scheme other than `random` (see `paired_stats`)
    figures/         auc_boxplot.png, [auc_capped_boxplot.png], paired_differences.png,
                     [paired_differences_capped.png], psnr_{hls}hls_{hfs}hfs.png per cell,
                     recon_{hls}hls_{hfs}hfs.png per cell with a recon.npz ("_{protocol}" is appended to
                     the per-cell names only when the sweep holds more than one protocol)
    summary.md       what was analysed; per cell the mean AUC per scheme, the best scheme, the paired
                     difference of each pre-fit scheme from random with its bootstrap CI and Wilcoxon p, and
                     the diverged fits; with a cap, the capped AUC beside the plain one and epochs to 30/40/59 dB

Paired statistics (stats.parquet): for every cell and scheme, the per-triple difference AUC(scheme) -
AUC(random) (same A, same initialisation), its mean, a percentile-bootstrap 95% CI of that mean (10,000
resamples from a generator seeded by BOOTSTRAP_SEED and the cell and scheme, so a cell's numbers do not
depend on which other cells are analysed with it) and the two-sided Wilcoxon signed-rank p (NaN when fewer
than 2 pairs, or all differences are 0). Pairs with a diverged member are left out and counted in
`n_diverged`, pairs with a saturated (+inf AUC) member likewise in `n_saturated`. No correction is made for
the number of cells and schemes tested.

PSNR cap (`--psnr-cap DB`, or `analysis.psnr_cap=DB` in the spelling of the project's Hydra keys; default
off): the AUC is also computed with PSNR clipped at the cap (`auc_capped`), so that precision nobody can see
stops dominating the area. 59 dB is the natural cap: it is the PSNR of 8-bit quantisation itself. Rounding
to steps of 1/255 leaves an error uniform over one step, an mse of 1/(12 x 255^2), so
PSNR = 10 log10(12 x 255^2) = 58.9 dB; a fit beyond that is better than any saved 8-bit image can show.
With a cap the AUC table also holds `epochs_to_59db`.

Non-finite PSNR is kept, never silently dropped:
  * NaN (and -inf, a loss of inf) means the fit diverged: `diverged` in the AUC table, and its AUC is NaN.
  * +inf means the loss was exactly 0, a perfect fit rather than a failure: `saturated`, and its AUC is inf.
  * Curves (mean and std over triples) are taken over the finite values only, `count` says how many and
    `n_nonfinite` how many were left out; mean AUCs and paired differences likewise use finite values only,
    and say how many they used. Figures leave non-finite values out and print how many they left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter
from scipy import stats as scipy_stats
from tqdm import tqdm

from prefit.io import atomic_write
from prefit.schema import (
    BASELINE,
    CELL_KEYS,
    MEMBER_KEYS,
    PROTOCOL_ORDER,
    PSNR_COLUMNS,
    PSNR_FILE,
    RECON_FILE,
    RUN_FILE,
    SCHEME_ORDER,
    cell_label,
    cell_stem,
)

MEMBER_INFO = ["target_index", "target_label", "prefit_index", "prefit_label"]
READ_COLUMNS = [*MEMBER_KEYS, "phase", "stage", "epoch", "psnr", *MEMBER_INFO]

THRESHOLDS_DB = (30.0, 40.0)
# The PSNR of 8-bit quantisation itself: rounding to steps of 1/255 leaves an mse of 1/(12 x 255^2), i.e.
# 10 log10(12 x 255^2) = 58.9 dB. As good as a saved image can be; the natural value of analysis.psnr_cap.
QUANTISATION_PSNR_DB = float(10 * np.log10(12 * 255**2))
CAP_THRESHOLD_DB = 59.0

# Known schemes in the order tables and legends list them, each with a fixed colour in every figure
# (the first three are the original's colours).
SCHEME_COLOURS = {
    "random": "cornflowerblue",
    "same_class": "orange",
    "other_class": "mediumseagreen",
    "class_mean": "mediumpurple",
    "multi_same": "sienna",
    "meta": "crimson",
}
SCHEME_LABELS = {
    "random": "random: fit A from a random initialisation",
    "same_class": "same_class: pre-fit on an image of A's class",
    "other_class": "other_class: pre-fit on an image of another class",
    "class_mean": "class_mean: pre-fit on the mean image of A's class",
    "multi_same": "multi_same: pre-fit on several images of A's class",
    "meta": "meta: start from a meta-learned initialisation",
}
DPI = 120

# Paired statistics (stats.parquet): percentile bootstrap of the mean paired difference, Wilcoxon signed rank.
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05  # only for wording (report, summary): "beats random" needs the CI above 0 and p < ALPHA
STATS_COLUMNS = [
    "hls", "hfs", "protocol", "scheme", "baseline", "n", "mean_diff_auc", "ci_low", "ci_high", "p_wilcoxon",
    "n_diverged", "n_saturated",
]  # fmt: skip
CAPPED_STATS_COLUMNS = ["n_capped", "mean_diff_auc_capped", "ci_low_capped", "ci_high_capped", "p_wilcoxon_capped"]
OVERRIDE_PATTERN = re.compile(r"\+?[A-Za-z_]\w*(\.\w+)+=.*")  # a Hydra-style key=value, e.g. analysis.psnr_cap=59
OVERRIDE_KEYS = ("analysis.psnr_cap",)
DEFAULT_BOX_TITLE = "Area under each fit's PSNR-vs-epoch curve"
METRIC_NAMES = {"auc": "AUC", "auc_capped": "capped AUC"}


class AnalysisError(Exception):
    """Input the analysis cannot use; the message is one line and names the offending file."""


# ----------------------------------------------------------------------------------------------- load


@dataclass
class Sweep:
    """What was read from a sweep folder: the fit rows of every job, and where each job's files are."""

    root: Path
    files: list[Path]
    fits: pd.DataFrame  # MEMBER_KEYS + epoch + psnr, sorted, one row per member and epoch
    members: pd.DataFrame  # MEMBER_KEYS + MEMBER_INFO, one row per member
    recon_files: dict[tuple[int, int, str], Path] = field(default_factory=dict)
    runs: dict[Path, dict | None] = field(default_factory=dict)  # job folder -> run.json (None: unreadable)
    job_cells: dict[Path, tuple[int, int, str]] = field(default_factory=dict)  # job folder -> (hls, hfs, protocol)


def find_psnr_files(sweep_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every psnr.parquet below the sweep folder, in a stable order, skipping the analysis output folder."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in sorted(Path(sweep_dir).rglob(PSNR_FILE)):
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return found


def load_sweep(sweep_dir: str | os.PathLike, exclude: Path | None = None) -> Sweep:
    """Read and validate every job of the sweep; raise AnalysisError on the first file that is unusable."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such folder")
    files = find_psnr_files(root, exclude)
    if not files:
        raise AnalysisError(f"{root}: no {PSNR_FILE} found below this folder")

    fits, members, recon_files, runs, job_cells = [], [], {}, {}, {}
    owner: dict[tuple, Path] = {}  # member -> file, to catch a member written by two jobs
    for path in files:
        frame = read_fit_rows(path)
        info = frame.drop_duplicates(MEMBER_KEYS)[MEMBER_KEYS + MEMBER_INFO]
        for key in info[MEMBER_KEYS].itertuples(index=False, name=None):
            if key in owner:
                raise AnalysisError(
                    f"{path}: the fit of {_member_name(key)} is also in {owner[key]} (a job run twice?)"
                )
            owner[key] = path
        fits.append(frame[[*MEMBER_KEYS, "epoch", "psnr"]])
        members.append(info)
        hls, hfs, protocol = tuple(info[CELL_KEYS].iloc[0])
        cell = (int(hls), int(hfs), str(protocol))
        job_cells[path.parent] = cell
        if (path.parent / RECON_FILE).is_file():
            recon_files[cell] = path.parent / RECON_FILE
        runs[path.parent] = _read_run(path.parent / RUN_FILE)

    all_fits = pd.concat(fits, ignore_index=True).sort_values([*MEMBER_KEYS, "epoch"], ignore_index=True)
    all_members = pd.concat(members, ignore_index=True)
    return Sweep(root, files, all_fits, all_members, recon_files, runs, job_cells)


def _read_run(path: Path) -> dict | None:
    """run.json is informative only (the summary counts complete jobs); a missing or bad one is not fatal."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _member_name(key: tuple) -> str:
    hls, hfs, protocol, scheme, triple = key
    return f"cell {hls}x{hfs} ({protocol}), scheme {scheme}, triple {triple}"


# ------------------------------------------------------------------------------------------- validate


def _type_ok(dtype: pa.DataType, kind: str) -> bool:
    if kind in ("int64", "Int64"):
        return pa.types.is_integer(dtype) or (kind == "Int64" and pa.types.is_null(dtype))
    if kind == "float":
        return pa.types.is_floating(dtype)
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def check_schema(path: Path, schema: pa.Schema) -> None:
    """Fail on a parquet that is not a prefit psnr.parquet: a missing column or one of the wrong kind."""
    missing = [c for c in PSNR_COLUMNS if c not in schema.names]
    if missing:
        raise AnalysisError(f"{path}: not a prefit {PSNR_FILE}, missing column(s) {', '.join(missing)}")
    for name, kind in PSNR_COLUMNS.items():
        dtype = schema.field(name).type
        if not _type_ok(dtype, kind):
            raise AnalysisError(f"{path}: column {name!r} has type {dtype}, expected {kind}")


def read_fit_rows(path: Path) -> pd.DataFrame:
    """The validated `fit` rows of one psnr.parquet: exactly epochs 0..n-1 once per member.

    Should a member hold several fits of A (several `fit` stages), the last one is the one reported.
    """
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise AnalysisError(f"{path}: not a readable parquet file ({_one_line(exc)})") from None
    check_schema(path, schema)
    try:
        table = pq.read_table(path, columns=READ_COLUMNS)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise AnalysisError(f"{path}: cannot read ({_one_line(exc)})") from None
    for name in READ_COLUMNS:  # a NaN float is stored as a null by pandas: only keys must be non-null
        if PSNR_COLUMNS[name] not in ("Int64", "float") and table.column(name).null_count:
            raise AnalysisError(f"{path}: column {name!r} has null values")

    frame = table.to_pandas()
    frame = frame[frame["phase"] == "fit"]
    if frame.empty:
        raise AnalysisError(f"{path}: no rows with phase == 'fit'")
    for name in MEMBER_INFO:
        frame[name] = frame[name].astype("Int64")
    for name in ("protocol", "scheme"):
        frame[name] = frame[name].astype(str)
    frame["psnr"] = frame["psnr"].astype("float64")  # stored as float32 (computed so); sums in float64
    last = frame.groupby(MEMBER_KEYS)["stage"].transform("max")
    frame = frame[frame["stage"] == last].drop(columns=["phase", "stage"])

    dup = frame.duplicated([*MEMBER_KEYS, "epoch"])
    if dup.any():
        row = frame[dup].iloc[0]
        key = tuple(row[MEMBER_KEYS])
        raise AnalysisError(f"{path}: epoch {row['epoch']} of {_member_name(key)} appears more than once")
    span = frame.groupby(MEMBER_KEYS)["epoch"].agg(["min", "max", "size"])
    gaps = span[(span["min"] != 0) | (span["max"] != span["size"] - 1)]
    if len(gaps):
        raise AnalysisError(f"{path}: the epochs of {_member_name(gaps.index[0])} are not 0..n-1, each once")
    return frame.reset_index(drop=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _span(values: Iterable[int]) -> str:
    """`20` if all values are 20, else `min–max`."""
    values = sorted({int(v) for v in values})
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


# --------------------------------------------------------------------------------------------- reduce


def scheme_order(schemes: Iterable[str]) -> list[str]:
    """Known schemes in the study's order, then any others alphabetically."""
    present = set(schemes)
    known = [s for s in SCHEME_ORDER if s in present]
    return known + sorted(present - set(known))


def scheme_palette(schemes: Iterable[str]) -> dict[str, str]:
    """A colour per scheme, the same one in every figure; unknown schemes get unused tab10 colours."""
    ordered = scheme_order(schemes)
    spare = iter(c for c in sns.color_palette("tab10").as_hex() if c not in SCHEME_COLOURS.values())
    return {s: SCHEME_COLOURS.get(s) or next(spare, "grey") for s in ordered}


def protocol_order(protocols: Iterable[str]) -> list[str]:
    """The protocol as stated first, the original's chained one next, any others after."""
    return sorted(set(protocols), key=lambda p: (PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else 99, p))


def cell_order(cells: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Cells (hls, hfs) by model size hls*hfs ascending, ties by hls: the x order of the original AUC plot."""
    return sorted(set(cells), key=lambda c: (c[0] * c[1], c[0], c[1]))


def _sort_rows(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sort with schemes and protocols in study order rather than alphabetically."""
    ranks = {
        "scheme": {s: i for i, s in enumerate(scheme_order(frame["scheme"].unique()))},
        "protocol": {p: i for i, p in enumerate(protocol_order(frame["protocol"].unique()))},
    }
    return frame.sort_values(by, key=lambda col: col.map(ranks[col.name]) if col.name in ranks else col,
                             ignore_index=True)  # fmt: skip


def curves_table(fits: pd.DataFrame) -> pd.DataFrame:
    """Per cell, scheme and epoch: mean, std (ddof 1) and count of the finite PSNRs over triples.

    `n_nonfinite` counts the triples whose PSNR at that epoch was NaN or +-inf and so left out.
    """
    finite = fits["psnr"].where(np.isfinite(fits["psnr"]))
    grouped = fits.assign(psnr=finite).groupby([*CELL_KEYS, "scheme", "epoch"], sort=False)["psnr"]
    curves = grouped.agg(["mean", "std", "count", "size"]).reset_index()
    curves["n_nonfinite"] = (curves["size"] - curves["count"]).astype("int64")
    curves["count"] = curves["count"].astype("int64")
    curves = curves.drop(columns="size")
    return _sort_rows(curves, [*CELL_KEYS, "scheme", "epoch"])


def threshold_column(db: float) -> str:
    return f"epochs_to_{db:g}db"


def auc_table(fits: pd.DataFrame, members: pd.DataFrame, psnr_cap: float | None = None) -> pd.DataFrame:
    """One row per fit of A (cell, scheme, triple): AUC, final PSNR, epochs to thresholds, divergence.

    auc: trapezoid of PSNR over epoch index (unit spacing), NaN for a diverged fit, inf for a saturated one.
    epochs_to_XXdb: first epoch whose PSNR >= XX dB, NA if never.
    With psnr_cap: also auc_capped (PSNR clipped at the cap first, so saturation stops dominating) and
    epochs_to_59db.
    """
    thresholds = THRESHOLDS_DB + ((CAP_THRESHOLD_DB,) if psnr_cap is not None else ())
    records = []
    for key, group in fits.groupby(MEMBER_KEYS, sort=False):
        psnr = group["psnr"].to_numpy(dtype=np.float64)  # already sorted by epoch
        rec = dict(zip(MEMBER_KEYS, key, strict=True))
        rec["n_epochs"] = len(psnr)
        with np.errstate(invalid="ignore"):
            rec["auc"] = float(np.trapezoid(psnr))
            if psnr_cap is not None:
                rec["auc_capped"] = float(np.trapezoid(np.minimum(psnr, psnr_cap)))
        rec["final_psnr"] = float(psnr[-1])
        for db in thresholds:
            hits = np.flatnonzero(psnr >= db)
            rec[threshold_column(db)] = int(hits[0]) if len(hits) else pd.NA
        rec["n_nonfinite"] = int((~np.isfinite(psnr)).sum())
        rec["diverged"] = bool(np.isnan(psnr).any() or np.isneginf(psnr).any())
        rec["saturated"] = bool(np.isposinf(psnr).any())
        records.append(rec)

    auc = pd.DataFrame.from_records(records)
    for db in thresholds:
        auc[threshold_column(db)] = auc[threshold_column(db)].astype("Int64")
    auc = auc.merge(members, on=MEMBER_KEYS, how="left", validate="one_to_one")
    front = [*MEMBER_KEYS, *MEMBER_INFO, "n_epochs"]
    auc = auc[front + [c for c in auc.columns if c not in front]]
    return _sort_rows(auc, MEMBER_KEYS)


def mean_table(auc: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per cell and scheme: mean and std (ddof 1) of the finite values of metric, n_finite and n_fits."""
    value = auc[metric].astype(float)
    grouped = auc.assign(**{metric: value.where(np.isfinite(value))}).groupby([*CELL_KEYS, "scheme"])[metric]
    table = grouped.agg(["mean", "std", "count", "size"]).reset_index()
    table = table.rename(columns={"count": "n_finite", "size": "n_fits"})
    table[["n_finite", "n_fits"]] = table[["n_finite", "n_fits"]].astype("int64")
    return _sort_rows(table, [*CELL_KEYS, "scheme"])


def paired_frame(auc: pd.DataFrame, metric: str = "auc", baseline: str = BASELINE) -> pd.DataFrame:
    """One row per pair (cell, scheme, triple): the fit of a scheme and the baseline's fit of the same triple.

    A triple shares its target A and its random initialisation across schemes, so the paired difference
    removes the spread between images that dominates the raw AUCs. `diff` is metric(scheme) -
    metric(baseline), NaN when the pair is left out: `diverged` (either fit flagged diverged, or its metric NaN
    or -inf) or else `saturated` (either metric +inf, a loss of exactly 0). Triples without a baseline fit
    have no pair. An AUC table without a `diverged` column counts as having no flagged fit.
    """
    keys = [*CELL_KEYS, "triple"]
    columns = [*CELL_KEYS, "scheme", "triple", "diff", "diverged", "saturated"]
    table = auc if "diverged" in auc.columns else auc.assign(diverged=False)
    base = table.loc[table["scheme"] == baseline, [*keys, metric, "diverged"]]
    others = table.loc[table["scheme"] != baseline, [*keys, "scheme", metric, "diverged"]]
    pairs = others.merge(base, on=keys, suffixes=("", "_base"), validate="many_to_one")
    if pairs.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    value = pairs[metric].astype(float).to_numpy()
    value_base = pairs[f"{metric}_base"].astype(float).to_numpy()
    diverged = pairs["diverged"].astype(bool).to_numpy() | pairs["diverged_base"].astype(bool).to_numpy()
    for v in (value, value_base):
        diverged |= np.isnan(v) | np.isneginf(v)
    saturated = ~diverged & ~(np.isfinite(value) & np.isfinite(value_base))
    with np.errstate(invalid="ignore"):
        diff = np.where(diverged | saturated, np.nan, value - value_base)
    pairs = pairs.assign(diff=diff, diverged=diverged, saturated=saturated)
    return _sort_rows(pairs[columns], [*CELL_KEYS, "scheme", "triple"])


def paired_differences(auc: pd.DataFrame, metric: str = "auc", baseline: str = BASELINE) -> pd.DataFrame:
    """Per cell and scheme: the mean over triples of metric(scheme) - metric(baseline), matched on triple.

    Pairs left out by `paired_frame` (a non-finite side) do not count; n_pairs says how many were used and
    n_better how many favour the scheme. See `paired_stats` for the confidence interval and the test.
    """
    columns = [*CELL_KEYS, "scheme", "baseline", "mean_diff", "std_diff", "n_pairs", "n_better"]
    pairs = paired_frame(auc, metric, baseline)
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    grouped = pairs.groupby([*CELL_KEYS, "scheme"], sort=False)["diff"]
    table = grouped.agg(mean_diff="mean", std_diff="std", n_pairs="count").reset_index()
    table["n_better"] = grouped.agg(lambda d: int((d > 0).sum())).to_numpy()
    table[["n_pairs", "n_better"]] = table[["n_pairs", "n_better"]].astype("int64")
    table["baseline"] = baseline
    return _sort_rows(table[columns], [*CELL_KEYS, "scheme"])


def group_rng(seed: int, key: Sequence[object]) -> np.random.Generator:
    """A generator for one (cell, scheme): seeded by the seed and the key itself (crc32 of its text), so a
    cell's bootstrap does not depend on which other cells or schemes are analysed with it."""
    return np.random.default_rng([int(seed), *(zlib.crc32(str(k).encode()) for k in key)])


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample the differences with replacement n_resamples times and
    take the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the resampled means. NaN if empty; a
    single difference gives [d, d]. Clipped to [min, max] of the differences (rounding can step outside)."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return np.nan, np.nan
    block = max(1, 4_000_000 // len(d))  # bounded memory for any number of pairs
    means = np.concatenate([
        d[rng.integers(0, len(d), size=(min(block, n_resamples - start), len(d)))].mean(axis=1)
        for start in range(0, n_resamples, block)
    ])  # fmt: skip
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(np.clip(low, d.min(), d.max())), float(np.clip(high, d.min(), d.max()))


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


def paired_stats(
    auc: pd.DataFrame,
    metric: str = "auc",
    baseline: str = BASELINE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Per cell and scheme other than the baseline: the paired differences of metric from the baseline.

    Columns: hls, hfs, protocol, scheme, baseline, n (pairs used), mean_diff, ci_low, ci_high (percentile
    bootstrap of the mean), p_wilcoxon (two-sided signed rank), n_diverged and n_saturated (pairs left out,
    see `paired_frame`). A cell without baseline fits has no rows.
    """
    columns = [*CELL_KEYS, "scheme", "baseline", "n", "mean_diff", "ci_low", "ci_high", "p_wilcoxon",
               "n_diverged", "n_saturated"]  # fmt: skip
    pairs = paired_frame(auc, metric, baseline)
    rows = []
    for key, group in pairs.groupby([*CELL_KEYS, "scheme"], sort=False):
        d = group["diff"].dropna().to_numpy(dtype=np.float64)
        low, high = bootstrap_ci(d, group_rng(seed, key), n_resamples, confidence)
        rows.append({
            **dict(zip([*CELL_KEYS, "scheme"], key, strict=True)), "baseline": baseline, "n": len(d),
            "mean_diff": float(d.mean()) if len(d) else np.nan, "ci_low": low, "ci_high": high,
            "p_wilcoxon": wilcoxon_p(d), "n_diverged": int(group["diverged"].sum()),
            "n_saturated": int(group["saturated"].sum()),
        })  # fmt: skip
    table = pd.DataFrame.from_records(rows, columns=columns)
    ints = ["hls", "hfs", "n", "n_diverged", "n_saturated"]
    floats = ["mean_diff", "ci_low", "ci_high", "p_wilcoxon"]
    table = table.astype({**dict.fromkeys(ints, "int64"), **dict.fromkeys(floats, "float64")})
    table[["protocol", "scheme", "baseline"]] = table[["protocol", "scheme", "baseline"]].astype(str)
    return _sort_rows(table, [*CELL_KEYS, "scheme"]) if len(table) else table


def stats_table(
    auc: pd.DataFrame,
    baseline: str = BASELINE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """stats.parquet: `paired_stats` of the AUC (columns STATS_COLUMNS) and, when the AUC table holds
    `auc_capped`, of the capped AUC beside it (CAPPED_STATS_COLUMNS: n, mean_diff_auc, ci_low, ci_high and
    p_wilcoxon suffixed `_capped`; a saturated pair counts there, its capped AUC being finite)."""
    options = {"baseline": baseline, "n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    table = paired_stats(auc, "auc", **options).rename(columns={"mean_diff": "mean_diff_auc"})
    if "auc_capped" not in auc.columns:
        return table[STATS_COLUMNS]
    capped = paired_stats(auc, "auc_capped", **options)
    capped = capped.rename(columns={"n": "n_capped", "mean_diff": "mean_diff_auc_capped", "ci_low": "ci_low_capped",
                                    "ci_high": "ci_high_capped", "p_wilcoxon": "p_wilcoxon_capped"})  # fmt: skip
    table = table.merge(capped[[*CELL_KEYS, "scheme", *CAPPED_STATS_COLUMNS]], on=[*CELL_KEYS, "scheme"], how="left")
    return table[STATS_COLUMNS + CAPPED_STATS_COLUMNS]


def verdict(row: pd.Series | dict | None, suffix: str = "", alpha: float = ALPHA) -> str:
    """How a stats row reads: "better" (CI above 0 and p < alpha), "worse" (CI below 0 and p < alpha),
    "unclear" otherwise, "no data" without pairs. suffix "_capped" reads the capped columns."""
    if row is None or not row[f"n{suffix}"] or pd.isna(row[f"mean_diff_auc{suffix}"]):
        return "no data"
    p = row[f"p_wilcoxon{suffix}"]
    significant = pd.notna(p) and p < alpha
    if significant and row[f"ci_low{suffix}"] > 0:
        return "better"
    if significant and row[f"ci_high{suffix}"] < 0:
        return "worse"
    return "unclear"


# --------------------------------------------------------------------------------------- write tables


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_figure(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


# -------------------------------------------------------------------------------------------- figures


def _cell_stem(hls: int, hfs: int, protocol: str, several_protocols: bool) -> str:
    """`{hls}hls_{hfs}hfs`, as the original named its plots; the protocol is added only when needed."""
    stem = cell_stem(hls, hfs)
    return f"{stem}_{protocol}" if several_protocols else stem


def draw_cell_curves(
    ax: Axes, curves: pd.DataFrame, palette: dict[str, str], labels: dict[str, str] | None = None
) -> None:
    """Onto ax: mean PSNR per scheme over epochs with a +-1 std band, and a note of any non-finite values
    left out. labels: the legend text per scheme (default SCHEME_LABELS)."""
    labels = SCHEME_LABELS if labels is None else labels
    dropped = []
    for scheme in scheme_order(curves["scheme"].unique()):
        c = curves[curves["scheme"] == scheme]
        colour = palette[scheme]
        ax.plot(c["epoch"], c["mean"], color=colour, lw=1.5, label=labels.get(scheme, scheme))
        std = c["std"].fillna(0.0)
        ax.fill_between(c["epoch"], c["mean"] - std, c["mean"] + std, color=colour, alpha=0.2, lw=0)
        if c["n_nonfinite"].sum():
            dropped.append(f"{scheme} {int(c['n_nonfinite'].sum())}")
    if dropped:
        ax.text(
            0.01, 0.01, "non-finite PSNR values left out: " + ", ".join(dropped),
            transform=ax.transAxes, fontsize=8, color="dimgrey", va="bottom",
        )  # fmt: skip
    ax.set_xlabel("Epoch")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)


def plot_cell_curves(
    curves: pd.DataFrame, hls: int, hfs: int, n_triples: int, palette: dict[str, str], protocol: str = ""
) -> Figure:
    """Mean PSNR per scheme over epochs with a +-1 std band, for one cell (the original's per-cell plot)."""
    fig = Figure(figsize=(10, 6), dpi=DPI)
    ax = fig.subplots()
    draw_cell_curves(ax, curves, palette)
    suffix = f", {protocol} protocol" if protocol else ""
    ax.set_title(
        f"SIREN with {hls} hidden layers, {hfs} hidden features{suffix}\n"
        f"PSNR vs epoch: mean and ±1 std over {n_triples} triples"
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def plot_paired_stats(
    stats: pd.DataFrame, palette: dict[str, str], suffix: str = "", protocols: Sequence[str] | None = None,
    title: str = "Paired difference from random",
) -> Figure:  # fmt: skip
    """Per cell (x, by size) and scheme: the mean paired difference from random with its bootstrap CI as an
    error bar, one panel per protocol with a shared y axis; a dashed line at 0. suffix "_capped" plots the
    capped AUC's columns."""
    mean, low, high = f"mean_diff_auc{suffix}", f"ci_low{suffix}", f"ci_high{suffix}"
    protocols = list(protocols) if protocols is not None else protocol_order(stats["protocol"])
    cells = cell_order(zip(stats["hls"], stats["hfs"], strict=True))
    schemes = scheme_order(stats["scheme"].unique())
    n_panels = max(len(protocols), 1)
    panel_width = max(6.0, 0.3 * len(cells) * max(len(schemes), 1) + 2.0)
    side_by_side = n_panels > 1 and len(cells) < 8  # few cells: panels side by side, else stacked
    shape = (1, n_panels) if side_by_side else (n_panels, 1)
    size = (panel_width * n_panels + 1.5, 4.8) if side_by_side else (panel_width + 1.5, 4.2 * n_panels)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(*shape, squeeze=False, sharey=True).ravel()
    spread = min(0.3, 0.12 * (len(schemes) - 1))  # each cell's schemes side by side around its tick
    offsets = np.linspace(-spread, spread, len(schemes)) if len(schemes) > 1 else np.zeros(1)
    for ax, protocol in zip(axes, protocols, strict=False):
        data = stats[stats["protocol"] == protocol]
        for offset, scheme in zip(offsets, schemes, strict=True):
            rows = data[data["scheme"] == scheme].set_index(["hls", "hfs"])
            xs, ys, errs = [], [], []
            for x, cell in enumerate(cells):
                if cell in rows.index and pd.notna(rows.loc[cell, mean]):
                    r = rows.loc[cell]
                    xs.append(x + offset)
                    ys.append(r[mean])
                    errs.append((max(r[mean] - r[low], 0.0), max(r[high] - r[mean], 0.0)))
            if xs:
                ax.errorbar(xs, ys, yerr=np.array(errs).T, fmt="o", ms=4, capsize=3, lw=1,
                            color=palette.get(scheme, "grey"), label=scheme)  # fmt: skip
        ax.axhline(0.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(cells)), [cell_label(*c) for c in cells], rotation=60 if len(cells) > 8 else 0)
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.set_xlabel("cell: hidden layers x hidden features, by size")
        ax.set_title(f"{protocol} protocol", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    metric = "capped AUC" if suffix else "AUC"
    axes[0].set_ylabel(f"Δ {metric} vs random (dB·epoch)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{title}\n{metric}(scheme) − {metric}(random) per triple: mean, {CONFIDENCE:.0%} bootstrap CI",
                 fontsize=10)  # fmt: skip
    return fig


def plot_auc_boxplot(
    auc: pd.DataFrame, palette: dict[str, str], metric: str = "auc", title: str = DEFAULT_BOX_TITLE
) -> Figure:
    """Box plot of the AUC of every fit, per cell and scheme, cells ordered by hls*hfs then hls."""
    cells = cell_order(zip(auc["hls"], auc["hfs"], strict=True))
    labels = [cell_label(*c) for c in cells]
    schemes = scheme_order(auc["scheme"].unique())
    protocols = protocol_order(auc["protocol"])
    width = max(8.0, 0.12 * len(cells) * len(schemes) + 2.5)
    fig = Figure(figsize=(width, 6.5 * len(protocols)), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(len(protocols), 1, squeeze=False)[:, 0])
    for ax, protocol in zip(axes, protocols, strict=True):
        data = auc[auc["protocol"] == protocol]
        finite = data[np.isfinite(data[metric].astype(float))].assign(
            cell=lambda d: [cell_label(h, f) for h, f in zip(d["hls"], d["hfs"], strict=True)]
        )
        if len(finite):
            with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                warnings.filterwarnings("ignore", message="vert: bool", category=DeprecationWarning)
                sns.boxplot(
                    data=finite, x="cell", y=metric, hue="scheme", order=labels, hue_order=schemes,
                    palette=palette, ax=ax, fliersize=2, linewidth=0.8, width=0.8,
                )  # fmt: skip
            ax.legend(title="scheme", loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
        n_dropped = len(data) - len(finite)
        if n_dropped:
            ax.text(
                0.99, 0.01, f"{n_dropped} non-finite value(s) not shown", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="dimgrey",
            )  # fmt: skip
        for tick in ax.get_xticklabels():
            tick.set_rotation(60)
            tick.set_ha("right")
            tick.set_rotation_mode("anchor")
        ax.set_xlabel("cell: hidden layers x hidden features, by size (hls·hfs)")
        ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (dB·epoch)")
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.grid(axis="y", alpha=0.3)
        details = f"{_span(data['n_epochs'])} epochs"
        details += f", {protocol} protocol" if len(protocols) > 1 else ""
        ax.set_title(f"{title} ({details})")
    fig.tight_layout()
    return fig


def load_recon(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a recon.npz (docs/formats.md), checked for the keys and shapes the figure needs."""
    keys = ("hls", "hfs", "epochs", "scheme", "triple", "recon", "psnr", "triple_images", "triple_indices")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in keys if k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise AnalysisError(f"{path}: not a readable npz file ({_one_line(exc)})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise AnalysisError(f"{path}: missing key(s) {', '.join(missing)}")
    n_fits, n_epochs = len(arrays["scheme"]), len(arrays["epochs"])
    if arrays["recon"].shape[:2] != (n_fits, n_epochs) or arrays["psnr"].shape != (n_fits, n_epochs):
        raise AnalysisError(f"{path}: recon/psnr shapes do not match scheme and epochs")
    if len(arrays["triple"]) != n_fits or arrays["triple_images"].ndim != 5 or arrays["triple_indices"].ndim != 2:
        raise AnalysisError(f"{path}: triple/triple_images/triple_indices shapes do not match docs/formats.md")
    return arrays


def plot_recon(
    recon: dict[str, np.ndarray], palette: dict[str, str], max_triples: int = 4, protocol: str = ""
) -> Figure:
    """Rows: a few triples. Columns: A, the same- and other-class images, then each scheme's
    reconstruction of A at each snapshot epoch, titled with its PSNR."""
    epochs = [int(e) for e in recon["epochs"]]
    schemes = scheme_order(str(s) for s in recon["scheme"])
    n_images = recon["triple_images"].shape[0]
    triples = sorted({int(t) for t in recon["triple"]} & set(range(n_images)))[:max_triples]
    pairs = zip(recon["scheme"], recon["triple"], strict=True)
    fit_of = {(str(s), int(t)): i for i, (s, t) in enumerate(pairs)}
    n_cols = 3 + len(schemes) * len(epochs)
    n_rows = max(len(triples), 1)
    height = 1.6 * n_rows + 0.5
    fig = Figure(figsize=(1.2 * n_cols + 0.3, height), dpi=DPI)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    # Fixed margins rather than a layout engine: a constrained layout of ~50 axes costs seconds per cell.
    fig.subplots_adjust(left=0.3 / (1.2 * n_cols + 0.3), right=0.995, bottom=0.02, top=1 - 0.75 / height,
                        wspace=0.08, hspace=0.42)  # fmt: skip
    names = ("A (target)", "same class", "other class")
    n_shown = min(3, recon["triple_images"].shape[1], recon["triple_indices"].shape[1])
    for row, triple in enumerate(triples):
        for col, name in enumerate(names[:n_shown]):
            ax = axes[row, col]
            ax.imshow(recon["triple_images"][triple, col])
            ax.set_title(f"{name}\n#{int(recon['triple_indices'][triple, col])}", fontsize=7)
        axes[row, 0].set_ylabel(f"triple {triple}", fontsize=8)
        col = 3
        for scheme in schemes:
            for e, epoch in enumerate(epochs):
                ax = axes[row, col]
                fit = fit_of.get((scheme, triple))
                if fit is not None:
                    ax.imshow(recon["recon"][fit, e])
                    ax.set_title(f"{scheme} @{epoch}\n{recon['psnr'][fit, e]:.1f} dB", fontsize=7,
                                 color=palette.get(scheme, "black"))  # fmt: skip
                col += 1
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Reconstructions of A, {int(recon['hls'])} hidden layers x {int(recon['hfs'])} hidden features"
        + (f", {protocol} protocol" if protocol else ""),
        fontsize=10,
        y=1 - 0.08 / height,
        va="top",
    )
    return fig


def write_figures(
    sweep: Sweep,
    curves: pd.DataFrame,
    auc: pd.DataFrame,
    figures_dir: Path,
    psnr_cap: float | None,
    stats: pd.DataFrame | None = None,
) -> list[Path]:
    """All figures: the AUC box plot(s), the paired differences (given stats with rows), then per cell its
    curves and, given a recon.npz, its reconstructions."""
    palette = scheme_palette(auc["scheme"].unique())
    several = auc["protocol"].nunique() > 1
    written = [_write_figure(plot_auc_boxplot(auc, palette), figures_dir / "auc_boxplot.png")]
    if psnr_cap is not None:
        fig = plot_auc_boxplot(auc, palette, "auc_capped", f"AUC with PSNR capped at {psnr_cap:g} dB")
        written.append(_write_figure(fig, figures_dir / "auc_capped_boxplot.png"))
    if stats is not None and len(stats):
        written.append(_write_figure(plot_paired_stats(stats, palette), figures_dir / "paired_differences.png"))
        if psnr_cap is not None and "mean_diff_auc_capped" in stats.columns:
            fig = plot_paired_stats(stats, palette, "_capped", title=f"PSNR capped at {psnr_cap:g} dB")
            written.append(_write_figure(fig, figures_dir / "paired_differences_capped.png"))

    triples = auc.groupby(CELL_KEYS)["triple"].nunique()
    keys = [
        (hls, hfs, protocol)
        for hls, hfs in cell_order(zip(auc["hls"], auc["hfs"], strict=True))
        for protocol in protocol_order(auc["protocol"])
        if (hls, hfs, protocol) in triples.index
    ]
    by_cell = dict(tuple(curves.groupby(CELL_KEYS, sort=False)))
    for hls, hfs, protocol in tqdm(keys, desc="figures", unit="cell", disable=None):
        stem = _cell_stem(hls, hfs, protocol, several)
        shown = protocol if several or protocol != "independent" else ""  # named in titles when not the default
        n_triples = int(triples[(hls, hfs, protocol)])
        fig = plot_cell_curves(by_cell[(hls, hfs, protocol)], hls, hfs, n_triples, palette, shown)
        written.append(_write_figure(fig, figures_dir / f"psnr_{stem}.png"))
        recon_path = sweep.recon_files.get((hls, hfs, protocol))
        if recon_path is None:
            continue
        try:
            recon = load_recon(recon_path)
            if (int(recon["hls"]), int(recon["hfs"])) != (hls, hfs):
                raise AnalysisError(f"{recon_path}: is for cell {int(recon['hls'])}x{int(recon['hfs'])}")
        except AnalysisError as exc:  # a reconstruction grid is a nicety: skip it, keep the analysis
            warnings.warn(f"skipping reconstruction figure: {exc}", stacklevel=2)
            continue
        fig = plot_recon(recon, palette, protocol=shown)
        written.append(_write_figure(fig, figures_dir / f"recon_{stem}.png"))
    return written


# -------------------------------------------------------------------------------------------- summary


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float, sign: bool = False) -> str:
    """Large AUCs with thousands separators, small values with 4 significant digits, missing as a dash."""
    if value is None or pd.isna(value):
        return "—"
    if not np.isfinite(value):
        return str(value)
    spec = ("+" if sign else "") + (",.0f" if abs(value) >= 1000 else ".4g")
    return format(value, spec)


def _metric_table(auc: pd.DataFrame, metric: str) -> tuple[str, pd.Series]:
    """The per-cell markdown table of one metric, and how often each scheme was best."""
    schemes = scheme_order(auc["scheme"].unique())
    protocols = protocol_order(auc["protocol"])
    means = mean_table(auc, metric).set_index([*CELL_KEYS, "scheme"])["mean"]
    paired = paired_differences(auc, metric).set_index([*CELL_KEYS, "scheme"])
    diverged = auc.groupby([*CELL_KEYS, "scheme"])["diverged"].sum()
    triples = auc.groupby(CELL_KEYS)["triple"].nunique()
    others = [s for s in schemes if s != BASELINE] if BASELINE in schemes else []

    header = ["cell"] + (["protocol"] if len(protocols) > 1 else []) + ["triples"]
    header += [f"mean {METRIC_NAMES.get(metric, metric)} {s}" for s in schemes] + ["best"]
    header += [f"Δ {s} − {BASELINE} (pairs)" for s in others]
    header += ["diverged (" + "/".join(schemes) + ")"]
    rows, best_counts = [], []
    for hls, hfs in cell_order(zip(auc["hls"], auc["hfs"], strict=True)):
        for protocol in protocols:
            cell = (hls, hfs, protocol)
            if cell not in triples.index:
                continue
            cell_means = {s: means.get((*cell, s), np.nan) for s in schemes}
            known = {s: m for s, m in cell_means.items() if pd.notna(m)}
            best = max(known, key=known.get) if known else "—"
            best_counts.append(best)
            row = [cell_label(hls, hfs)] + ([protocol] if len(protocols) > 1 else []) + [int(triples[cell])]
            row += [_fmt(cell_means[s]) for s in schemes] + [best]
            for s in others:
                if (*cell, s) in paired.index:
                    p = paired.loc[(*cell, s)]
                    row.append(f"{_fmt(p['mean_diff'], sign=True)} ({int(p['n_pairs'])})")
                else:
                    row.append("—")
            row.append("/".join(str(int(diverged.get((*cell, s), 0))) for s in schemes))
            rows.append(row)
    return markdown_table(header, rows), pd.Series(best_counts).value_counts()


def fmt_p(p: float) -> str:
    """A p-value for a table: 3 decimals, `<0.001` below that, a dash when there is none."""
    if p is None or pd.isna(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_diff_ci(row: pd.Series | dict, suffix: str = "") -> str:
    """`+1,234 [+567, +2,000]`: the mean paired difference and its CI from a stats row."""
    mean = row[f"mean_diff_auc{suffix}"]
    if pd.isna(mean):
        return "—"
    low, high = _fmt(row[f"ci_low{suffix}"], sign=True), _fmt(row[f"ci_high{suffix}"], sign=True)
    return f"{_fmt(mean, sign=True)} [{low}, {high}]"


STATS_NOTE = (
    "Δ is the mean over triples of AUC(scheme) − AUC(random), paired on the triple (same A, same "
    f"initialisation); the {CONFIDENCE:.0%} CI is a percentile bootstrap of that mean ({BOOTSTRAP_RESAMPLES:,} "
    "resamples, fixed seed); p is the two-sided Wilcoxon signed-rank test of the same differences (— with fewer "
    "than 2 pairs or all differences 0); n counts the pairs used; diverged counts the pairs left out because "
    "either fit diverged (NaN or -inf PSNR), saturated those left out because either AUC is +inf."
)


def stats_markdown(stats: pd.DataFrame, suffix: str = "", protocol_column: bool | None = None) -> str:
    """The stats table of summary.md (and the report): per cell and scheme, Δ [CI], p, n, diverged."""
    metric = "capped AUC" if suffix else "AUC"
    if protocol_column is None:
        protocol_column = stats["protocol"].nunique() > 1
    saturated = suffix == "" and bool(stats["n_saturated"].sum()) if len(stats) else False
    header = ["cell"] + (["protocol"] if protocol_column else []) + ["scheme"]
    header += [f"Δ mean {metric} [{CONFIDENCE:.0%} CI]", "p (Wilcoxon)", "n", "diverged"]
    header += ["saturated"] if saturated else []
    rows = []
    ranks = {c: i for i, c in enumerate(cell_order(zip(stats["hls"], stats["hfs"], strict=True)))}
    ordered = stats.assign(_rank=[ranks[(h, f)] for h, f in zip(stats["hls"], stats["hfs"], strict=True)])
    ordered = _sort_rows(ordered, ["_rank", "protocol", "scheme"]) if len(ordered) else ordered
    for _, r in ordered.iterrows():
        row = [cell_label(r["hls"], r["hfs"])] + ([r["protocol"]] if protocol_column else []) + [r["scheme"]]
        row += [fmt_diff_ci(r, suffix), fmt_p(r[f"p_wilcoxon{suffix}"]), int(r[f"n{suffix}"]), int(r["n_diverged"])]
        row += [int(r["n_saturated"])] if saturated else []
        rows.append(row)
    return markdown_table(header, rows)


def _multiplicity_note(stats: pd.DataFrame, suffix: str = "") -> str:
    tested = int(stats[f"p_wilcoxon{suffix}"].notna().sum()) if len(stats) else 0
    below = int((stats[f"p_wilcoxon{suffix}"] < ALPHA).sum()) if len(stats) else 0
    return (f"{below} of {tested} tests have p < {ALPHA:g}; the p-values are not corrected for multiple "
            f"comparisons (were no scheme to make any difference, about {ALPHA * tested:.1f} of {tested} would by "
            "chance alone).")  # fmt: skip


def _threshold_cell(values: pd.Series) -> str:
    """`412 (18/20)`: the median epoch over the fits that reached the threshold, and how many did."""
    reached = values.dropna()
    median = f"{reached.median():.0f}" if len(reached) else "—"
    return f"{median} ({len(reached)}/{len(values)})"


def threshold_markdown(auc: pd.DataFrame) -> str:
    """Per cell and scheme: the mean AUC beside the mean capped AUC, and the epochs to 30, 40 and 59 dB."""
    thresholds = [db for db in (*THRESHOLDS_DB, CAP_THRESHOLD_DB) if threshold_column(db) in auc.columns]
    protocols = protocol_order(auc["protocol"])
    plain = mean_table(auc, "auc").set_index([*CELL_KEYS, "scheme"])["mean"]
    capped = mean_table(auc, "auc_capped").set_index([*CELL_KEYS, "scheme"])["mean"]
    header = ["cell"] + (["protocol"] if len(protocols) > 1 else []) + ["scheme", "mean AUC", "mean capped AUC"]
    header += [f"epochs to {db:g} dB" for db in thresholds]
    groups = dict(tuple(auc.groupby([*CELL_KEYS, "scheme"], sort=False)))
    rows = []
    for hls, hfs in cell_order(zip(auc["hls"], auc["hfs"], strict=True)):
        for protocol in protocols:
            for scheme in scheme_order(auc["scheme"].unique()):
                key = (hls, hfs, protocol, scheme)
                if key not in groups:
                    continue
                row = [cell_label(hls, hfs)] + ([protocol] if len(protocols) > 1 else []) + [scheme]
                row += [_fmt(plain.get(key, np.nan)), _fmt(capped.get(key, np.nan))]
                row += [_threshold_cell(groups[key][threshold_column(db)]) for db in thresholds]
                rows.append(row)
    return markdown_table(header, rows)


def summary_markdown(
    sweep: Sweep, auc: pd.DataFrame, psnr_cap: float | None = None, stats: pd.DataFrame | None = None
) -> str:
    """A short report: what was analysed, then per cell the mean AUC per scheme and paired differences, the
    paired statistics (given stats), and with a cap the capped AUC and the epochs to 30/40/59 dB."""
    complete = sum(1 for run in sweep.runs.values() if run and run.get("status") == "complete")
    triples = auc.groupby(CELL_KEYS)["triple"].nunique()
    schemes = scheme_order(auc["scheme"].unique())
    lines = [
        f"# Analysis of `{sweep.root}`",
        "",
        f"- sweep folder: `{sweep.root.resolve()}`",
        f"- jobs: {len(sweep.files)} `{PSNR_FILE}` files ({complete} with `{RUN_FILE}` status complete)",
        f"- cells: {len(triples)} (hls {_span(auc['hls'])}, hfs {_span(auc['hfs'])}); "
        f"protocol(s): {', '.join(protocol_order(auc['protocol']))}",
        f"- triples per cell: {_span(triples)}",
        f"- epochs per fit: {_span(auc['n_epochs'])}",
        f"- schemes: {', '.join(schemes)}",
        f"- fits of A: {len(auc)}; diverged (NaN or -inf PSNR): {int(auc['diverged'].sum())}; "
        f"saturated (+inf PSNR, loss exactly 0): {int(auc['saturated'].sum())}",
        f"- PSNR cap: {'off' if psnr_cap is None else f'{psnr_cap:g} dB'}",
        "",
        "AUC is the trapezoid of PSNR (dB) over epoch index with unit spacing. Mean AUCs use the finite AUCs "
        "of a cell; Δ is the mean over triples of the per-triple difference from `random` (same A, same "
        "initialisation), over the pairs where both AUCs are finite, their number in parentheses.",
    ]
    metrics = ["auc"] + (["auc_capped"] if psnr_cap is not None else [])
    for metric in metrics:
        table, best = _metric_table(auc, metric)
        title = "AUC" if metric == "auc" else f"AUC with PSNR capped at {psnr_cap:g} dB"
        lines += ["", f"## {title} per cell", "", table, ""]
        lines.append("Best scheme by mean: " + ", ".join(f"{s} in {n} cell(s)" for s, n in best.items()))
    if stats is not None and len(stats):
        lines += ["", "## Paired statistics: each scheme against `random`", "", STATS_NOTE, ""]
        lines += [stats_markdown(stats), "", _multiplicity_note(stats)]
        if psnr_cap is not None and "mean_diff_auc_capped" in stats.columns:
            lines += ["", f"### The same with PSNR capped at {psnr_cap:g} dB", "", stats_markdown(stats, "_capped")]
            lines += ["", _multiplicity_note(stats, "_capped")]
    if psnr_cap is not None:
        lines += [
            "", f"## Capped AUC and epochs to {', '.join(f'{db:g}' for db in (*THRESHOLDS_DB, CAP_THRESHOLD_DB))} dB",
            "",
            f"The capped AUC clips PSNR at {psnr_cap:g} dB before integrating. {CAP_THRESHOLD_DB:g} dB is the PSNR of "
            f"8-bit quantisation itself: rounding to steps of 1/255 leaves an mse of 1/(12 x 255²), i.e. "
            f"10 log10(12 x 255²) = {QUANTISATION_PSNR_DB:.1f} dB. Epochs to a threshold: the median first epoch "
            "at or above it over the fits that reached it (how many did, of all fits, in parentheses).",
            "", threshold_markdown(auc),
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- pipeline


def analyze(
    sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None, psnr_cap: float | None = None
) -> dict[str, Path]:
    """Analyse a sweep folder end to end; returns {path relative to out: path} of every file written."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "analysis"
    if psnr_cap is not None and not np.isfinite(psnr_cap):
        raise AnalysisError(f"psnr_cap must be a finite number of dB, got {psnr_cap}")

    sweep = load_sweep(sweep_dir, exclude=out)
    curves = curves_table(sweep.fits)
    auc = auc_table(sweep.fits, sweep.members, psnr_cap)
    stats = stats_table(auc)

    written = [
        _write_parquet(curves, out / "curves.parquet"),
        _write_parquet(auc, out / "auc.parquet"),
        atomic_write(out / "auc.csv", lambda tmp: auc.to_csv(tmp, index=False)),
        _write_parquet(stats, out / "stats.parquet"),
    ]
    written += write_figures(sweep, curves, auc, out / "figures", psnr_cap, stats)
    written.append(_write_text(summary_markdown(sweep, auc, psnr_cap, stats), out / "summary.md"))
    _remove_stale_figures(out / "figures", written)
    return {path.relative_to(out).as_posix(): path for path in written}


def _remove_stale_figures(
    figures_dir: Path,
    written: list[Path],
    patterns: Sequence[str] = ("psnr_*.png", "recon_*.png", "auc_*boxplot.png", "paired_differences*.png"),
) -> None:
    """Drop figures an earlier analysis into the same folder drew and this one did not (a cell no longer in
    the sweep, a capped box plot without a cap), so the folder never mixes two analyses."""
    keep = {path.resolve() for path in written}
    for pattern in patterns:
        for path in figures_dir.glob(pattern):
            if path.resolve() not in keep:
                path.unlink()


def split_overrides(tokens: Iterable[str]) -> tuple[list[str], dict[str, float | None]]:
    """Separate Hydra-style `analysis.KEY=VALUE` overrides from the other positional arguments.

    Known keys: analysis.psnr_cap (a number of dB, or null/none/off for no cap). Raises AnalysisError on an
    unknown key or a bad value.
    """
    positional, overrides = [], {}
    for token in tokens:
        if not OVERRIDE_PATTERN.fullmatch(token):
            positional.append(token)
            continue
        key, _, value = token.partition("=")
        key = key.lstrip("+")
        if key not in OVERRIDE_KEYS:
            raise AnalysisError(f"unknown override {token!r} (known: {', '.join(k + '=...' for k in OVERRIDE_KEYS)})")
        if value.strip().lower() in ("null", "none", "off", "~", ""):
            overrides[key] = None
            continue
        try:
            overrides[key] = float(value)
        except ValueError:
            raise AnalysisError(f"{key} must be a number of dB or null, got {value!r}") from None
    return positional, overrides


def resolve_psnr_cap(flag: float | None, overrides: dict[str, float | None]) -> float | None:
    """The PSNR cap from --psnr-cap and/or analysis.psnr_cap=...; both given must agree."""
    if "analysis.psnr_cap" not in overrides:
        return flag
    value = overrides["analysis.psnr_cap"]
    if flag is not None and value != flag:
        raise AnalysisError(f"--psnr-cap {flag:g} and analysis.psnr_cap={value} disagree: give one of them")
    return value


CAP_HELP = (
    "also report the AUC with PSNR clipped at DB, and epochs to 30/40/59 dB (default: off). "
    f"59 is the natural value: the PSNR of 8-bit quantisation, 10 log10(12 x 255^2) = {QUANTISATION_PSNR_DB:.1f} dB"
)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: unusable input is one `error: ...` line on stderr and exit status 2, no traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m prefit.analyze", description="Curves, AUCs, paired statistics, figures and a summary of a "
        "prefit sweep.", epilog="Example: python -m prefit.analyze outputs/sweeps/run analysis.psnr_cap=59",
    )  # fmt: skip
    parser.add_argument("sweep_dir", help="folder searched recursively for psnr.parquet files")
    parser.add_argument("overrides", nargs="*", metavar="analysis.psnr_cap=DB",
                        help="Hydra-style spelling of --psnr-cap (null: off)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/analysis)")
    parser.add_argument("--psnr-cap", type=float, default=None, metavar="DB", help=CAP_HELP)
    args = parser.parse_intermixed_args(argv)
    try:
        positional, overrides = split_overrides([args.sweep_dir, *args.overrides])
        if len(positional) != 1:
            raise AnalysisError(f"expected one SWEEP_DIR, got {len(positional)}: {' '.join(positional)}")
        sweep_dir = Path(positional[0])
        psnr_cap = resolve_psnr_cap(args.psnr_cap, overrides)
        outputs = analyze(sweep_dir, args.out, psnr_cap)
    except (AnalysisError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else sweep_dir / "analysis"
    print(f"wrote {len(outputs)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
