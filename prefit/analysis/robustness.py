"""The robustness report: two sweeps of the same cells and triples that differ only in arithmetic (device,
train.matmul_precision, engine, kernels, chunking). Do their verdicts agree?

    python -m prefit.report robustness SWEEP_A SWEEP_B [--out FILE] [--psnr-cap DB] [--ci-method METHOD]

Both sweeps' analyses are read (prefit.analysis.pipeline.load_analysis). A cell (hls, hfs, protocol and the
sweeps' study keys, prefit.analysis.groups) is compared when both sweeps hold it with the same triples: the same
triple numbers, each fitting the same target image A (`target_index`) after the same pre-fit images
(`prefit_index`); cells whose triples differ are named and left out. For every compared cell, scheme and measure
the report sets the two paired differences from random side by side (Δ, CI, p, verdict), says whether the
verdicts agree, and how far the two sweeps' values of the same fit lie apart. The figure plots each Δ of sweep A
against the same Δ of sweep B. The run.json configs of the compared jobs say what differs between the sweeps;
keys outside ARITHMETIC_KEYS are flagged, as they change more than arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prefit.config import ARITHMETIC_KEYS, study_of
from prefit.keys import flatten
from prefit.schema import BASELINE

from .figures import plot_robustness, write_figure
from .folders import REPO, AnalysisError, Folder, Folders, as_paths
from .groups import categorize, group_keys, group_label, groups, sort_table, study_columns
from .pipeline import DEFAULT_OPTIONS, Analysis, Options, load_analysis, write_text
from .reduce import MEASURE_BY_NAME, Measure, by, measure_values, measures_in
from .stats import VERDICTS
from .tables import CI_NAMES, flag_mark, fmt, fmt_diff_ci, fmt_p, markdown_table, render, verdict_text

NAMES = ("A", "B")
SIDE_COLUMNS = ["n", "delta", "ci_low", "ci_high", "p", "verdict", "flag_raw_auc"]  # each sweep's, _a and _b
TRIPLE_COUNTS = ["triples_a", "triples_b", "common", "target_mismatch", "prefit_compared", "prefit_mismatch"]


@dataclass
class Comparison:
    """Two analysed sweeps compared cell by cell: which cells, whether their triples match, the verdicts."""

    roots: tuple[str, str]  # each side's sweep folder(s), as text
    keys: list[str]  # the group columns: hls, hfs, protocol and the study keys
    cells: list[tuple]  # compared groups (values of `keys`): in both, with the same triples
    only: tuple[list, list]  # groups in one sweep only
    mismatched: list[tuple]  # in both, but with different triples: left out
    triples: pd.DataFrame  # compare_triples of every group in both
    table: pd.DataFrame  # one row per compared group, scheme and measure: both sides' statistics, agree, gap
    measures: list[Measure]
    config: dict[str, tuple[str, str]] = field(default_factory=dict)  # differing run.json keys: (A, B) values

    @property
    def study_keys(self) -> list[str]:
        """Differing config keys that change what is computed, not only how."""
        return [k for k in self.config if k not in ARITHMETIC_KEYS and not k.endswith(" (run.json)")]


def compare_triples(a: pd.DataFrame, b: pd.DataFrame, cells: list[tuple], keys: list[str]) -> pd.DataFrame:
    """Per cell (values of `keys` in two AUC tables): the triples in each and in both, how many of those fit
    another A (target_index), how many fits of A pre-fit on another image (prefit_index), and the largest
    difference between the two sides' raw AUCs of the `random` fits."""
    tables = [dict(tuple(by(plain(t), keys))) for t in (a, b)]
    rows = []
    for cell in cells:
        side = [t.get(cell, plain(a).iloc[:0]) for t in tables]
        targets = [s.groupby("triple")["target_index"].agg(lambda v: tuple(sorted(set(v.dropna())))) for s in side]
        common = sorted(set(targets[0].index) & set(targets[1].index))
        prefit = [s.dropna(subset=["prefit_index"]).set_index(["scheme", "triple"])["prefit_index"] for s in side]
        shared = prefit[0].index.intersection(prefit[1].index)
        random_auc = [s[s["scheme"] == BASELINE].set_index("triple")["auc"].astype(float) for s in side]
        both = random_auc[0].index.intersection(random_auc[1].index)
        with np.errstate(invalid="ignore"):
            gap = (random_auc[0][both] - random_auc[1][both]).abs().dropna()
        mismatch = int(sum(targets[0][t] != targets[1][t] for t in common))
        counts = [len(targets[0]), len(targets[1]), len(common), mismatch, len(shared)]
        counts.append(int((prefit[0][shared] != prefit[1][shared]).sum()))
        rows.append([*cell, *counts, float(gap.max()) if len(gap) else np.nan])
    return pd.DataFrame(rows, columns=[*keys, *TRIPLE_COUNTS, "random_auc_max_gap"])


