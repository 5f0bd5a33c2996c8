"""The resolution report: the same cells fit at several image sizes (a sweep whose one study key is
`dataset.resolution`, e.g. `dataset.resolution=32,64` over `model.hfs=32,64,128`), everything else equal. Whether
pre-fitting helps may depend on how hard an image is for the network, so the verdicts stand side by side per
resolution, with how hard each fit was (the random start's final PSNR, weights per image value) and what each job
cost. The protocol report includes the same section (`--resolution`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefit.model import n_weights
from prefit.records import interval, span_s
from prefit.schema import BASELINE, cell_label, cell_stem

from .figures import plot_cell_pair, plot_paired_stats, scheme_palette, write_figure
from .folders import Folder, Folders, as_paths
from .groups import cells_of, of_cell, present, study_columns
from .load import AnalysisError, job_info, span
from .pipeline import DEFAULT_OPTIONS, Analysis, load_analysis, write_text
from .reduce import measures_in
from .tables import CI_NAMES, count_table, duration, markdown_table, render, verdict_counts, verdict_table, verdict_text

KEY = "dataset.resolution"
DEFAULT_NAME = "resolution.md"
BY = "resolution"  # the column the tables group by: `32x32`, `64x64`


def side_label(side: int) -> str:
    return f"{side}x{side}"


@dataclass
class ByResolution:
    """A resolution sweep's tables with a `resolution` label (`64x64`) and its `side` (64) instead of the
    `dataset.resolution` column, and the resolutions in ascending order."""

    run: Analysis
    stats: pd.DataFrame
    auc: pd.DataFrame
    curves: pd.DataFrame
    sides: list[int]

    @property
    def labels(self) -> list[str]:
        return [side_label(s) for s in self.sides]


def split_by_resolution(run: Analysis) -> ByResolution:
    """The sweep's study key read as the resolution; a sweep that varies anything else is refused in one line."""
    study = study_columns(run.auc)
    if not study:
        raise AnalysisError(f"{run.sweep.name}: its jobs do not differ in {KEY}; run the cells at two in one sweep")
    if study != [KEY] or run.auc[KEY].isna().any():
        why = f"study keys: {', '.join(study)}; or a job without a recorded study"
        raise AnalysisError(f"{run.sweep.name}: its jobs differ in more than the cell and {KEY} ({why})")
    if run.auc["protocol"].nunique() > 1:
        raise AnalysisError(f"{run.sweep.name}: holds more than one protocol; give the report one")

    def relabel(frame: pd.DataFrame) -> pd.DataFrame:
        side = frame[KEY].astype("int64")
        return frame.drop(columns=KEY).assign(**{BY: side.map(side_label), "side": side})

    sides = sorted({int(s) for s in run.auc[KEY]})
    return ByResolution(run, relabel(run.stats), relabel(run.auc), relabel(run.curves), sides)


def difficulty_table(data: ByResolution) -> str:
    """Per cell and resolution: weights per image value, and how far the random start gets (final PSNR, the
    epochs to 30 dB): what 'hard for the network' means in numbers."""
    random = data.auc[data.auc["scheme"] == BASELINE]
    header = ["cell", "resolution", "weights / image values", "random: final PSNR (dB, mean ± std)"]
    header += ["random: reached 30 dB", "random: reached 40 dB", "triples"]
    rows = []
    for hls, hfs in cells_of(data.auc):
        for side in data.sides:
            part = random[(random["hls"] == hls) & (random["hfs"] == hfs) & (random["side"] == side)]
            if part.empty:
                continue
            final = part["final_psnr"].to_numpy(dtype=float)
            reached = [f"{int(part[f'epochs_to_{db}db'].notna().sum())} of {len(part)}" for db in (30, 40)]
            weights = f"{n_weights(hls, hfs) / (3 * side * side):.2f}"
            spread = f"{np.nanmean(final):.1f} ± {np.nanstd(final):.1f}"
            rows.append([cell_label(hls, hfs), side_label(side), weights, spread, *reached, part["triple"].nunique()])
    return markdown_table(header, rows)


def lead_table(curves: pd.DataFrame, labels: list[str]) -> str:
    """Per cell, scheme and resolution: up to which epoch the pre-fit start's mean PSNR is above the random
    start's (the last epoch it leads), and the gap of the means at the last epoch. `curves`: curves.parquet rows
    with the resolution column."""
    schemes = [s for s in present(curves["scheme"]) if s != BASELINE]
    names = ("leads random until epoch", "final gap, dB")
    header = ["cell", "scheme"] + [f"{k} ({label})" for label in labels for k in names]
    rows = []
    for hls, hfs in cells_of(curves):
        for scheme in schemes:
            row: list[object] = [cell_label(hls, hfs), scheme]
            for label in labels:
                part = curves[(curves["hls"] == hls) & (curves["hfs"] == hfs) & (curves[BY] == label)]
                means = part.pivot_table(index="epoch", columns="scheme", values="mean", observed=True)
                if scheme not in means or BASELINE not in means:
                    row += ["—", "—"]
                    continue
                ahead = means.index[(means[scheme] > means[BASELINE]).to_numpy()]
                last = int(means.index.max())
                row.append("never" if len(ahead) == 0 else ("the end" if ahead.max() == last else int(ahead.max())))
                row.append(f"{means[scheme].iloc[-1] - means[BASELINE].iloc[-1]:+.2f}")
            rows.append(row)
    return markdown_table(header, rows)


