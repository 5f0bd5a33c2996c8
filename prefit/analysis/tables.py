"""Markdown tables of the analysis, built from its frames; the templates place them, the reports word them.

Cells are labelled `2x32`, and in a sweep with variants `2x32 train.lr=0.0002` (prefit.analysis.variants).
Numbers: AUCs with thousands separators, small values with 4 significant digits, p with 3 decimals, a dash
for what is missing. Verdicts: **beats** and **worse** in bold, `unclear` plain; a raw AUC in a cell where a fit
passes 100 dB carries RAW_FLAG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from prefit.schema import BASELINE, CELL_KEYS

from .reduce import (
    MEASURE_BY_NAME,
    RAW_AUC_FLAG_DB,
    Measure,
    group_order,
    mean_table,
    paired_differences,
    protocol_order,
    scheme_order,
    sort_rows,
)
from .stats import ALPHA, CONFIDENCE
from .variants import VARIANT, group_label, has_variants, with_variant

GROUP = [*CELL_KEYS, VARIANT]  # the keys of a group in frames passed through with_variant

RAW_FLAG = "†"
RAW_FLAG_NOTE = (
    f"{RAW_FLAG}: a fit in this cell passes {RAW_AUC_FLAG_DB:g} dB, far beyond what an 8-bit image shows "
    "(58.9 dB): its raw AUC there mostly measures float precision; read the capped AUC."
)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, sign: bool = False) -> str:
    """Large values with thousands separators, small ones with 4 significant digits, missing as a dash."""
    if value is None or pd.isna(value):
        return "—"
    if not np.isfinite(value):
        return str(value)
    return format(value, ("+" if sign else "") + (",.0f" if abs(value) >= 1000 else ".4g"))


def fmt_p(p: float | None) -> str:
    """A p-value for a table: 3 decimals, `<0.001` below that, a dash when there is none."""
    if p is None or pd.isna(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_diff_ci(row: pd.Series | dict) -> str:
    """`+1,234 [+567, +2,000]`: the mean paired difference and its CI from a long stats row."""
    if pd.isna(row["mean_diff"]):
        return "—"
    return f"{fmt(row['mean_diff'], sign=True)} [{fmt(row['ci_low'], sign=True)}, {fmt(row['ci_high'], sign=True)}]"


def describe(row: pd.Series | dict | None) -> str:
    """`Δ = +1,234 [+567, +2,000], p = 0.012, n = 20`: one comparison in a sentence."""
    if row is None:
        return "no pairs"
    return f"Δ = {fmt_diff_ci(row)}, p = {fmt_p(row['p_wilcoxon'])}, n = {int(row['n'])}"


def duration(seconds: float | None) -> str:
    """`4 min 00 s`: a run time, rounded once (239.7 s is 4 min 00 s, not 3 min 60 s)."""
    if seconds is None or not np.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def flagged(row: pd.Series | dict) -> bool:
    """Whether a long stats row is a raw AUC in a cell where a fit passes RAW_AUC_FLAG_DB."""
    return row["measure"] == "auc" and bool(row.get("flag_raw_auc", False))


def verdict_text(row: pd.Series | dict | None, with_diff: bool = True) -> str:
    """A verdict for a table cell: `**beats** (+4,754)`, `unclear (−385)`, `—` without data; RAW_FLAG if flagged."""
    if row is None or row["verdict"] == "no data":
        return "—"
    word = f"**{row['verdict']}**" if row["verdict"] in ("beats", "worse") else row["verdict"]
    text = f"{word} ({fmt(row['mean_diff'], sign=True)})" if with_diff else word
    return text + (f" {RAW_FLAG}" if flagged(row) else "")


def _rows_by(long: pd.DataFrame, keys: list[str]) -> dict[tuple, pd.Series]:
    return {tuple(r[k] for k in keys): r for _, r in long.iterrows()}


def _groups_and_schemes(long: pd.DataFrame) -> list[tuple[int, int, str, str]]:
    """(hls, hfs, variant, scheme) of a frame passed through with_variant, in the order of the tables."""
    schemes = scheme_order(long["scheme"].unique())
    present = set(zip(long["hls"].astype(int), long["hfs"].astype(int), long[VARIANT], long["scheme"], strict=True))
    return [(*g, s) for g in group_order(long) for s in schemes if (*g, s) in present]


def _label(row: pd.Series | dict) -> str:
    return group_label(int(row["hls"]), int(row["hfs"]), str(row.get(VARIANT, "") or ""))


def verdict_table(
    long: pd.DataFrame, measures: Sequence[Measure], by: str = "protocol", groups: Sequence[str] | None = None
) -> str:
    """Per cell and scheme, the verdict (and Δ) of every measure, one column per measure and group (a value of
    the `by` column: protocol, or the sweep in a robustness report)."""
    groups = list(groups) if groups is not None else protocol_order(long[by])
    long = with_variant(long)
    found = _rows_by(long, ["hls", "hfs", VARIANT, "scheme", "measure", by])
    header = ["cell", "scheme"] + [m.label + (f" ({g})" if len(groups) > 1 else "") for m in measures for g in groups]
    rows = []
    for hls, hfs, variant, scheme in _groups_and_schemes(long):
        row = [group_label(hls, hfs, variant), scheme]
        row += [verdict_text(found.get((hls, hfs, variant, scheme, m.name, g))) for m in measures for g in groups]
        rows.append(row)
    return markdown_table(header, rows)


def count_table(
    long: pd.DataFrame, measures: Sequence[Measure], by: str = "protocol", groups: Sequence[str] | None = None
) -> str:
    """Per scheme, measure and group: in how many cells it beats random and is worse (of those with pairs)."""
    groups = list(groups) if groups is not None else protocol_order(long[by])
    of = "of cells and variants" if has_variants(long) else "of cells"
    header = ["scheme", "measure"] + [
        f"beats / worse ({g})" if len(groups) > 1 else f"beats / worse ({of})" for g in groups
    ]
    rows = []
    for scheme in scheme_order(long["scheme"].unique()):
        for m in measures:
            row = [scheme, m.label]
            for g in groups:
                v = long[(long["scheme"] == scheme) & (long["measure"] == m.name) & (long[by] == g)]["verdict"]
                cells = int((v != "no data").sum())
                row.append(f"{int((v == 'beats').sum())} / {int((v == 'worse').sum())} of {cells}")
            rows.append(row)
    return markdown_table(header, rows)


def stats_markdown(long: pd.DataFrame, measure: Measure, protocol_column: bool | None = None) -> str:
    """One measure's statistics per cell and scheme: Δ [CI], p, n, verdict, and the pairs left out or censored."""
    rows_of = sort_rows(with_variant(long[long["measure"] == measure.name]), [*GROUP, "scheme"])
    if protocol_column is None:
        protocol_column = rows_of["protocol"].nunique() > 1
    saturated = measure.name == "auc" and bool(rows_of["n_saturated"].sum())
    header = ["cell"] + (["protocol"] if protocol_column else []) + ["scheme"]
    header += [f"Δ {measure.label} [{CONFIDENCE:.0%} CI]", "p (Wilcoxon)", "n", "verdict"]
    header += ["unreached"] if measure.is_time else []
    header += ["diverged"] + (["saturated"] if saturated else [])
    rows = []
    for _, r in rows_of.iterrows():
        row = [_label(r)] + ([r["protocol"]] if protocol_column else []) + [r["scheme"]]
        row += [
            fmt_diff_ci(r) + (f" {RAW_FLAG}" if flagged(r) else ""),
            fmt_p(r["p_wilcoxon"]),
            int(r["n"]),
            verdict_text(r, with_diff=False).replace(f" {RAW_FLAG}", ""),
        ]
        row += [int(r["n_unreached"])] if measure.is_time else []
        row += [int(r["n_diverged"])] + ([int(r["n_saturated"])] if saturated else [])
        rows.append(row)
    return markdown_table(header, rows)