RUN_FACTS = ("device", "step")  # what run.json records of how a job computed: the device, the step that ran


def same_triples(check: pd.DataFrame) -> pd.Series:
    """Per row of compare_triples: both sides hold the same triples, on the same target and pre-fit images."""
    same = (check["triples_a"] == check["triples_b"]) & (check["common"] == check["triples_a"])
    return same & (check["target_mismatch"] == 0) & (check["prefit_mismatch"] == 0)


def config_differences(a: Analysis, b: Analysis, cells: list[tuple], keys: list[str]) -> dict[str, tuple[str, str]]:
    """The keys whose values differ between the jobs of the compared cells: each job's study as run.json recorded it
    (`dataset.path` resolved where the job ran, so two spellings of one folder agree), the keys that change only the
    arithmetic (prefit.keys.flatten: a null value is an absent key), and the recorded device and step (`RUN_FACTS`)."""
    values: dict[str, tuple[set, set]] = {}
    for side, analysis in enumerate((a, b)):
        for folder in plain(analysis.sweep.jobs, keys, cells)["folder"]:
            run = analysis.sweep.runs.get(folder) or {}
            config = run.get("config", {})
            study = run["study"] if isinstance(run.get("study"), dict) else study_of(dict(config))
            arithmetic = {k: v for k, v in flatten(config).items() if k in ARITHMETIC_KEYS}
            facts = {f"{fact} (run.json)": run.get(fact, "?") for fact in RUN_FACTS}
            for key, value in (flatten(study) | arithmetic | facts).items():
                values.setdefault(key, (set(), set()))[side].add(str(value))
    ignored = {k for k in values if k.startswith(("model.", "hydra."))}  # the cell; Hydra's own
    differ = {k: sides for k, sides in sorted(values.items()) if sides[0] != sides[1] and k not in ignored}
    return {k: tuple(", ".join(sorted(side)) or "—" for side in sides) for k, sides in differ.items()}


def plain(frame: pd.DataFrame, keys: list[str] = (), cells: list[tuple] | None = None) -> pd.DataFrame:
    """Scheme and protocol as text, so that two sweeps' tables merge on them; only the rows of `cells` (values of
    `keys`) when given."""
    if cells is not None:
        frame = frame[[key in cells for key in frame[keys].itertuples(index=False, name=None)]]
    return frame.astype({c: str for c in ("scheme", "protocol") if c in frame.columns})


def fit_gaps(a: pd.DataFrame, b: pd.DataFrame, measures: list[Measure], keys: list[str]) -> pd.DataFrame:
    """Per cell (the values of `keys`), scheme and measure: the largest |value in A − value in B| over the
    triples (same fit)."""
    both = plain(a).merge(plain(b), on=[*keys, "scheme", "triple"], suffixes=("_a", "_b"))
    parts = []
    for m in measures:
        names = [{f"{c}_{s}": c for c in (m.name, "n_epochs")} for s in "ab"]
        side = [measure_values(both.rename(columns=columns), m.name) for columns in names]
        with np.errstate(invalid="ignore"):
            gap = (side[0] - side[1]).abs()
        frame = both[[*keys, "scheme"]].assign(measure=m.name, gap=gap.where(np.isfinite(gap)))
        parts.append(by(frame, [*keys, "scheme", "measure"])["gap"].max().reset_index())
    return pd.concat(parts, ignore_index=True)


