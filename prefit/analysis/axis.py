"""Reports over a study axis: one sweep whose jobs differ, besides their cell, in one config key whose values label
groups: `dataset.resolution` (prefit.analysis.resolution: `32x32`, `64x64`) or `model.family`
(prefit.analysis.families: `siren`, `ffn`, `gauss`). Whether pre-fitting helps may depend on that key, so the
verdicts stand side by side per label, with how hard each fit was (the random start's final PSNR, weights per
image value), the mean curves one panel per label, up to when a pre-fit start leads, which verdicts change and what
each job cost. Keys that a value sets along with it (a family's own constants and learning rate) may vary with the
key, one setting per label; a sweep that varies anything else is refused in one line, since its groups would mix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefit.choices import CIFAR_SIDE, IMAGE_DIR_SIDE
from prefit.config import study_of
from prefit.keys import flatten
from prefit.model import n_weights
from prefit.records import interval, span_s
from prefit.schema import BASELINE, cell_label, cell_stem

from .figures import plot_cell_pair, plot_paired_stats, scheme_palette, write_figure
from .folders import Folder, Folders, as_paths, relative
from .groups import cells_of, keys_text, of_cell, present, study_columns
from .load import AnalysisError, job_info, span
from .pipeline import DEFAULT_OPTIONS, Analysis, Options, load_analysis, write_text
from .reduce import measures_in
from .tables import CI_NAMES, count_table, duration, markdown_table, render, verdict_counts, verdict_table, verdict_text

PAIRED = ("auc_capped", "epochs_to_30db")  # the measures drawn as paired differences per label


@dataclass(frozen=True)
class Axis:
    """A study key that labels groups, and how its report words and orders them."""

    key: str  # the study key: `dataset.resolution`
    by: str  # the label's column in the tables and its word in their headers: `resolution`
    name: str  # the report (`{name}.md`, template `{name}.md.j2`) and its figures' prefix
    label: Callable[[Any], str]  # a value as a label: 64 -> `64x64`
    order: Callable[[Any], Any]  # the sort key of a value
    hint: str  # how to run a sweep over the key, for one that does not vary it
    implied: tuple[str, ...] = ()  # keys each value sets along with it, allowed to vary with it
    at: str = "at"  # the verdict-change lines' preposition: `**beats** at 32x32`
    title: str | None = None  # the curve figures' title (`{hls}`, `{hfs}`); None: the figure's own
    extra: Callable[[ByAxis], dict[str, object]] | None = None  # what the axis' own template needs besides

    @property
    def default_name(self) -> str:
        return f"{self.name}.md"


@dataclass
class ByAxis:
    """A sweep's tables with the axis' label (column `axis.by`) instead of its key and the implied keys, the labels
    in order, each label's implied settings as text, and one row per job (job_info, its label, `weights`: trainable
    numbers per image value)."""

    axis: Axis
    run: Analysis
    stats: pd.DataFrame
    auc: pd.DataFrame
    curves: pd.DataFrame
    jobs: pd.DataFrame
    labels: list[str]
    settings: dict[str, str]


def split(run: Analysis, axis: Axis) -> ByAxis:
    """The sweep's study key read as the axis; a sweep that varies anything else, or an implied key within one
    label, is refused in one line."""
    study, name = study_columns(run.auc), run.sweep.name
    if not study:
        raise AnalysisError(f"{name}: its jobs do not differ in {axis.key}; {axis.hint}")
    others = [k for k in study if k != axis.key and k not in axis.implied]
    if others or axis.key not in study or run.auc[axis.key].isna().any():
        why = (
            f"also {', '.join(others)}"
            if others
            else f"study keys: {', '.join(study)}; or a job without a recorded study"
        )
        raise AnalysisError(f"{name}: its jobs differ in more than the cell and {axis.key} ({why})")
    implied = [k for k in axis.implied if k in study]
    mixed = [k for k in implied if (run.auc.groupby(axis.key)[k].nunique(dropna=False) > 1).any()]
    if mixed:
        raise AnalysisError(f"{name}: {', '.join(mixed)} differ within one {axis.by}; give the report one setting each")
    if run.auc["protocol"].nunique() > 1:
        raise AnalysisError(f"{name}: holds more than one protocol; give the report one")

    def relabel(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(columns=[axis.key, *implied]).assign(**{axis.by: frame[axis.key].map(axis.label)})

    values = sorted(set(run.auc[axis.key]), key=axis.order)
    firsts = run.auc.drop_duplicates(axis.key).to_dict("records")
    settings = {axis.label(r[axis.key]): keys_text(r, implied) for r in firsts}
    jobs = job_info(run.sweep)
    weights = [weights_per_value(j, run.sweep.runs.get(j["folder"])) for j in jobs.to_dict("records")]
    jobs = relabel(jobs).assign(weights=weights)
    labels = [axis.label(v) for v in values]
    return ByAxis(axis, run, relabel(run.stats), relabel(run.auc), relabel(run.curves), jobs, labels, settings)


def weights_per_value(job: Mapping[str, object], info: Mapping | None) -> float:
    """A job's trainable numbers per value of its image (3 a pixel): how far its network could just memorise A. The
    first layer reads 2 coordinates, or 2 x `model.features` Fourier features; each key is read from the job's
    study-key column where the sweep varies it, else from its recorded study; the side is the one it recorded."""
    info = info or {}
    flat = flatten(study_of(dict(info["study"]))) if isinstance(info.get("study"), Mapping) else {}

    def value(key: str) -> Any:
        found = job[key] if key in job else flat.get(key)
        return None if found is None or found is pd.NA or found == "null" else found

    features = value("model.features")
    inputs = 2 * int(float(features)) if features is not None else 2
    default = IMAGE_DIR_SIDE if value("dataset.name") == "image_dir" else CIFAR_SIDE
    side = int(info.get("resolution") or value("dataset.resolution") or default)
    return n_weights(int(job["hls"]), int(job["hfs"]), inputs) / (3 * side * side)


def of_label(frame: pd.DataFrame, column: str, cell: tuple[int, int], label: str) -> pd.DataFrame:
    """A frame's rows of one cell and label."""
    return frame[(frame["hls"] == cell[0]) & (frame["hfs"] == cell[1]) & (frame[column] == label)]


