"""Reductions of the fit trajectories: per-epoch curves, one row per fit (the measures), paired differences.

The measures (`MEASURES`), in the order every table leads with them: `auc_capped`, the trapezoid of PSNR clipped
at the PSNR cap (default 59 dB, the PSNR of 8-bit quantisation, 10 log10(12 x 255^2) = 58.9 dB), higher is
better; `epochs_to_30db` and `epochs_to_40db`, the first epoch at or above the threshold, fewer is better, a fit
that never reaches it counting as the epochs it ran (a bound: it got there no sooner); `auc`, the original's raw
trapezoid of PSNR over epoch, flagged where a fit passes RAW_AUC_FLAG_DB (it then mostly measures float precision).
A "cell" below is a group (prefit.analysis.groups). Non-finite PSNR is kept: NaN or -inf means the fit diverged
(`diverged`, AUC NaN), +inf that its loss was exactly 0 (`saturated`, AUC inf); curves count and skip them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prefit.schema import BASELINE

from .groups import group_keys, member_keys, sort_table
from .load import MEMBER_INFO

THRESHOLDS_DB = (30.0, 40.0)
QUANTISATION_PSNR_DB = float(10 * np.log10(12 * 255**2))  # 58.9 dB: 8-bit quantisation itself
CAP_THRESHOLD_DB = 59.0  # epochs to this are reported beside the cap
RAW_AUC_FLAG_DB = 100.0  # a fit past this PSNR makes the raw AUC of its cell mostly a measure of float precision


@dataclass(frozen=True)
class Measure:
    """One measure of a fit: its auc.parquet column, its label in tables and figures, its unit and direction."""

    name: str
    label: str
    unit: str
    higher_is_better: bool

    @property
    def suffix(self) -> str:
        """The measure in figure names: `paired_differences{suffix}.png`."""
        return {"auc": "", "auc_capped": "_capped"}.get(self.name, f"_{self.name}")

    @property
    def is_time(self) -> bool:
        return self.name.startswith("epochs_to_")


def threshold_column(db: float) -> str:
    """auc.parquet's column of the first epoch at or above db: epochs_to_30db."""
    return f"epochs_to_{db:g}db"


TIMES = tuple(Measure(threshold_column(db), f"epochs to {db:g} dB", "epochs", False) for db in THRESHOLDS_DB)
MEASURES = (Measure("auc_capped", "capped AUC", "dB·epoch", True), *TIMES, Measure("auc", "raw AUC", "dB·epoch", True))
MEASURE_BY_NAME = {m.name: m for m in MEASURES}


def measures_in(columns: Iterable[str]) -> list[Measure]:
    """The study's measures an AUC table holds (the capped AUC only with a cap), in lead order."""
    return [m for m in MEASURES if m.name in set(columns)]


def by(frame: pd.DataFrame, keys: list[str]):
    """frame.groupby over group columns: in order of appearance, a missing study key a group of its own."""
    return frame.groupby(keys, sort=False, dropna=False, observed=True)


def curves_table(fits: pd.DataFrame) -> pd.DataFrame:
    """Per cell, scheme and epoch: mean, std (ddof 1) and count of the finite PSNRs over triples; `n_nonfinite` the
    triples whose PSNR there was NaN or +-inf, left out."""
    finite = fits["psnr"].where(np.isfinite(fits["psnr"]))
    keys = [*group_keys(fits), "scheme", "epoch"]
    curves = by(fits.assign(psnr=finite), keys)["psnr"].agg(["mean", "std", "count", "size"]).reset_index()
    curves["n_nonfinite"] = (curves["size"] - curves["count"]).astype("int64")
    curves["count"] = curves["count"].astype("int64")
    return sort_table(curves.drop(columns="size"), ["epoch"])