def compare(a: Analysis, b: Analysis) -> Comparison:
    """Compare two analysed sweeps cell by cell; AnalysisError when they differ in their study keys, or when no
    cell of both holds the same triples."""
    keys = group_keys(a.auc)
    if keys != group_keys(b.auc):
        shown = "; ".join(f"{x.sweep.name}: {', '.join(study_columns(x.auc)) or 'none'}" for x in (a, b))
        raise AnalysisError(f"the sweeps vary different study keys ({shown}): compare sweeps of one study")
    found = [set(x.auc[keys].drop_duplicates().itertuples(index=False, name=None)) for x in (a, b)]
    everything = [tuple(g[k] for k in keys) for g in groups(categorize(pd.concat([plain(a.auc), plain(b.auc)])))]
    both = [c for c in everything if c in found[0] and c in found[1]]
    if not both:
        each = [f"{x.sweep.name}: {_cells([c for c in everything if c in f], keys)}" for x, f in zip((a, b), found)]
        raise AnalysisError(f"no cell is in both sweeps ({'; '.join(each)})")
    triples = compare_triples(a.auc, b.auc, both, keys)
    ok = same_triples(triples).tolist()
    cells = [c for c, good in zip(both, ok) if good]
    if not cells:
        why = "the target or pre-fit images, or the triple numbers, differ"
        raise AnalysisError(f"no cell of both sweeps holds the same triples (compared {_cells(both, keys)}: {why})")
    measures = [m for m in measures_in(a.auc.columns) if m.name in b.auc.columns]
    on = [*keys, "scheme", "measure"]
    side = [plain(x.stats, keys, cells)[[*on, *SIDE_COLUMNS]] for x in (a, b)]
    table = side[0].merge(side[1], on=on, suffixes=("_a", "_b"), how="outer")
    table = table[table["measure"].isin([m.name for m in measures])]
    table["agree"] = table["verdict_a"] == table["verdict_b"]
    table = categorize(table.merge(fit_gaps(a.auc, b.auc, measures, keys), on=on, how="left"))
    rank = {m.name: i for i, m in enumerate(measures)}  # measures in lead order, then cells and schemes
    table = sort_table(table).assign(_m=lambda t: t["measure"].map(rank))
    table = table.sort_values("_m", kind="stable").drop(columns="_m").reset_index(drop=True)
    only = ([c for c in everything if c in found[0] - found[1]], [c for c in everything if c in found[1] - found[0]])
    mismatched, config = [c for c, good in zip(both, ok) if not good], config_differences(a, b, cells, keys)
    return Comparison((a.sweep.name, b.sweep.name), keys, cells, only, mismatched, triples, table, measures, config)


def _cells(cells: object, keys: list[str]) -> str:
    """Cells (values of `keys`) in a sentence: `2x32, 3x32`, the protocol named only when several."""
    rows, study = [dict(zip(keys, c)) for c in cells], study_columns(keys)
    several = len({r.get("protocol") for r in rows}) > 1
    return ", ".join(group_label(r, study) + (f" ({r['protocol']})" if several else "") for r in rows) or "none"


def agreement_table(comparison: Comparison) -> str:
    """Per measure: how many verdicts were compared, how many agree, the verdicts of each side, the largest
    difference between the two sides' Δ and between their values of one fit."""
    header = ["measure", "comparisons", "agree"] + [f"beats / worse / unclear ({n})" for n in NAMES]
    header += ["largest |Δ A − Δ B|", "largest per-fit gap"]
    rows = []
    for m in comparison.measures:
        t = comparison.table[comparison.table["measure"] == m.name]
        counts = [" / ".join(str(int((t[f"verdict_{s}"] == v).sum())) for v in VERDICTS[:3]) for s in "ab"]
        gap = (t["delta_a"] - t["delta_b"]).abs()
        rows.append([m.label, len(t), int(t["agree"].sum()), *counts, fmt(gap.max()), fmt(t["gap"].max())])
    return markdown_table(header, rows)


def side_by_side(comparison: Comparison, measure: Measure, only_disagreements: bool = False) -> str:
    """One measure's Δ [CI], p and verdict in A and in B, per compared cell and scheme, and whether they agree."""
    t = comparison.table[comparison.table["measure"] == measure.name]
    t = t[~t["agree"]] if only_disagreements else t
    several = len({c[2] for c in comparison.cells}) > 1
    header = ["cell", "scheme"] + [f"{col} ({n})" for n in NAMES for col in ("Δ [CI]", "p", "verdict")]
    rows, study = [], study_columns(comparison.keys)
    for r in t.to_dict("records"):
        row = [group_label(r, study) + (f" ({r['protocol']})" if several else ""), r["scheme"]]
        for s in "ab":
            side = {k: r[f"{k}_{s}"] for k in SIDE_COLUMNS} | {"measure": measure.name}
            row += [fmt_diff_ci(side) + flag_mark(side), fmt_p(side["p"]), verdict_text(side, False, False)]
        rows.append(row + ["yes" if r["agree"] else "**no**", fmt(r["gap"])])
    return markdown_table(header + ["agree", "largest per-fit gap"], rows)


