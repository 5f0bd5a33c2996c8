"""Markdown tables of the analysis and the Jinja2 templates (templates/*.md.j2) that word them (`render`): Python
computes every number, table and verdict, a template only places them. Groups read `2x32` or `2x32 train.lr=0.0002`;
AUCs with thousands separators, small values with 4 significant digits, p with 3 decimals, a dash for what is
missing; **beats** and **worse** in bold; a raw AUC in a cell where a fit passes 100 dB carries RAW_FLAG.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING

import jinja2
import numpy as np
import pandas as pd

from prefit.schema import BASELINE, PSNR_FILE, RUN_FILE, cell_label

from . import reduce
from .groups import group_keys, group_label, groups, present, sort_table, study_columns, study_texts
from .load import span
from .reduce import MEASURE_BY_NAME, RAW_AUC_FLAG_DB, Measure, by, cell_flags, mean_table, measures_in
from .stats import ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE

if TYPE_CHECKING:
    from .pipeline import Analysis

RAW_FLAG = "†"
RAW_FLAG_NOTE = f"{RAW_FLAG}: a fit in this cell passes {RAW_AUC_FLAG_DB:g} dB, far beyond what an 8-bit image shows "
RAW_FLAG_NOTE += "(58.9 dB): its raw AUC there mostly measures float precision; read the capped AUC."
CI_NAMES = {"percentile": "percentile", "bca": "bias-corrected and accelerated (BCa)"}
Row = Mapping[str, object]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""

    def line(values: Iterable[object]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in values) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def fmt(value: float | None, sign: bool = False) -> str:
    """Large values with thousands separators, small ones with 4 significant digits, missing as a dash."""
    if value is None or pd.isna(value):
        return "—"
    if not np.isfinite(value):
        return str(value)
    return format(value, ("+" if sign else "") + (",.0f" if abs(value) >= 1000 else ".4g"))


def fmt_p(p: float | None) -> str:
    """A p-value for a table: 3 decimals, `<0.001` below that, a dash when there is none."""
    return "—" if p is None or pd.isna(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_diff_ci(row: Row) -> str:
    """`+1,234 [+567, +2,000]`: the mean paired difference and its CI from a stats row."""
    if pd.isna(row["delta"]):
        return "—"
    return f"{fmt(row['delta'], sign=True)} [{fmt(row['ci_low'], sign=True)}, {fmt(row['ci_high'], sign=True)}]"


def describe(row: Row | None) -> str:
    """`Δ = +1,234 [+567, +2,000], p = 0.012, n = 20`: one comparison in a sentence."""
    return "no pairs" if row is None else f"Δ = {fmt_diff_ci(row)}, p = {fmt_p(row['p'])}, n = {int(row['n'])}"


def duration(seconds: float | None) -> str:
    """`4 min 00 s`: a run time, rounded once (239.7 s is 4 min 00 s, not 3 min 60 s)."""
    if seconds is None or not np.isfinite(seconds):
        return "—"
    whole = round(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = f"{whole // 60} min {whole % 60:02d} s"
    return minutes if whole < 3600 else f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def flag_mark(row: Row) -> str:
    """RAW_FLAG (with its space) for a raw AUC in a cell where a fit passes RAW_AUC_FLAG_DB, else ""."""
    return f" {RAW_FLAG}" if row["measure"] == "auc" and bool(row.get("flag_raw_auc", False)) else ""


def verdict_text(row: Row | None, with_diff: bool = True, mark: bool = True) -> str:
    """A verdict for a table cell: `**beats** (+4,754)`, `unclear (−385)`, `—` without data; RAW_FLAG if flagged."""
    if row is None or row["verdict"] == "no data":
        return "—"
    word = f"**{row['verdict']}**" if row["verdict"] in ("beats", "worse") else row["verdict"]
    return (f"{word} ({fmt(row['delta'], sign=True)})" if with_diff else word) + (flag_mark(row) if mark else "")


def comparisons(stats: pd.DataFrame, column: str) -> tuple[list[tuple[str, str]], dict[tuple, Row]]:
    """The (group label, scheme) rows of a side-by-side table, protocol aside, in table order; and every stats row
    by (group label, scheme, measure, value of `column`)."""
    study = study_columns(stats)
    order = sort_table(stats.drop(columns="protocol").assign(_row=range(len(stats))))["_row"]
    records = stats.iloc[order].to_dict("records")
    found = {(group_label(r, study), r["scheme"], r["measure"], r[column]): r for r in records}
    return list(dict.fromkeys(key[:2] for key in found)), found


def verdict_table(stats: pd.DataFrame, measures: Sequence[Measure], column: str = "protocol", sides=None) -> str:
    """Per cell and scheme, the verdict (and Δ) of every measure, one column per measure and side (a value of
    `column`: the protocol, or the resolution in the resolution report)."""
    sides = present(stats[column]) if sides is None else list(sides)
    rows, found = comparisons(stats, column)
    header = ["cell", "scheme"] + [m.label + (f" ({s})" if len(sides) > 1 else "") for m in measures for s in sides]
    cells = [[verdict_text(found.get((*r, m.name, s))) for m in measures for s in sides] for r in rows]
    return markdown_table(header, [[*r, *c] for r, c in zip(rows, cells)])


def compare_markdown(stats: pd.DataFrame, measure: Measure, column: str, sides: Sequence[str]) -> str:
    """One measure's Δ [CI], p, n and verdict per cell and scheme, for each side (`column`) side by side."""
    rows, found = comparisons(stats[stats["measure"] == measure.name], column)
    names = (f"Δ {measure.label} [{CONFIDENCE:.0%} CI]", "p", "n", "verdict")
    values = [[*r, *(v for s in sides for v in side_values(found.get((*r, measure.name, s))))] for r in rows]
    return markdown_table(["cell", "scheme"] + [f"{name} ({s})" for s in sides for name in names], values)