def jobs_table(data: ByResolution) -> tuple[str, float, list[str]]:
    """One row per job (cell, resolution, wall time, threads, device, members); the summed wall time; the devices."""
    jobs = job_info(data.run.sweep)
    jobs = jobs.assign(_folder=jobs["folder"].astype(str)).sort_values(["hls", "hfs", "_folder"]).to_dict("records")
    rows = []
    for j in jobs:
        wall = "—" if pd.isna(j["wall_s"]) else f"{j['wall_s']:,.0f} s"
        rows.append([cell_label(j["hls"], j["hfs"]), side_label(int(j[KEY])), wall, j["threads"], j["machine"]])
        rows[-1].append(j["members"])
    table = markdown_table(["cell", "resolution", "wall time", "threads", "device", "members"], rows)
    return table, float(np.nansum([j["wall_s"] for j in jobs])), sorted({j["machine"] for j in jobs})


def verdict_changes(data: ByResolution) -> list[str]:
    """Every cell, scheme and measure whose verdict is not the same at every resolution, as one line each:
    `3x64 same_class, epochs to 40 dB: **beats** (-79.5) at 32x32, unclear (+64.55) at 64x64`."""
    measures = {m.name: m for m in measures_in(data.auc.columns)}
    rows = data.stats[data.stats["measure"].isin(list(measures))]
    rank = {name: i for i, name in enumerate(measures)}
    rows = rows.assign(_size=rows["hls"] * rows["hfs"], _m=rows["measure"].map(rank))
    changed = []
    for (_, hls, hfs, scheme, _), part in rows.groupby(["_size", "hls", "hfs", "scheme", "_m"], observed=True):
        by_label = {str(r[BY]): r for r in part.to_dict("records")}
        if len({r["verdict"] for r in by_label.values()}) > 1:
            shown = ", ".join(f"{verdict_text(by_label[k])} at {k}" for k in data.labels if k in by_label)
            name = part["measure"].iloc[0]
            changed.append(f"{cell_label(hls, hfs)} {scheme}, {measures[name].label}: {shown}")
    return changed


def sweep_span(data: ByResolution) -> float | None:
    """Seconds from the first job's start to the last one's finish (jobs ran side by side), from run.json."""
    try:
        times = [interval(info) for info in data.run.sweep.runs.values()]
    except (KeyError, TypeError, ValueError):
        return None
    return span_s(times) if times else None


def resolution_context(data: ByResolution, figures_dir: Path, link_base: Path) -> tuple[dict[str, object], list[Path]]:
    """What templates/_resolution.md.j2 needs, and the figures written for it."""
    run, measures, stats, auc = data.run, measures_in(data.auc.columns), data.stats, data.auc
    palette = scheme_palette(auc["scheme"].unique())
    written, figures, links = [], {}, []

    def save_figure(fig: object, name: str) -> str:
        written.append(write_figure(fig, figures_dir / name))
        return Path(os.path.relpath(written[-1], link_base)).as_posix()

    for m in [m for m in measures if m.name in ("auc_capped", "epochs_to_30db")]:
        fig = plot_paired_stats(stats, palette, m, data.labels, column=BY)
        figures[m.label] = save_figure(fig, f"resolution_paired{m.suffix}.png")
    for hls, hfs in cells_of(auc):
        here = {k: of_cell(data.curves[data.curves[BY] == k], (hls, hfs)) for k in data.labels}
        fits = auc[(auc["hls"] == hls) & (auc["hfs"] == hfs)]
        triples = {k: fits[fits[BY] == k]["triple"].nunique() for k in data.labels}
        fig = plot_cell_pair(here, hls, hfs, triples, palette, run.options.psnr_cap, panel="{}")
        links.append({"cell": (hls, hfs), "link": save_figure(fig, f"resolution_psnr_{cell_stem(hls, hfs)}.png")})
    jobs, total, devices = jobs_table(data)
    return {
        "ci_name": CI_NAMES[run.options.ci_method],
        "root": run.sweep.name,
        "sources": sorted({str(info.get("data", "?")) for info in run.sweep.runs.values()}),
        "cells": cells_of(auc),
        "labels": data.labels,
        "protocol": str(auc["protocol"].iloc[0]),
        "psnr_cap": run.options.psnr_cap,
        "epochs": span(auc["n_epochs"]),
        "triples": span(auc.groupby(["hls", "hfs", BY])["triple"].nunique()),
        "schemes": present(auc["scheme"]),
        "difficulty": difficulty_table(data),
        "verdicts": verdict_table(stats, measures, BY, data.labels),
        "counts": count_table(stats, measures, BY, data.labels),
        "tally": sorted(verdict_counts(stats, measures, BY, data.labels), key=lambda c: data.labels.index(c["side"])),
        "figures": figures,
        "jobs": jobs,
        "total": total,
        "devices": devices,
        "changes": verdict_changes(data),
        "span": duration(sweep_span(data)),
        "curves": links,
        "lead": lead_table(data.curves, data.labels),
    }, written


def write_resolution_report(sweep: Folders, out: Folder | None = None, options=DEFAULT_OPTIONS) -> dict[str, Path]:
    """Read a resolution sweep's analysis (one folder, or several of one study) and write its report (beside the
    first folder by default) with its figures."""
    out = as_paths(sweep)[0].resolve().parent / DEFAULT_NAME if out is None else Path(out)
    data = split_by_resolution(load_analysis(sweep, options))
    ctx, written = resolution_context(data, out.with_suffix(""), out.parent)
    written.append(write_text(render("resolution.md.j2", r=ctx), out))
    return {Path(os.path.relpath(p, out.parent)).as_posix(): p for p in written}
