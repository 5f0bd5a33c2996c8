"""Reductions of the fit trajectories: per-epoch curves, one row per fit (AUC, capped AUC, time to PSNR), pairs.

The study's measures (`MEASURES`), in the order every table and report leads with them:

  * `auc_capped`: the trapezoid of PSNR clipped at `analysis.psnr_cap` (default 59 dB, the PSNR of 8-bit
    quantisation: rounding to steps of 1/255 leaves an mse of 1/(12 x 255^2), 10 log10(12 x 255^2) = 58.9 dB),
    so that precision no stored image shows stops dominating the area. Higher is better.
  * `epochs_to_30db`, `epochs_to_40db`: the first epoch at or above the threshold. Fewer is better. A fit that
    never reaches the threshold counts as the number of epochs it ran (one past its last epoch): it reached
    the threshold no sooner than that, so the paired difference it enters is a bound on the true one, and a
    scheme that reaches 30 dB in every triple while random never does still shows as faster.
  * `auc`: the original study's measure, the trapezoid of the raw PSNR over epoch (unit spacing). Kept for
    comparison; flagged wherever a fit passes RAW_AUC_FLAG_DB, where it mostly measures float precision.

Every reduction groups by cell (hls, hfs, protocol) and, in a sweep with variants, by variant too
(prefit.analysis.variants.group_keys): "cell" below means that group.

Non-finite PSNR is kept, never silently dropped: NaN or -inf means the fit diverged (`diverged`, AUC NaN);
+inf means the loss was exactly 0 (`saturated`, AUC inf). Curves use the finite values and count the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prefit.schema import BASELINE, PROTOCOL_ORDER, SCHEME_ORDER, cell_label, ordered

from .load import MEMBER_INFO
from .variants import VARIANT, group_keys, group_label, member_keys, variant_order, with_variant

THRESHOLDS_DB = (30.0, 40.0)
QUANTISATION_PSNR_DB = float(10 * np.log10(12 * 255**2))  # 58.9 dB: 8-bit quantisation itself
CAP_THRESHOLD_DB = 59.0  # epochs to this are reported beside the cap
DEFAULT_PSNR_CAP = 59.0  # analysis.psnr_cap's default
RAW_AUC_FLAG_DB = 100.0  # a fit past this PSNR makes the raw AUC of its cell mostly a measure of float precision


@dataclass(frozen=True)
class Measure:
    """One measure of a fit and how its columns are named in stats.parquet (the raw AUC's keep the old names)."""

    name: str  # the auc.parquet column
    label: str  # in tables and figures
    unit: str
    higher_is_better: bool

    @property
    def suffix(self) -> str:
        return {"auc": "", "auc_capped": "_capped"}.get(self.name, f"_{self.name}")

    def col(self, stat: str) -> str:
        """The stats.parquet column of a statistic: n, mean_diff, ci_low, ci_high, p_wilcoxon, verdict, ..."""
        if stat in ("mean_diff", "verdict"):
            return f"{stat}_{self.name}"
        return f"{stat}{self.suffix}"

    @property
    def is_time(self) -> bool:
        return self.name.startswith("epochs_to_")

    @property
    def better(self) -> str:
        """What a favourable paired difference looks like, for notes under tables."""
        return "higher" if self.higher_is_better else "fewer epochs"


def threshold_column(db: float) -> str:
    """auc.parquet's column of the first epoch at or above db: epochs_to_30db."""
    return f"epochs_to_{db:g}db"


MEASURES = (
    Measure("auc_capped", "capped AUC", "dB·epoch", True),
    *(Measure(threshold_column(db), f"epochs to {db:g} dB", "epochs", False) for db in THRESHOLDS_DB),
    Measure("auc", "raw AUC", "dB·epoch", True),
)
MEASURE_BY_NAME = {m.name: m for m in MEASURES}


def measures_in(columns: Iterable[str]) -> list[Measure]:
    """The study's measures an AUC or stats table holds (the capped AUC only with a cap), in lead order."""
    present = set(columns)
    return [m for m in MEASURES if m.name in present or m.col("mean_diff") in present]


# ---------------------------------------------------------------------------------------------- order


def scheme_order(schemes: Iterable[str]) -> list[str]:
    """Known schemes in the study's order (prefit.schema), then any others alphabetically."""
    return list(ordered(list(schemes), SCHEME_ORDER).categories)


def protocol_order(protocols: Iterable[str]) -> list[str]:
    """The protocol as stated first, the original's chained one next, any others after (prefit.schema)."""
    return list(ordered(list(protocols), PROTOCOL_ORDER).categories)


def cell_order(cells: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Cells (hls, hfs) by model size hls*hfs ascending, ties by hls: the x order of the original AUC plot."""
    return sorted({(int(h), int(f)) for h, f in cells}, key=lambda c: (c[0] * c[1], c[0], c[1]))


def cell_categories(frame: pd.DataFrame) -> pd.Categorical:
    """The cells of a frame's rows as an ordered categorical of their labels (`2x32`), in cell_order."""
    labels = [cell_label(h, f) for h, f in zip(frame["hls"], frame["hfs"], strict=True)]
    order = [cell_label(*c) for c in cell_order(zip(frame["hls"], frame["hfs"], strict=True))]
    return pd.Categorical(labels, categories=order, ordered=True)


def group_order(frame: pd.DataFrame) -> list[tuple[int, int, str]]:
    """The (hls, hfs, variant) of a frame's rows (variant "" without one): cells in cell_order, then variants."""
    framed = with_variant(frame)
    rank = {v: i for i, v in enumerate(variant_order(framed[VARIANT]))}
    cells = {c: i for i, c in enumerate(cell_order(zip(framed["hls"], framed["hfs"], strict=True)))}
    found = {(int(h), int(f), str(v)) for h, f, v in zip(framed["hls"], framed["hfs"], framed[VARIANT], strict=True)}
    return sorted(found, key=lambda g: (cells[g[:2]], rank[g[2]]))


def group_categories(frame: pd.DataFrame) -> pd.Categorical:
    """The groups of a frame's rows as an ordered categorical of their labels (`2x32 train.lr=0.0002`)."""
    framed = with_variant(frame)
    labels = [group_label(h, f, v) for h, f, v in zip(framed["hls"], framed["hfs"], framed[VARIANT], strict=True)]
    return pd.Categorical(labels, categories=[group_label(*g) for g in group_order(frame)], ordered=True)


def sort_rows(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sort through ordered categoricals: cells by size, schemes and protocols in the study's order."""
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = {"scheme": SCHEME_ORDER, "protocol": PROTOCOL_ORDER}
    if VARIANT in by:
        keys[VARIANT] = tuple(variant_order(frame[VARIANT]))
    sortable = frame.assign(**{k: ordered(frame[k].astype(str).tolist(), o) for k, o in keys.items() if k in by})
    columns = list(by)
    if {"hls", "hfs"} <= set(by):
        sortable["_cell"] = cell_categories(frame)
        columns = ["_cell" if c == "hls" else c for c in by if c != "hfs"]
    order = sortable.sort_values(columns, kind="stable").index
    return frame.loc[order].reset_index(drop=True)


# ------------------------------------------------------------------------------------------ reductions


def curves_table(fits: pd.DataFrame) -> pd.DataFrame:
    """Per cell, scheme and epoch: mean, std (ddof 1) and count of the finite PSNRs over triples.

    `n_nonfinite` counts the triples whose PSNR at that epoch was NaN or +-inf and so left out.
    """
    finite = fits["psnr"].where(np.isfinite(fits["psnr"]))
    keys = [*group_keys(fits), "scheme", "epoch"]
    curves = fits.assign(psnr=finite).groupby(keys, sort=False)["psnr"].agg(["mean", "std", "count", "size"])
    curves = curves.reset_index()
    curves["n_nonfinite"] = (curves["size"] - curves["count"]).astype("int64")
    curves["count"] = curves["count"].astype("int64")
    return sort_rows(curves.drop(columns="size"), keys)


def auc_table(fits: pd.DataFrame, members: pd.DataFrame, psnr_cap: float | None = DEFAULT_PSNR_CAP) -> pd.DataFrame:
    """One row per fit of A (cell, scheme, triple): AUC, capped AUC, final and largest PSNR, epochs to the
    thresholds (NA if never: see `measure_values` for how the statistics count those), divergence.

    With psnr_cap None the capped AUC and epochs_to_59db are left out.
    """
    thresholds = THRESHOLDS_DB + ((CAP_THRESHOLD_DB,) if psnr_cap is not None else ())
    keys = member_keys(fits)
    records = []
    for key, group in fits.groupby(keys, sort=False):
        psnr = group["psnr"].to_numpy(dtype=np.float64)  # already sorted by epoch
        rec = dict(zip(keys, key, strict=True))
        rec["n_epochs"] = len(psnr)
        with np.errstate(invalid="ignore"):
            rec["auc"] = float(np.trapezoid(psnr))
            if psnr_cap is not None:
                rec["auc_capped"] = float(np.trapezoid(np.minimum(psnr, psnr_cap)))
        rec["final_psnr"] = float(psnr[-1])
        for db in thresholds:
            hits = np.flatnonzero(psnr >= db)
            rec[threshold_column(db)] = int(hits[0]) if len(hits) else pd.NA
        rec["max_psnr"] = float(np.nanmax(psnr)) if not np.isnan(psnr).all() else np.nan
        rec["over_100db"] = bool(rec["max_psnr"] > RAW_AUC_FLAG_DB)
        rec["n_nonfinite"] = int((~np.isfinite(psnr)).sum())
        rec["diverged"] = bool(np.isnan(psnr).any() or np.isneginf(psnr).any())
        rec["saturated"] = bool(np.isposinf(psnr).any())
        records.append(rec)

    auc = pd.DataFrame.from_records(records)
    for db in thresholds:
        auc[threshold_column(db)] = auc[threshold_column(db)].astype("Int64")
    auc = auc.merge(members, on=keys, how="left", validate="one_to_one")
    front = [*keys, *MEMBER_INFO, "n_epochs"]
    return sort_rows(auc[front + [c for c in auc.columns if c not in front]], keys)


def measure_values(auc: pd.DataFrame, measure: Measure | str) -> pd.Series:
    """A measure per fit as floats; a threshold never reached counts as the fit's number of epochs."""
    name = measure if isinstance(measure, str) else measure.name
    values = auc[name].astype("float64")
    if name.startswith("epochs_to_"):
        values = values.fillna(auc["n_epochs"].astype("float64"))
    return values


def mean_table(auc: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per cell and scheme: mean and std (ddof 1) of the finite values of metric, n_finite and n_fits."""
    value = auc[metric].astype("float64")
    keys = [*group_keys(auc), "scheme"]
    grouped = auc.assign(**{metric: value.where(np.isfinite(value))}).groupby(keys)[metric]
    table = grouped.agg(["mean", "std", "count", "size"]).reset_index()
    table = table.rename(columns={"count": "n_finite", "size": "n_fits"})
    table[["n_finite", "n_fits"]] = table[["n_finite", "n_fits"]].astype("int64")
    return sort_rows(table, keys)


def cell_flags(auc: pd.DataFrame) -> pd.DataFrame:
    """Per cell: how many of its fits (any scheme) pass RAW_AUC_FLAG_DB, and the raw-AUC flag that follows."""
    flags = auc.groupby(group_keys(auc))["over_100db"].sum().astype("int64").rename("n_fits_over_100db").reset_index()
    return flags.assign(flag_raw_auc=flags["n_fits_over_100db"] > 0)


def paired_frame(auc: pd.DataFrame, measure: Measure | str = "auc", baseline: str = BASELINE) -> pd.DataFrame:
    """One row per pair (cell, scheme, triple): a scheme's fit and the baseline's fit of the same triple.

    A triple shares its target A and its random initialisation across schemes, so the paired difference
    removes the spread between images that dominates the raw values. `diff` is value(scheme) - value(baseline),
    NaN when the pair is left out: `diverged` (either fit diverged, or its value is NaN or -inf) or else
    `saturated` (either value +inf: a loss of exactly 0). `unreached`: either fit never reached the
    threshold of a time measure (counted as its epochs, see `measure_values`). Triples without a baseline
    fit have no pair.
    """
    name = measure if isinstance(measure, str) else measure.name
    keys = [*group_keys(auc), "triple"]
    columns = [*group_keys(auc), "scheme", "triple", "diff", "diverged", "saturated", "unreached"]
    table = auc.assign(
        _value=measure_values(auc, name),
        _unreached=auc[name].isna().to_numpy() if name.startswith("epochs_to_") else False,
        diverged=auc["diverged"] if "diverged" in auc.columns else False,
    )
    side = ["_value", "diverged", "_unreached"]
    base = table.loc[table["scheme"] == baseline, [*keys, *side]]
    others = table.loc[table["scheme"] != baseline, [*keys, "scheme", *side]]
    pairs = others.merge(base, on=keys, suffixes=("", "_base"), validate="many_to_one")
    if pairs.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    value, value_base = pairs["_value"].to_numpy(), pairs["_value_base"].to_numpy()
    diverged = pairs["diverged"].astype(bool).to_numpy() | pairs["diverged_base"].astype(bool).to_numpy()
    for v in (value, value_base):
        diverged |= np.isnan(v) | np.isneginf(v)
    saturated = ~diverged & ~(np.isfinite(value) & np.isfinite(value_base))
    with np.errstate(invalid="ignore"):
        diff = np.where(diverged | saturated, np.nan, value - value_base)
    unreached = pairs["_unreached"].astype(bool).to_numpy() | pairs["_unreached_base"].astype(bool).to_numpy()
    pairs = pairs.assign(diff=diff, diverged=diverged, saturated=saturated, unreached=unreached & ~diverged)
    return sort_rows(pairs[columns], member_keys(auc))


def paired_differences(auc: pd.DataFrame, measure: Measure | str = "auc", baseline: str = BASELINE) -> pd.DataFrame:
    """Per cell and scheme: the mean over triples of value(scheme) - value(baseline), matched on triple.

    Pairs left out by `paired_frame` do not count; n_pairs says how many were used and n_better how many
    favour the scheme. `prefit.analysis.stats` adds the confidence interval, the test and the verdict.
    """
    keys = [*group_keys(auc), "scheme"]
    columns = [*keys, "baseline", "mean_diff", "std_diff", "n_pairs", "n_better"]
    name = measure if isinstance(measure, str) else measure.name
    pairs = paired_frame(auc, name, baseline)
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    sign = 1.0 if MEASURE_BY_NAME.get(name, MEASURES[0]).higher_is_better else -1.0
    grouped = pairs.assign(_better=sign * pairs["diff"] > 0).groupby(keys, sort=False)
    table = grouped["diff"].agg(mean_diff="mean", std_diff="std", n_pairs="count").reset_index()
    table["n_better"] = grouped["_better"].sum().to_numpy()
    table[["n_pairs", "n_better"]] = table[["n_pairs", "n_better"]].astype("int64")
    table["baseline"] = baseline
    return sort_rows(table[columns], keys)