def auc_table(fits: pd.DataFrame, members: pd.DataFrame, psnr_cap: float | None) -> pd.DataFrame:
    """One row per fit of A (cell, scheme, triple): AUC, capped AUC, final and largest PSNR, epochs to the
    thresholds (NA if never: `measure_values` counts those), divergence. Without a cap, no capped AUC and no
    epochs_to_59db."""
    thresholds = THRESHOLDS_DB + ((CAP_THRESHOLD_DB,) if psnr_cap is not None else ())
    keys = member_keys(fits)
    records = []
    for key, group in by(fits, keys):
        psnr = group["psnr"].to_numpy(dtype=np.float64)  # already sorted by epoch
        rec = dict(zip(keys, key))
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
    auc = pd.DataFrame.from_records(records).astype({threshold_column(db): "Int64" for db in thresholds})
    auc = auc.astype({k: fits[k].dtype for k in keys})
    auc = auc.merge(members, on=keys, how="left", validate="one_to_one")
    front = [*keys, *MEMBER_INFO, "n_epochs"]
    return sort_table(auc[front + [c for c in auc.columns if c not in front]], ["triple"])


def measure_values(auc: pd.DataFrame, name: str) -> pd.Series:
    """A measure per fit as floats; a threshold never reached counts as the fit's number of epochs."""
    values = auc[name].astype("float64")
    if name.startswith("epochs_to_"):
        values = values.fillna(auc["n_epochs"].astype("float64"))
    return values


def mean_table(auc: pd.DataFrame, metric: str) -> pd.Series:
    """Per cell and scheme (the index): the mean of the finite values of metric."""
    value = auc[metric].astype("float64")
    return by(auc.assign(**{metric: value.where(np.isfinite(value))}), [*group_keys(auc), "scheme"])[metric].mean()


def cell_flags(auc: pd.DataFrame) -> pd.DataFrame:
    """Per cell: how many of its fits (any scheme) pass RAW_AUC_FLAG_DB, and the raw-AUC flag that follows."""
    flags = by(auc, group_keys(auc))["over_100db"].sum().astype("int64").rename("n_fits_over_100db").reset_index()
    return flags.assign(flag_raw_auc=flags["n_fits_over_100db"] > 0)


def paired_frame(auc: pd.DataFrame, name: str, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per pair (cell, scheme, triple): a scheme's fit and the baseline's fit of the same triple (same A,
    same initialisation). `diff` is value(scheme) - value(baseline), NaN when the pair is left out: `diverged`
    (either fit diverged, or its value is NaN or -inf) or else `saturated` (either value +inf). `unreached`: either
    fit never reached a time measure's threshold. Triples without a baseline fit have no pair."""
    keys = [*group_keys(auc), "triple"]
    columns = [*group_keys(auc), "scheme", "triple", "diff", "diverged", "saturated", "unreached"]
    unreached = auc[name].isna().to_numpy() if name.startswith("epochs_to_") else False
    table = auc.assign(_value=measure_values(auc, name), _unreached=unreached)
    side = ["_value", "diverged", "_unreached"]
    base = table.loc[table["scheme"] == baseline, [*keys, *side]]
    others = table.loc[table["scheme"] != baseline, [*keys, "scheme", *side]]
    pairs = others.merge(base, on=keys, suffixes=("", "_base"), validate="many_to_one")
    value, value_base = pairs["_value"].to_numpy(), pairs["_value_base"].to_numpy()
    diverged = pairs["diverged"].astype(bool).to_numpy() | pairs["diverged_base"].astype(bool).to_numpy()
    for v in (value, value_base):
        diverged |= np.isnan(v) | np.isneginf(v)
    saturated = ~diverged & ~(np.isfinite(value) & np.isfinite(value_base))
    with np.errstate(invalid="ignore"):
        diff = np.where(diverged | saturated, np.nan, value - value_base)
    unreached = pairs["_unreached"].astype(bool).to_numpy() | pairs["_unreached_base"].astype(bool).to_numpy()
    pairs = pairs.assign(diff=diff, diverged=diverged, saturated=saturated, unreached=unreached & ~diverged)
    return sort_table(pairs[columns], ["triple"])


def paired_differences(auc: pd.DataFrame, name: str, baseline: str = BASELINE) -> pd.DataFrame:
    """Per cell and scheme (the index): the mean over triples of value(scheme) - value(baseline), matched on
    triple, and the number of pairs used (`paired_frame` says which are left out)."""
    pairs = paired_frame(auc, name, baseline)
    return by(pairs, [*group_keys(auc), "scheme"])["diff"].agg(delta="mean", n_pairs="count")