def side_values(row: Row | None) -> list:
    """Δ [CI], p, n and verdict of one comparison (dashes without one)."""
    if row is None:
        return ["—"] * 4
    return [fmt_diff_ci(row) + flag_mark(row), fmt_p(row["p"]), int(row["n"]), verdict_text(row, False)]


def verdict_counts(stats: pd.DataFrame, measures: Sequence[Measure], column: str, sides: Sequence) -> list[dict]:
    """Per scheme, measure (its label) and side (a value of `column`): in how many cells the scheme beats random,
    is worse, and has pairs at all (`of`)."""
    counts = []
    for scheme, m, side in ((scheme, m, s) for scheme in present(stats["scheme"]) for m in measures for s in sides):
        v = stats[(stats["scheme"] == scheme) & (stats["measure"] == m.name) & (stats[column] == side)]["verdict"]
        found = {k: int((v == k).sum()) for k in ("beats", "worse")} | {"of": int((v != "no data").sum())}
        counts.append({"side": side, "scheme": scheme, "measure": m.label, **found})
    return counts


def count_table(stats: pd.DataFrame, measures: Sequence[Measure], column: str = "protocol", sides=None) -> str:
    """Per scheme, measure and side: in how many cells it beats random and is worse (of those with pairs)."""
    sides = present(stats[column]) if sides is None else list(sides)
    of = "of cells and variants" if study_columns(stats) else "of cells"
    rows: dict[tuple, list] = {}
    for c in verdict_counts(stats, measures, column, sides):
        rows.setdefault((c["scheme"], c["measure"]), []).append(f"{c['beats']} / {c['worse']} of {c['of']}")
    header = ["scheme", "measure"] + [f"beats / worse ({s if len(sides) > 1 else of})" for s in sides]
    return markdown_table(header, [[*key, *cells] for key, cells in rows.items()])


def stats_markdown(stats: pd.DataFrame, measure: Measure) -> str:
    """One measure's statistics per cell and scheme: Δ [CI], p, n, verdict, and the pairs left out or censored."""
    rows_of = sort_table(stats[stats["measure"] == measure.name])
    protocols, study = rows_of["protocol"].nunique() > 1, study_columns(stats)
    saturated = measure.name == "auc" and bool(rows_of["n_saturated"].sum())
    header = ["cell"] + (["protocol"] if protocols else []) + ["scheme"]
    header += [f"Δ {measure.label} [{CONFIDENCE:.0%} CI]", "p (Wilcoxon)", "n", "verdict"]
    header += (["unreached"] if measure.is_time else []) + ["diverged"] + (["saturated"] if saturated else [])
    rows = []
    for r in rows_of.to_dict("records"):
        row = [group_label(r, study)] + ([r["protocol"]] if protocols else []) + [r["scheme"]]
        row += [fmt_diff_ci(r) + flag_mark(r), fmt_p(r["p"]), int(r["n"]), verdict_text(r, False, False)]
        row += ([int(r["n_unreached"])] if measure.is_time else []) + [int(r["n_diverged"])]
        rows.append(row + ([int(r["n_saturated"])] if saturated else []))
    return markdown_table(header, rows)