def difficulty_table(data: ByAxis) -> str:
    """Per cell and label: weights per image value, and how far the random start gets (final PSNR, whether it
    reaches 30 and 40 dB): what 'hard for the network' means in numbers."""
    by, random = data.axis.by, data.auc[data.auc["scheme"] == BASELINE]
    weights = {(j["hls"], j["hfs"], j[by]): j["weights"] for j in data.jobs.to_dict("records")}
    header = ["cell", by, "weights / image values", "random: final PSNR (dB, mean ± std)"]
    header += ["random: reached 30 dB", "random: reached 40 dB", "triples"]
    rows = []
    for cell in cells_of(data.auc):
        for label in data.labels:
            part = of_label(random, by, cell, label)
            if part.empty:
                continue
            final = part["final_psnr"].to_numpy(dtype=float)
            reached = [f"{int(part[f'epochs_to_{db}db'].notna().sum())} of {len(part)}" for db in (30, 40)]
            spread = f"{np.nanmean(final):.1f} ± {np.nanstd(final):.1f}"
            share = f"{weights[(*cell, label)]:.2f}" if (*cell, label) in weights else "—"
            rows.append([cell_label(*cell), label, share, spread, *reached, part["triple"].nunique()])
    return markdown_table(header, rows)


def lead_table(curves: pd.DataFrame, labels: list[str], column: str) -> str:
    """Per cell, scheme and label (a value of `column`): up to which epoch the pre-fit start's mean PSNR is above
    the random start's (the last epoch it leads), and the gap of the means at the last epoch. `curves`:
    curves.parquet rows with the label column."""
    schemes = [s for s in present(curves["scheme"]) if s != BASELINE]
    names = ("leads random until epoch", "final gap, dB")
    header = ["cell", "scheme"] + [f"{k} ({label})" for label in labels for k in names]
    rows = []
    for cell in cells_of(curves):
        for scheme in schemes:
            row: list[object] = [cell_label(*cell), scheme]
            for label in labels:
                means = of_label(curves, column, cell, label).pivot_table(
                    index="epoch", columns="scheme", values="mean", observed=True
                )
                if scheme not in means or BASELINE not in means:
                    row += ["—", "—"]
                    continue
                ahead = means.index[(means[scheme] > means[BASELINE]).to_numpy()]
                last = int(means.index.max())
                row.append("never" if len(ahead) == 0 else ("the end" if ahead.max() == last else int(ahead.max())))
                row.append(f"{means[scheme].iloc[-1] - means[BASELINE].iloc[-1]:+.2f}")
            rows.append(row)
    return markdown_table(header, rows)