def compare_markdown(long: pd.DataFrame, measure: Measure, by: str, groups: Sequence[str]) -> str:
    """One measure's Δ [CI], p, n and verdict per cell and scheme, for each group (`by`) side by side."""
    long = with_variant(long[long["measure"] == measure.name])
    found = _rows_by(long, ["hls", "hfs", VARIANT, "scheme", by])
    header = ["cell", "scheme"]
    for g in groups:
        header += [f"Δ {measure.label} [{CONFIDENCE:.0%} CI] ({g})", f"p ({g})", f"n ({g})", f"verdict ({g})"]
    rows = []
    for hls, hfs, variant, scheme in _groups_and_schemes(long):
        row = [group_label(hls, hfs, variant), scheme]
        for g in groups:
            r = found.get((hls, hfs, variant, scheme, g))
            row += (
                ["—"] * 4
                if r is None
                else [
                    fmt_diff_ci(r) + (f" {RAW_FLAG}" if flagged(r) else ""),
                    fmt_p(r["p_wilcoxon"]),
                    int(r["n"]),
                    verdict_text(r, False),
                ]
            )
        rows.append(row)
    return markdown_table(header, rows)


def multiplicity_note(long: pd.DataFrame) -> str:
    """How many tests came out below ALPHA, and how many would by chance alone."""
    tested = int(long["p_wilcoxon"].notna().sum())
    below = int((long["p_wilcoxon"] < ALPHA).sum())
    if not tested:
        return "No test could be made (fewer than 2 pairs, or all differences 0, in every cell)."
    return (
        f"{below} of {tested} tests have p < {ALPHA:g}; the p-values are not corrected for multiple comparisons "
        f"(were no scheme to make any difference, about {ALPHA * tested:.1f} of {tested} would by chance alone)."
    )