def multiplicity_note(stats: pd.DataFrame) -> str:
    """How many tests came out below ALPHA, and how many would by chance alone."""
    tested, below = int(stats["p"].notna().sum()), int((stats["p"] < ALPHA).sum())
    if not tested:
        return "No test could be made (fewer than 2 pairs, or all differences 0, in every cell)."
    chance = f"were no scheme to make any difference, about {ALPHA * tested:.1f} of {tested} would by chance alone"
    uncorrected = "the p-values are not corrected for multiple comparisons"
    return f"{below} of {tested} tests have p < {ALPHA:g}; {uncorrected} ({chance})."


def measure_sections(stats: pd.DataFrame, measures: Sequence[Measure]) -> list[dict[str, object]]:
    """Per measure (lead order): the measure, its statistics table and its multiplicity note."""
    notes = {m.name: multiplicity_note(stats[stats["measure"] == m.name]) for m in measures}
    return [{"measure": m, "table": stats_markdown(stats, m), "multiplicity": notes[m.name]} for m in measures]


def flagged_cells(auc: pd.DataFrame) -> set[tuple]:
    """The group keys (as tuples) of the cells whose raw AUC is flagged."""
    flags = cell_flags(auc)
    return set(flags.loc[flags["flag_raw_auc"], group_keys(flags)].itertuples(index=False, name=None))


def metric_table(auc: pd.DataFrame, metric: str) -> tuple[str, pd.Series]:
    """Per cell: the mean of one AUC per scheme, the best scheme, each scheme's mean paired difference from random
    with its number of pairs, and the diverged fits (a raw AUC's flagged cells marked); how often each was best."""
    keys, study, schemes = group_keys(auc), study_columns(auc), present(auc["scheme"])
    several = auc["protocol"].nunique() > 1
    means, paired = mean_table(auc, metric), reduce.paired_differences(auc, metric)
    diverged, triples = by(auc, [*keys, "scheme"])["diverged"].sum(), by(auc, keys)["triple"].nunique()
    flagged, others = flagged_cells(auc), [s for s in schemes if s != BASELINE] if BASELINE in schemes else []
    header = ["cell"] + (["protocol"] if several else []) + ["triples"]
    header += [f"mean {MEASURE_BY_NAME[metric].label} {s}" for s in schemes] + ["best"]
    header += [f"Δ {s} − {BASELINE} (pairs)" for s in others] + ["diverged (" + "/".join(schemes) + ")"]
    rows, best = [], []
    for group in groups(auc):
        cell = tuple(group[k] for k in keys)
        cell_means = {s: means.get((*cell, s), np.nan) for s in schemes}
        known = {s: m for s, m in cell_means.items() if pd.notna(m)}
        best.append(max(known, key=known.get) if known else "—")
        mark = f" {RAW_FLAG}" if metric == "auc" and cell in flagged else ""
        row = [group_label(group, study) + mark] + ([group["protocol"]] if several else []) + [int(triples[cell])]
        row += [fmt(cell_means[s]) for s in schemes] + [best[-1]]
        pairs = [paired.loc[(*cell, s)] if (*cell, s) in paired.index else None for s in others]
        row += ["—" if p is None else f"{fmt(p['delta'], sign=True)} ({int(p['n_pairs'])})" for p in pairs]
        rows.append(row + ["/".join(str(int(diverged.get((*cell, s), 0))) for s in schemes)])
    return markdown_table(header, rows), pd.Series(best, dtype=object).value_counts()