def jobs_table(data: ByAxis) -> tuple[str, float, list[str]]:
    """One row per job (cell, label, wall time, threads, device, members); the summed wall time; the devices."""
    rank = data.jobs[data.axis.by].map(data.labels.index)
    jobs = data.jobs.assign(_rank=rank, _folder=data.jobs["folder"].astype(str))
    jobs = jobs.sort_values(["hls", "hfs", "_rank", "_folder"])
    rows = []
    for j in jobs.to_dict("records"):
        wall = "—" if pd.isna(j["wall_s"]) else f"{j['wall_s']:,.0f} s"
        rows.append([cell_label(j["hls"], j["hfs"]), j[data.axis.by], wall, j["threads"], j["machine"], j["members"]])
    table = markdown_table(["cell", data.axis.by, "wall time", "threads", "device", "members"], rows)
    return table, float(np.nansum(jobs["wall_s"].to_numpy(dtype=float))), sorted(set(jobs["machine"]))


def verdict_changes(data: ByAxis) -> list[str]:
    """Every cell, scheme and measure whose verdict is not the same for every label, as one line each:
    `3x64 same_class, epochs to 40 dB: **beats** (-79.5) at 32x32, unclear (+64.55) at 64x64`."""
    measures = {m.name: m for m in measures_in(data.auc.columns)}
    rows = data.stats[data.stats["measure"].isin(list(measures))]
    rank = {name: i for i, name in enumerate(measures)}
    rows = rows.assign(_size=rows["hls"] * rows["hfs"], _m=rows["measure"].map(rank))
    changed = []
    for (_, hls, hfs, scheme, _), part in rows.groupby(["_size", "hls", "hfs", "scheme", "_m"], observed=True):
        by_label = {str(r[data.axis.by]): r for r in part.to_dict("records")}
        if len({r["verdict"] for r in by_label.values()}) > 1:
            at = data.axis.at
            shown = ", ".join(f"{verdict_text(by_label[k])} {at} {k}" for k in data.labels if k in by_label)
            name = part["measure"].iloc[0]
            changed.append(f"{cell_label(hls, hfs)} {scheme}, {measures[name].label}: {shown}")
    return changed


def sweep_span(data: ByAxis) -> float | None:
    """Seconds from the first job's start to the last one's finish (jobs ran side by side), from run.json."""
    try:
        times = [interval(info) for info in data.run.sweep.runs.values()]
    except (KeyError, TypeError, ValueError):
        return None
    return span_s(times) if times else None


