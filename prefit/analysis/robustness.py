"""The robustness report: two sweeps of the same cells and triples that differ only in arithmetic (device,
train.matmul_precision, engine, kernels, chunking). Do their verdicts agree?

    python -m prefit.report robustness SWEEP_A SWEEP_B [--out FILE] [analysis.psnr_cap=59] [analysis.ci_method=bca]

Both sweeps are analysed in memory. A cell (hls, hfs, protocol) is compared when both sweeps hold it with the
same triples: the same triple numbers, each fitting the same target image A (`target_index`) after the same
pre-fit images (`prefit_index`); cells whose triples differ are named and left out. Sweeps with variants
(prefit.analysis.variants) are compared by cell and variant: a variant of A against the same variant of B.
For every compared cell, scheme and measure the report sets the two paired differences from random side by
side (Δ, CI, p, verdict), says whether the verdicts agree, and how far the two sweeps' values of the same fit
lie apart. The figure plots each Δ of sweep A against the same Δ of sweep B. The run.json configs of the
compared jobs say what differs between the sweeps; keys outside ARITHMETIC_KEYS are flagged, as they change
more than arithmetic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prefit.config import ARITHMETIC_KEYS, RUNTIME_KEYS
from prefit.keys import flatten
from prefit.schema import BASELINE, CELL_KEYS

from .figures import plot_robustness, write_figure
from .load import AnalysisError
from .pipeline import Analysed, analyse, write_text
from .reduce import (
    DEFAULT_PSNR_CAP,
    MEASURE_BY_NAME,
    Measure,
    cell_order,
    measure_values,
    measures_in,
    protocol_order,
    sort_rows,
)
from .render import render
from .stats import DEFAULT_CI_METHOD, VERDICTS
from .summary import method_context
from .tables import RAW_FLAG, fmt, fmt_diff_ci, fmt_p, markdown_table, verdict_text
from .variants import VARIANT, group_label, variant_sort_key, with_variant

REPO = Path(__file__).resolve().parents[2]
NAMES = ("A", "B")


@dataclass
class Comparison:
    """Two analysed sweeps compared cell by cell: which cells, whether their triples match, the verdicts."""

    roots: tuple[Path, Path]
    cells: list[tuple]  # compared (hls, hfs, protocol[, variant]): in both, with the same triples
    only: tuple[list, list]  # cells in one sweep only
    mismatched: list[tuple]  # in both, but with different triples: left out
    triples: pd.DataFrame  # compare_triples of every cell in both
    table: pd.DataFrame  # one row per compared cell, scheme and measure: both sides' statistics, agree, gap
    measures: list[Measure]
    config: dict[str, tuple[str, str]] = field(default_factory=dict)  # differing run.json keys: (A, B) values

    @property
    def study_keys(self) -> list[str]:
        """Differing config keys that change what is computed, not only how."""
        return [k for k in self.config if k not in ARITHMETIC_KEYS and k != "device (run.json)"]


def compare_triples(a: pd.DataFrame, b: pd.DataFrame, cells: list[tuple], keys: list[str]) -> pd.DataFrame:
    """Per cell (values of `keys` in two AUC tables): the triples in each and in both, how many of those fit
    another A (target_index), how many fits of A pre-fit on another image (prefit_index), and the largest
    difference between the two sides' raw AUCs of the `random` fits."""
    rows = []
    for cell in cells:
        side = [t[np.logical_and.reduce([t[k] == v for k, v in zip(keys, cell, strict=True)])] for t in (a, b)]
        targets = [s.groupby("triple")["target_index"].agg(lambda v: tuple(sorted(set(v.dropna())))) for s in side]
        common = sorted(set(targets[0].index) & set(targets[1].index))
        prefit = [s.dropna(subset=["prefit_index"]).set_index(["scheme", "triple"])["prefit_index"] for s in side]
        shared = prefit[0].index.intersection(prefit[1].index)
        random_auc = [s[s["scheme"] == BASELINE].set_index("triple")["auc"].astype(float) for s in side]
        both = random_auc[0].index.intersection(random_auc[1].index)
        with np.errstate(invalid="ignore"):
            gap = (random_auc[0][both] - random_auc[1][both]).abs().dropna()
        rows.append(
            {
                **dict(zip(keys, cell, strict=True)),
                "triples_a": len(targets[0]),
                "triples_b": len(targets[1]),
                "common": len(common),
                "target_mismatch": int(sum(targets[0][t] != targets[1][t] for t in common)),
                "prefit_compared": len(shared),
                "prefit_mismatch": int((prefit[0][shared] != prefit[1][shared]).sum()),
                "random_auc_max_gap": float(gap.max()) if len(gap) else np.nan,
            }
        )
    columns = [
        *keys,
        "triples_a",
        "triples_b",
        "common",
        "target_mismatch",
        "prefit_compared",
        "prefit_mismatch",
        "random_auc_max_gap",
    ]
    return pd.DataFrame(rows, columns=columns)