def metric_table(auc: pd.DataFrame, metric: str, flags: pd.DataFrame | None = None) -> tuple[str, pd.Series]:
    """Per cell: the mean of one AUC per scheme, the best scheme, each scheme's mean paired difference from random
    with its number of pairs, and the diverged fits; how often each scheme was best. flags: per cell
    `flag_raw_auc`, marking a raw AUC with RAW_FLAG."""
    auc = with_variant(auc)
    schemes = scheme_order(auc["scheme"].unique())
    protocols = protocol_order(auc["protocol"])
    means = mean_table(auc, metric).set_index([*GROUP, "scheme"])["mean"]
    paired = paired_differences(auc, metric).set_index([*GROUP, "scheme"])
    diverged = auc.groupby([*GROUP, "scheme"])["diverged"].sum()
    triples = auc.groupby(GROUP)["triple"].nunique()
    flag = _flagged_groups(flags)
    others = [s for s in schemes if s != BASELINE] if BASELINE in schemes else []
    label = MEASURE_BY_NAME[metric].label
    header = ["cell"] + (["protocol"] if len(protocols) > 1 else []) + ["triples"]
    header += [f"mean {label} {s}" for s in schemes] + ["best"] + [f"Δ {s} − {BASELINE} (pairs)" for s in others]
    header += ["diverged (" + "/".join(schemes) + ")"]
    rows, best_counts = [], []
    for hls, hfs, variant in group_order(auc):
        for protocol in protocols:
            cell = (hls, hfs, protocol, variant)
            if cell not in triples.index:
                continue
            cell_means = {s: means.get((*cell, s), np.nan) for s in schemes}
            known = {s: m for s, m in cell_means.items() if pd.notna(m)}
            best = max(known, key=known.get) if known else "—"
            best_counts.append(best)
            mark = f" {RAW_FLAG}" if metric == "auc" and cell in flag else ""
            row = [group_label(hls, hfs, variant) + mark] + ([protocol] if len(protocols) > 1 else [])
            row.append(int(triples[cell]))
            row += [fmt(cell_means[s]) for s in schemes] + [best]
            for s in others:
                p = paired.loc[(*cell, s)] if (*cell, s) in paired.index else None
                row.append("—" if p is None else f"{fmt(p['mean_diff'], sign=True)} ({int(p['n_pairs'])})")
            row.append("/".join(str(int(diverged.get((*cell, s), 0))) for s in schemes))
            rows.append(row)
    return markdown_table(header, rows), pd.Series(best_counts, dtype=object).value_counts()


def _flagged_groups(flags: pd.DataFrame | None) -> set[tuple]:
    """The (hls, hfs, protocol, variant) of the groups whose raw AUC is flagged (cell_flags' rows)."""
    if flags is None:
        return set()
    flags = with_variant(flags)
    return {tuple(k) for k in flags.loc[flags["flag_raw_auc"], GROUP].itertuples(index=False, name=None)}


def threshold_cell(values: pd.Series) -> str:
    """`412 (18/20)`: the median epoch over the fits that reached the threshold, and how many did."""
    reached = values.dropna()
    return f"{reached.median():.0f} ({len(reached)}/{len(values)})" if len(reached) else f"— (0/{len(values)})"


def threshold_markdown(
    auc: pd.DataFrame, flags: pd.DataFrame | None = None, protocols: Sequence[str] | None = None
) -> str:
    """Per cell and scheme: mean capped AUC, the epochs to each threshold, and the raw AUC last (flagged)."""
    auc = with_variant(auc)
    thresholds = [c for c in auc.columns if c.startswith("epochs_to_")]
    protocols = list(protocols) if protocols is not None else protocol_order(auc["protocol"])
    capped = "auc_capped" in auc.columns
    means = {
        m: mean_table(auc, m).set_index([*GROUP, "scheme"])["mean"] for m in ("auc", "auc_capped") if m in auc.columns
    }
    flag = _flagged_groups(flags)
    header = ["cell"] + (["protocol"] if len(protocols) > 1 else []) + ["scheme"]
    header += (["mean capped AUC"] if capped else []) + [f"epochs to {c[10:-2]} dB" for c in thresholds]
    header += ["mean raw AUC"]
    groups = dict(tuple(auc.groupby([*GROUP, "scheme"], sort=False)))
    rows = []
    for hls, hfs, variant in group_order(auc):
        for protocol in protocols:
            for scheme in scheme_order(auc["scheme"].unique()):
                key = (hls, hfs, protocol, variant, scheme)
                if key not in groups:
                    continue
                row = [group_label(hls, hfs, variant)] + ([protocol] if len(protocols) > 1 else []) + [scheme]
                row += [fmt(means["auc_capped"].get(key, np.nan))] if capped else []
                row += [threshold_cell(groups[key][c]) for c in thresholds]
                row.append(fmt(means["auc"].get(key, np.nan)) + (f" {RAW_FLAG}" if key[:4] in flag else ""))
                rows.append(row)
    return markdown_table(header, rows)