def context(data: ByAxis, figures_dir: Path, link_base: Path) -> tuple[dict[str, object], list[Path]]:
    """What the axis' template (`_{name}.md.j2`) needs, and the figures written for it (`{name}_paired*.png`,
    `{name}_psnr_<cell>.png` in `figures_dir`, linked relative to `link_base`)."""
    axis, run, stats, auc = data.axis, data.run, data.stats, data.auc
    by, measures, palette = axis.by, measures_in(auc.columns), scheme_palette(auc["scheme"].unique())
    written, figures, links = [], {}, []

    def save_figure(fig: Any, name: str) -> str:
        written.append(write_figure(fig, figures_dir / f"{axis.name}_{name}"))
        return relative(written[-1], link_base)

    for m in [m for m in measures if m.name in PAIRED]:
        fig = plot_paired_stats(stats, palette, m, data.labels, column=by)
        figures[m.label] = save_figure(fig, f"paired{m.suffix}.png")
    for hls, hfs in cells_of(auc):
        here = {k: of_cell(data.curves[data.curves[by] == k], (hls, hfs)) for k in data.labels}
        fits = auc[(auc["hls"] == hls) & (auc["hfs"] == hfs)]
        triples = {k: fits[fits[by] == k]["triple"].nunique() for k in data.labels}
        fig = plot_cell_pair(here, hls, hfs, triples, palette, run.options.psnr_cap, panel="{}")
        if axis.title is not None:
            fig.suptitle(axis.title.format(hls=hls, hfs=hfs), fontsize=11)
        links.append({"cell": (hls, hfs), "link": save_figure(fig, f"psnr_{cell_stem(hls, hfs)}.png")})
    jobs, total, devices = jobs_table(data)
    found = {
        "ci_name": CI_NAMES[run.options.ci_method],
        "root": run.sweep.name,
        "roots": [str(root) for root in run.sweep.roots],
        "sources": sorted({str(info.get("data", "?")) for info in run.sweep.runs.values() if info}),
        "cells": cells_of(auc),
        "labels": data.labels,
        "settings": data.settings,
        "protocol": str(auc["protocol"].iloc[0]),
        "psnr_cap": run.options.psnr_cap,
        "epochs": span(auc["n_epochs"]),
        "triples": span(auc.groupby(["hls", "hfs", by])["triple"].nunique()),
        "schemes": present(auc["scheme"]),
        "difficulty": difficulty_table(data),
        "verdicts": verdict_table(stats, measures, by, data.labels),
        "counts": count_table(stats, measures, by, data.labels),
        "tally": sorted(verdict_counts(stats, measures, by, data.labels), key=lambda c: data.labels.index(c["side"])),
        "figures": figures,
        "jobs": jobs,
        "total": total,
        "devices": devices,
        "changes": verdict_changes(data),
        "span": duration(sweep_span(data)),
        "curves": links,
        "lead": lead_table(data.curves, data.labels, by),
    }
    return found | (axis.extra(data) if axis.extra is not None else {}), written


def section(
    axis: Axis, sweep: Folders, options: Options, figures_dir: Path, link_base: Path
) -> tuple[dict[str, object], list[Path]]:
    """A sweep over the axis (one folder, or several of one study) read and set out for a template; the figures
    written."""
    return context(split(load_analysis(sweep, options), axis), figures_dir, link_base)


def default_out(axis: Axis, sweep: Folders) -> Path:
    """Where the axis' report goes without --out: beside the (first) sweep folder."""
    return as_paths(sweep)[0].resolve().parent / axis.default_name


def write_axis_report(
    axis: Axis, sweep: Folders, out: Folder | None = None, options: Options = DEFAULT_OPTIONS
) -> dict[str, Path]:
    """Read a sweep over the axis and write its report (template `{name}.md.j2`) and its figures, in the folder of
    the report's name; returns {name relative to the report's folder: path} of every file written."""
    out = default_out(axis, sweep) if out is None else Path(out)
    ctx, written = section(axis, sweep, options, out.with_suffix(""), out.parent)
    written.append(write_text(render(f"{axis.name}.md.j2", r=ctx), out))
    return {relative(p, out.parent): p for p in written}