def same_triples(check: pd.DataFrame) -> pd.Series:
    """Per row of compare_triples: both sides hold the same triples, on the same target and pre-fit images."""
    return (
        (check["triples_a"] == check["triples_b"])
        & (check["common"] == check["triples_a"])
        & (check["target_mismatch"] == 0)
        & (check["prefit_mismatch"] == 0)
    )


def config_differences(a: Analysed, b: Analysed, cells: list[tuple]) -> dict[str, tuple[str, str]]:
    """The run.json config keys (and the recorded device) whose values differ between the compared jobs (cells:
    (hls, hfs, protocol), or with a variant last)."""
    ignored = {"experiment", *RUNTIME_KEYS} - set(ARITHMETIC_KEYS)  # neither what nor how a job computes
    values: dict[str, tuple[set, set]] = {}
    variants = bool(cells) and len(cells[0]) > len(CELL_KEYS)
    for side, analysed in enumerate((a, b)):
        for folder, cell in analysed.sweep.job_cells.items():
            run = analysed.sweep.runs.get(folder) or {}
            if (*cell, *([analysed.sweep.variants.get(folder, "")] if variants else [])) not in cells:
                continue
            flat = flatten(run.get("config", {})) | {"device (run.json)": run.get("device", "?")}
            for key, value in flat.items():
                values.setdefault(key, (set(), set()))[side].add(str(value))
    return {
        k: (", ".join(sorted(va)) or "—", ", ".join(sorted(vb)) or "—")
        for k, (va, vb) in sorted(values.items())
        if va != vb and k not in ignored and not k.startswith(("model.", "hydra."))
    }


def fit_gaps(a: pd.DataFrame, b: pd.DataFrame, measures: list[Measure], keys: list[str] = CELL_KEYS) -> pd.DataFrame:
    """Per cell (the values of `keys`), scheme and measure: the largest |value in A − value in B| over the
    triples (same fit)."""
    both = a.merge(b, on=[*keys, "scheme", "triple"], suffixes=("_a", "_b"))
    parts = []
    for m in measures:
        side = [measure_values(both.rename(columns={f"{c}_{s}": c for c in (m.name, "n_epochs")}), m) for s in "ab"]
        with np.errstate(invalid="ignore"):
            gap = (side[0] - side[1]).abs()
        frame = both[[*keys, "scheme"]].assign(measure=m.name, gap=gap.where(np.isfinite(gap)))
        parts.append(frame.groupby([*keys, "scheme", "measure"])["gap"].max().reset_index())
    return pd.concat(parts, ignore_index=True)


