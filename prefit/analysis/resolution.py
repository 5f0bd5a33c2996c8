"""The resolution report: the same cells fit at two (or more) image sizes, everything else equal.

    python -m prefit.report resolution SWEEP [--out FILE] [--psnr-cap DB] [--ci-method METHOD]

SWEEP is one sweep whose jobs differ only in their cell and `dataset.resolution` (for example
`dataset.resolution=32,64` over `model.hfs=32,64,128` on the same `image_dir` folder), so that its one study key
is the resolution (the `dataset.resolution` column of its analysis). At 32 x 32 a SIREN of 3 x 128 has over ten
times more weights than the image has values; at 64 x 64 three times: whether pre-fitting helps may depend on how
hard the image is for the network, and this report sets the verdicts side by side per resolution, with how hard
each fit was (the random start's final PSNR, weights per image value) and what each job cost. The protocol report
includes the same section with `--resolution SWEEP` (docs/findings.md).
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
from .groups import cells_of, present, study_columns
from .load import AnalysisError, span
from .pipeline import DEFAULT_OPTIONS, Analysis, Options, load_analysis, write_text
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
        raise AnalysisError(
            f"{run.sweep.root}: its jobs do not differ in {KEY}; run the cells at two resolutions "
            f"in one sweep (e.g. {KEY}=32,64)"
        )
    if study != [KEY] or run.auc[KEY].isna().any():
        raise AnalysisError(
            f"{run.sweep.root}: its jobs differ in more than the cell and {KEY} (study keys: {', '.join(study)}; "
            "or a job without a recorded study); the resolution report compares one study at several resolutions"
        )
    if run.auc["protocol"].nunique() > 1:
        raise AnalysisError(f"{run.sweep.root}: holds more than one protocol; give the report one")

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
    header = ["cell", "scheme"] + [
        f"{k} ({label})" for label in labels for k in ("leads random until epoch", "final gap, dB")
    ]
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
    """One row per job (cell, resolution, wall time, device); the summed wall time; the devices."""
    sweep = data.run.sweep
    rows, total, devices = [], 0.0, set()
    for job in sorted(sweep.jobs.to_dict("records"), key=lambda j: (j["hls"], j["hfs"], str(j["folder"]))):
        info = sweep.runs.get(job["folder"]) or {}
        side = info.get("resolution") or ((info.get("study") or {}).get("dataset") or {}).get("resolution")
        wall = info.get("wall_s")
        total += float(wall) if isinstance(wall, (int, float)) else 0.0
        device = str(info.get("device", "?")) + (f" ({info['device_name']})" if info.get("device_name") else "")
        devices.add(device)
        wall_text = f"{wall:,.0f} s" if isinstance(wall, (int, float)) else "—"
        rows.append(
            [
                cell_label(job["hls"], job["hfs"]),
                side_label(int(side)) if side else "?",
                wall_text,
                info.get("threads", "—"),
                device,
                info.get("members", "—"),
            ]
        )
    header = ["cell", "resolution", "wall time", "threads", "device", "members"]
    return markdown_table(header, rows), total, sorted(devices)


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


def context(data: ByResolution, figures_dir: Path, link_base: Path) -> tuple[dict[str, object], list[Path]]:
    """What templates/_resolution.md.j2 needs, and the figures written for it."""
    run, measures, stats, auc = data.run, measures_in(data.auc.columns), data.stats, data.auc
    palette = scheme_palette(auc["scheme"].unique())
    written, figures, links = [], {}, []

    def figure(fig: object, name: str) -> str:
        written.append(write_figure(fig, figures_dir / name))
        return Path(os.path.relpath(written[-1], link_base)).as_posix()

    for m in [m for m in measures if m.name in ("auc_capped", "epochs_to_30db")]:
        figures[m.label] = figure(
            plot_paired_stats(stats, palette, m, data.labels, column=BY), f"resolution_paired{m.suffix}.png"
        )
    for hls, hfs in cells_of(auc):
        here = {
            k: data.curves[(data.curves["hls"] == hls) & (data.curves["hfs"] == hfs) & (data.curves[BY] == k)]
            for k in data.labels
        }
        fits = auc[(auc["hls"] == hls) & (auc["hfs"] == hfs)]
        triples = {k: fits[fits[BY] == k]["triple"].nunique() for k in data.labels}
        fig = plot_cell_pair(here, hls, hfs, triples, palette, run.options.psnr_cap, panel="{}")
        links.append({"cell": (hls, hfs), "link": figure(fig, f"resolution_psnr_{cell_stem(hls, hfs)}.png")})
    jobs, total, devices = jobs_table(data)
    return {
        "ci_name": CI_NAMES[run.options.ci_method],
        "root": run.sweep.root,
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


def write_resolution_report(
    sweep: str | os.PathLike, out: str | os.PathLike | None = None, options: Options = DEFAULT_OPTIONS
) -> dict[str, Path]:
    """Read a resolution sweep's analysis and write its report (beside the sweep by default) with its figures."""
    out = Path(sweep).resolve().parent / DEFAULT_NAME if out is None else Path(out)
    ctx, written = context(split_by_resolution(load_analysis(sweep, options)), out.with_suffix(""), out.parent)
    written.append(write_text(render("resolution.md.j2", r=ctx), out))
    return {Path(os.path.relpath(p, out.parent)).as_posix(): p for p in written}