def triples_text(check: pd.DataFrame, keys: list[str]) -> dict[str, object]:
    """What compare_triples found, for the templates: cells checked, triples per cell, the mismatched cells."""
    gap, odd = check["random_auc_max_gap"].dropna(), check[~same_triples(check)].to_dict("records")
    return {
        "n_both": len(check),
        "triples": ", ".join(sorted({str(int(v)) for v in check["common"]})),
        "prefit_compared": int(check["prefit_compared"].sum()),
        "random_gap": fmt(float(gap.max())) if len(gap) else None,
        "mismatched": [{"cell": _cells([tuple(r[k] for k in keys)], keys), **r} for r in odd],
    }


def comparison_context(comparison: Comparison, figure: str | None, options: Options) -> dict[str, object]:
    """Everything robustness.md.j2 (and the protocol report's robustness section) places."""
    t, keys = comparison.table, comparison.keys
    lead = comparison.measures[0] if comparison.measures else MEASURE_BY_NAME["auc"]
    disagree = [m for m in comparison.measures if not t[t["measure"] == m.name]["agree"].all()]
    return {
        "ci_name": CI_NAMES[options.ci_method],
        "roots": comparison.roots,
        "names": NAMES,
        "psnr_cap": options.psnr_cap,
        "cells": _cells(comparison.cells, keys),
        "n_cells": len(comparison.cells),
        "only": [_cells(c, keys) if c else "" for c in comparison.only],
        "check": triples_text(comparison.triples, keys),
        "config": comparison.config,
        "study_keys": comparison.study_keys,
        "n_compared": len(t),
        "n_agree": int(t["agree"].sum()),
        "agreement": agreement_table(comparison),
        "figure": figure,
        "lead": lead.label,
        "lead_agree": int(t[t["measure"] == lead.name]["agree"].sum()),
        "lead_compared": int((t["measure"] == lead.name).sum()),
        "disagreements": [{"label": m.label, "table": side_by_side(comparison, m, True)} for m in disagree],
        "tables": [{"label": m.label, "table": side_by_side(comparison, m)} for m in comparison.measures],
    }


def default_out(sweep_a: Folders, sweep_b: Folders) -> Path:
    """Beside sweep A: `robustness_<A>_vs_<B>.md` in A's parent folder (never inside the repository's docs/); of
    several folders, the first."""
    a, b = as_paths(sweep_a)[0].resolve(), as_paths(sweep_b)[0].resolve()
    out = a.parent / f"robustness_{a.name}_vs_{b.name}.md"
    if out.is_relative_to(REPO / "docs"):
        raise AnalysisError(f"the default report {out} would land in docs/: give --out")
    return out


def write_comparison(comparison: Comparison, out: Path, options: Options) -> dict[str, Path]:
    """The report of a comparison at `out` and its figure beside it (same name, .png)."""
    figure = out.with_suffix(".png")
    if figure == out:
        raise AnalysisError(f"{out}: the report's name needs a suffix (e.g. robustness.md), its figure goes beside it")
    written = {figure.name: write_figure(plot_robustness(comparison.table, comparison.measures, NAMES), figure)}
    r = comparison_context(comparison, figure.name, options)
    text = render("robustness.md.j2", ci_name=r["ci_name"], r=r)
    return written | {out.name: write_text(text, out)}


def write_robustness_report(sweep_a: Folders, sweep_b: Folders, out: Folder | None = None, options=DEFAULT_OPTIONS):
    """Read both sweeps' analyses, compare them, and write the report (default: `default_out`) and its figure;
    returns {file name: path}."""
    out = Path(out) if out is not None else default_out(sweep_a, sweep_b)
    comparison = compare(load_analysis(sweep_a, options), load_analysis(sweep_b, options))
    return write_comparison(comparison, out, options)