def compare(a: Analysed, b: Analysed) -> Comparison:
    """Compare two analysed sweeps cell by cell (cell and variant when either has variants); AnalysisError when
    no cell of both holds the same triples."""
    variants = VARIANT in a.auc.columns or VARIANT in b.auc.columns
    group = [*CELL_KEYS, VARIANT] if variants else list(CELL_KEYS)
    auc = [with_variant(x.auc) if variants else x.auc for x in (a, b)]
    longs = [with_variant(x.long) if variants else x.long for x in (a, b)]
    cells_a, cells_b = (
        {(int(k[0]), int(k[1]), *map(str, k[2:])) for k in t[group].itertuples(index=False, name=None)} for t in auc
    )
    rank = {c: i for i, c in enumerate(cell_order(c[:2] for c in cells_a | cells_b))}
    prank = {p: i for i, p in enumerate(protocol_order(c[2] for c in cells_a | cells_b))}
    both = sorted(
        cells_a & cells_b, key=lambda c: (rank[c[:2]], prank[c[2]], variant_sort_key(c[3] if variants else ""))
    )
    names = [f"{a.sweep.root}: {_cells(cells_a)}", f"{b.sweep.root}: {_cells(cells_b)}"]
    if not both:
        raise AnalysisError(f"no cell is in both sweeps ({names[0]}; {names[1]})")
    triples = compare_triples(auc[0], auc[1], both, group)
    ok = same_triples(triples)
    cells = [c for c, good in zip(both, ok, strict=True) if good]
    if not cells:
        raise AnalysisError(
            f"no cell of both sweeps holds the same triples (compared {_cells(both)}: the target or "
            "pre-fit images, or the triple numbers, differ)"
        )
    measures = [m for m in measures_in(a.auc.columns) if m.name in b.auc.columns]
    keys = [*group, "scheme", "measure"]
    stats = ["n", "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "verdict", "flag_raw_auc"]
    side = [x[[tuple(k) in set(cells) for k in x[group].itertuples(index=False, name=None)]] for x in longs]
    table = side[0][[*keys, *stats]].merge(side[1][[*keys, *stats]], on=keys, suffixes=("_a", "_b"), how="outer")
    table = table[table["measure"].isin([m.name for m in measures])]
    table["agree"] = table["verdict_a"] == table["verdict_b"]
    table = table.merge(fit_gaps(auc[0], auc[1], measures, group), on=keys, how="left")
    rank = {m.name: i for i, m in enumerate(measures)}  # measures in lead order, then cells and schemes
    table = sort_rows(table, [*group, "scheme"]).assign(_m=lambda t: t["measure"].map(rank))
    table = table.sort_values("_m", kind="stable").drop(columns="_m").reset_index(drop=True)
    only = (sorted(cells_a - cells_b), sorted(cells_b - cells_a))
    mismatched = [c for c, good in zip(both, ok, strict=True) if not good]
    return Comparison(
        (a.sweep.root, b.sweep.root), cells, only, mismatched, triples, table, measures, config_differences(a, b, cells)
    )


def _cells(cells: object) -> str:
    """Cells (hls, hfs[, protocol[, variant]]) in a sentence: `2x32, 3x32`, the protocol only when several."""
    found = sorted(
        ((int(c[0]), int(c[1]), *c[2:]) for c in cells),
        key=lambda c: (c[0] * c[1], c[0], c[1], *c[2:3], variant_sort_key(c[3] if len(c) > 3 else "")),
    )
    several = len({c[2] for c in found if len(c) > 2}) > 1
    return (
        ", ".join(
            group_label(c[0], c[1], c[3] if len(c) > 3 else "") + (f" ({c[2]})" if several else "") for c in found
        )
        or "none"
    )


def agreement_table(comparison: Comparison) -> str:
    """Per measure: how many verdicts were compared, how many agree, the verdicts of each side, the largest
    difference between the two sides' Δ and between their values of one fit."""
    header = ["measure", "comparisons", "agree"] + [f"beats / worse / unclear ({n})" for n in NAMES]
    header += ["largest |Δ A − Δ B|", "largest per-fit gap"]
    rows = []
    for m in comparison.measures:
        t = comparison.table[comparison.table["measure"] == m.name]
        counts = [" / ".join(str(int((t[f"verdict_{s}"] == v).sum())) for v in VERDICTS[:3]) for s in "ab"]
        gap = (t["mean_diff_a"] - t["mean_diff_b"]).abs()
        rows.append([m.label, len(t), int(t["agree"].sum()), *counts, fmt(gap.max()), fmt(t["gap"].max())])
    return markdown_table(header, rows)


def side_by_side(comparison: Comparison, measure: Measure, only_disagreements: bool = False) -> str:
    """One measure's Δ [CI], p and verdict in A and in B, per compared cell and scheme, and whether they agree."""
    t = comparison.table[comparison.table["measure"] == measure.name]
    if only_disagreements:
        t = t[~t["agree"]]
    several = len({c[2] for c in comparison.cells}) > 1
    header = ["cell", "scheme"] + [f"{col} ({n})" for n in NAMES for col in ("Δ [CI]", "p", "verdict")]
    header += ["agree", "largest per-fit gap"]
    rows = []
    for _, r in t.iterrows():
        label = group_label(int(r["hls"]), int(r["hfs"]), str(r.get(VARIANT, "")))
        row = [label + (f" ({r['protocol']})" if several else ""), r["scheme"]]
        for s in "ab":
            side = {k: r[f"{k}_{s}"] for k in ("mean_diff", "ci_low", "ci_high", "verdict", "flag_raw_auc")}
            side["measure"] = measure.name
            flag = f" {RAW_FLAG}" if measure.name == "auc" and bool(side["flag_raw_auc"]) else ""
            row += [
                fmt_diff_ci(side) + flag,
                fmt_p(r[f"p_wilcoxon_{s}"]),
                verdict_text(side, with_diff=False).replace(f" {RAW_FLAG}", ""),
            ]
        row += ["yes" if r["agree"] else "**no**", fmt(r["gap"])]
        rows.append(row)
    return markdown_table(header, rows)


def triples_text(check: pd.DataFrame) -> dict[str, object]:
    """What compare_triples found, for the templates: cells checked, triples per cell, the mismatched cells."""
    gap = check["random_auc_max_gap"].dropna()
    keys = [k for k in (*CELL_KEYS, VARIANT) if k in check.columns]
    return {
        "n_both": len(check),
        "triples": ", ".join(sorted({str(int(v)) for v in check["common"]})),
        "prefit_compared": int(check["prefit_compared"].sum()),
        "random_gap": fmt(float(gap.max())) if len(gap) else None,
        "mismatched": [
            {
                "cell": _cells([tuple(r[k] for k in keys)]),
                "a": int(r["triples_a"]),
                "b": int(r["triples_b"]),
                "common": int(r["common"]),
                "targets": int(r["target_mismatch"]),
                "prefits": int(r["prefit_mismatch"]),
            }
            for _, r in check[~same_triples(check)].iterrows()
        ],
    }


def context(comparison: Comparison, figure: str | None, ci_method: str, psnr_cap: float | None) -> dict[str, object]:
    """Everything robustness.md.j2 (and the protocol report's robustness section) places."""
    t = comparison.table
    lead = comparison.measures[0] if comparison.measures else MEASURE_BY_NAME["auc"]
    return {
        **method_context(ci_method),
        "roots": comparison.roots,
        "names": NAMES,
        "psnr_cap": psnr_cap,
        "cells": _cells(comparison.cells),
        "n_cells": len(comparison.cells),
        "only": [_cells(c) if c else "" for c in comparison.only],
        "check": triples_text(comparison.triples),
        "config": comparison.config,
        "study_keys": comparison.study_keys,
        "n_compared": len(t),
        "n_agree": int(t["agree"].sum()),
        "agreement": agreement_table(comparison),
        "figure": figure,
        "lead": lead.label,
        "lead_agree": int(t[t["measure"] == lead.name]["agree"].sum()),
        "lead_compared": int((t["measure"] == lead.name).sum()),
        "disagreements": [
            {"label": m.label, "table": side_by_side(comparison, m, True)}
            for m in comparison.measures
            if not t[t["measure"] == m.name]["agree"].all()
        ],
        "tables": [{"label": m.label, "table": side_by_side(comparison, m)} for m in comparison.measures],
    }


def default_out(sweep_a: str | os.PathLike, sweep_b: str | os.PathLike) -> Path:
    """Beside sweep A: `robustness_<A>_vs_<B>.md` in A's parent folder (never inside the repository's docs/)."""
    a, b = Path(sweep_a).resolve(), Path(sweep_b).resolve()
    out = a.parent / f"robustness_{a.name}_vs_{b.name}.md"
    if out.is_relative_to(REPO / "docs"):
        raise AnalysisError(f"the default report {out} would land in docs/: give --out")
    return out


def write_comparison(comparison: Comparison, out: Path, ci_method: str, psnr_cap: float | None) -> dict[str, Path]:
    """The report of a comparison at `out` and its figure beside it (same name, .png)."""
    figure = out.with_suffix(".png")
    if figure == out:
        raise AnalysisError(f"{out}: the report's name needs a suffix (e.g. robustness.md), its figure goes beside it")
    written = {figure.name: write_figure(plot_robustness(comparison.table, comparison.measures, NAMES), figure)}
    r = context(comparison, figure.name, ci_method, psnr_cap)
    text = render("robustness.md.j2", **method_context(ci_method), r=r)
    written[out.name] = write_text(text, out)
    return written


def write_robustness_report(
    sweep_a: str | os.PathLike,
    sweep_b: str | os.PathLike,
    out: str | os.PathLike | None = None,
    psnr_cap: float | None = DEFAULT_PSNR_CAP,
    ci_method: str = DEFAULT_CI_METHOD,
) -> dict[str, Path]:
    """Analyse both sweeps, compare them, and write the report (default: `default_out`) and its figure;
    returns {file name: path}."""
    out = Path(out) if out is not None else default_out(sweep_a, sweep_b)
    a, b = analyse(sweep_a, psnr_cap, ci_method), analyse(sweep_b, psnr_cap, ci_method)
    return write_comparison(compare(a, b), out, ci_method, psnr_cap)