def threshold_markdown(auc: pd.DataFrame, several: bool | None = None) -> str:
    """Per cell and scheme: the mean capped AUC, the median epoch to each threshold over the fits that reached it
    (how many did, of all), and the raw AUC last (flagged)."""
    keys, study, flagged = [*group_keys(auc), "scheme"], study_columns(auc), flagged_cells(auc)
    thresholds = [c for c in auc.columns if c.startswith("epochs_to_")]
    several = auc["protocol"].nunique() > 1 if several is None else several
    means = {m: mean_table(auc, m) for m in ("auc", "auc_capped") if m in auc.columns}
    header = ["cell"] + (["protocol"] if several else []) + ["scheme"]
    header += (["mean capped AUC"] if "auc_capped" in means else []) + [f"epochs to {c[10:-2]} dB" for c in thresholds]
    rows = []
    for key, fits in by(sort_table(auc), keys):
        group = dict(zip(keys, key))
        row = [group_label(group, study)] + ([group["protocol"]] if several else []) + [group["scheme"]]
        row += [fmt(means["auc_capped"].get(key, np.nan))] if "auc_capped" in means else []
        for values in (fits[c].dropna() for c in thresholds):
            row.append(f"{values.median():.0f} ({len(values)}/{len(fits)})" if len(values) else f"— (0/{len(fits)})")
        rows.append(row + [fmt(means["auc"].get(key, np.nan)) + (f" {RAW_FLAG}" if key[:-1] in flagged else "")])
    return markdown_table(header + ["mean raw AUC"], rows)


@cache
def environment() -> jinja2.Environment:
    """The package's templates, with the numbers every report states as globals; an undefined name is an error
    rather than an empty string."""
    loader, layout = jinja2.PackageLoader("prefit.analysis", "templates"), {"trim_blocks": True, "lstrip_blocks": True}
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False, **layout)  # markdown

    def cell(c: Sequence[int]) -> str:
        return cell_label(*c[:2])

    env.filters.update(fmt=fmt, signed=lambda v: fmt(v, sign=True), p=fmt_p, describe=describe, cell=cell)
    env.filters["cells"] = lambda cs: ", ".join(cell(c) for c in cs) or "none"
    constants = {"confidence": f"{CONFIDENCE:.0%}", "alpha": f"{ALPHA:g}", "resamples": f"{BOOTSTRAP_RESAMPLES:,}"}
    constants |= {"seed": BOOTSTRAP_SEED, "raw_flag": RAW_FLAG, "raw_flag_db": f"{RAW_AUC_FLAG_DB:g}"}
    constants |= {"quantisation": f"{reduce.QUANTISATION_PSNR_DB:.1f}", "flag_note": RAW_FLAG_NOTE}
    env.globals.update(constants, psnr_file=PSNR_FILE, run_file=RUN_FILE)
    return env


def render(template: str, **context: object) -> str:
    """Render one template (e.g. `summary.md.j2`) with the given context; blank runs collapse to one line."""
    lines = [line.rstrip() for line in environment().get_template(template).render(**context).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def summary_markdown(analysis: Analysis) -> str:
    """summary.md from an analysis."""
    sweep, auc, stats, measures = analysis.sweep, analysis.auc, analysis.stats, measures_in(analysis.auc.columns)
    tables = {}
    for metric in [m for m in ("auc_capped", "auc") if m in auc.columns]:
        table, best = metric_table(auc, metric)
        tables[metric] = {"table": table, "best": ", ".join(f"{s} in {n} cell(s)" for s, n in best.items())}
    context = {
        "ci_name": CI_NAMES[analysis.options.ci_method],
        "roots": sweep.roots,
        "roots_resolved": [root.resolve() for root in sweep.roots],
        "n_files": len(sweep.jobs),
        "n_complete": sum((sweep.runs.get(f) or {}).get("status") == "complete" for f in sweep.jobs["folder"]),
        "n_copies": 0 if sweep.copies is None else len(sweep.copies),
        "n_cells": auc.groupby(["hls", "hfs", "protocol"], observed=True).ngroups,
        "hls": span(auc["hls"]),
        "hfs": span(auc["hfs"]),
        "variants": [f"`{v}`" if v else "(none)" for v in study_texts(auc)],
        "protocols": ", ".join(present(auc["protocol"])),
        "triples": span(by(auc, group_keys(auc))["triple"].nunique()),
        "epochs": span(auc["n_epochs"]),
        "schemes": ", ".join(present(auc["scheme"])),
        "n_fits": len(auc),
        "n_diverged": int(auc["diverged"].sum()),
        "n_saturated": int(auc["saturated"].sum()),
        "psnr_cap": analysis.options.psnr_cap,
        "measures": measures,
        "has_stats": bool(len(stats)),
        "verdicts": verdict_table(stats, measures) if len(stats) else "",
        "counts": count_table(stats, measures) if len(stats) else "",
        "flagged_cells": len(flagged_cells(auc)),
        "threshold_table": threshold_markdown(auc),
        "metric_tables": tables,
        "sections": measure_sections(stats, measures) if len(stats) else [],
    }
    return render("summary.md.j2", **context)
