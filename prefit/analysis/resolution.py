"""The resolution report: the same cells fit at two (or more) image sizes, everything else equal.

    python -m prefit.report resolution SWEEP [--out FILE] [analysis.*=...]

SWEEP is one sweep whose jobs differ only in their cell and `dataset.resolution` (for example
`dataset.resolution=32,64` over `model.hfs=32,64,128` on the same `image_dir` folder), so that its variants are
exactly the resolutions. At 32 x 32 a SIREN of 3 x 128 has over ten times more weights than the image has values;
at 64 x 64 three times: whether pre-fitting helps may depend on how hard the image is for the network, and this
report sets the verdicts side by side per resolution, with how hard each fit was (the random start's final PSNR,
weights per image value) and what each job cost. The protocol report includes the same section with
`--resolution SWEEP` (docs/findings.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefit.model import n_weights
from prefit.records import interval, span_s
from prefit.schema import BASELINE, cell_label, cell_stem

from .figures import plot_cell_pair, plot_paired_stats, scheme_palette, write_figure
from .load import AnalysisError, span
from .pipeline import Analysed, analyse, write_text
from .reduce import DEFAULT_PSNR_CAP, cell_order, measures_in, scheme_order
from .render import render
from .stats import DEFAULT_CI_METHOD
from .summary import method_context
from .tables import count_table, duration, markdown_table, verdict_table, verdict_text
from .variants import VARIANT

KEY = "dataset.resolution"
PATTERN = re.compile(rf"{re.escape(KEY)}=(\d+)")
DEFAULT_NAME = "resolution.md"
BY = "resolution"  # the column the tables group by: `32x32`, `64x64`


def side_label(side: int) -> str:
    return f"{side}x{side}"


@dataclass
class ByResolution:
    """A resolution sweep reduced: the stats and AUCs with a `resolution` column instead of variants."""

    run: Analysed
    long: pd.DataFrame
    auc: pd.DataFrame
    sides: list[int]
    variant_labels: dict[str, str]  # the sweep's variant (`dataset.resolution=64`) -> its label (`64x64`)

    @property
    def labels(self) -> list[str]:
        return [side_label(s) for s in self.sides]


def split_by_resolution(run: Analysed) -> ByResolution:
    """The sweep's variants read as resolutions; a sweep that varies anything else is refused in one line."""
    if VARIANT not in run.auc.columns:
        raise AnalysisError(
            f"{run.sweep.root}: its jobs do not differ in {KEY}; run the cells at two resolutions "
            f"in one sweep (e.g. {KEY}=32,64)"
        )
    variants = sorted(set(run.auc[VARIANT].astype(str)))
    sides = {}
    for v in variants:
        found = PATTERN.fullmatch(v)
        if found is None:
            raise AnalysisError(
                f"{run.sweep.root}: its jobs differ in more than the cell and {KEY} (variant {v!r}); "
                "the resolution report compares one study at several resolutions"
            )
        sides[v] = int(found.group(1))
    if len(run.long["protocol"].unique()) > 1:
        raise AnalysisError(f"{run.sweep.root}: holds more than one protocol; give the report one")

    def relabel(frame: pd.DataFrame) -> pd.DataFrame:
        side = frame[VARIANT].astype(str).map(sides)
        return frame.assign(**{BY: side.map(side_label), "side": side, VARIANT: ""})

    labels = {v: side_label(side) for v, side in sides.items()}
    return ByResolution(run, relabel(run.long), relabel(run.auc), sorted(set(sides.values())), labels)


def difficulty_table(data: ByResolution) -> str:
    """Per cell and resolution: weights per image value, and how far the random start gets (final PSNR, the
    epochs to 30 dB): what 'hard for the network' means in numbers."""
    random = data.auc[data.auc["scheme"] == BASELINE]
    header = [
        "cell",
        "resolution",
        "weights / image values",
        "random: final PSNR (dB, mean ± std)",
        "random: reached 30 dB",
        "random: reached 40 dB",
        "triples",
    ]
    rows = []
    for hls, hfs in cell_order({(int(h), int(f)) for h, f in zip(data.auc["hls"], data.auc["hfs"], strict=True)}):
        for side in data.sides:
            part = random[(random["hls"] == hls) & (random["hfs"] == hfs) & (random["side"] == side)]
            if part.empty:
                continue
            final = part["final_psnr"].to_numpy(dtype=float)
            reached = {db: int(part[f"epochs_to_{db}db"].notna().sum()) for db in (30, 40)}
            rows.append(
                [
                    cell_label(hls, hfs),
                    side_label(side),
                    f"{n_weights(hls, hfs) / (3 * side * side):.2f}",
                    f"{np.nanmean(final):.1f} ± {np.nanstd(final):.1f}",
                    *(f"{reached[db]} of {len(part)}" for db in (30, 40)),
                    part["triple"].nunique(),
                ]
            )
    return markdown_table(header, rows)


def lead_table(curves: pd.DataFrame, data: ByResolution) -> str:
    """Per cell, scheme and resolution: up to which epoch the pre-fit start's mean PSNR is above the random
    start's (the last epoch it leads), and the gap of the means at the last epoch. `curves`: curves.parquet rows
    with the resolution column."""
    schemes = [s for s in scheme_order(curves["scheme"].unique()) if s != BASELINE]
    header = ["cell", "scheme"] + [
        f"{k} ({label})" for label in data.labels for k in ("leads random until epoch", "final gap, dB")
    ]
    rows = []
    for hls, hfs in cell_order({(int(h), int(f)) for h, f in zip(curves["hls"], curves["hfs"], strict=True)}):
        for scheme in schemes:
            row: list[object] = [cell_label(hls, hfs), scheme]
            for label in data.labels:
                part = curves[(curves["hls"] == hls) & (curves["hfs"] == hfs) & (curves[BY] == label)]
                means = part.pivot_table(index="epoch", columns="scheme", values="mean")
                if scheme not in means or BASELINE not in means:
                    row += ["—", "—"]
                    continue
                ahead = means.index[(means[scheme] > means[BASELINE]).to_numpy()]
                last = int(means.index.max())
                row += [
                    "never" if len(ahead) == 0 else ("the end" if ahead.max() == last else int(ahead.max())),
                    f"{means[scheme].iloc[-1] - means[BASELINE].iloc[-1]:+.2f}",
                ]
            rows.append(row)
    return markdown_table(header, rows)


def jobs_table(data: ByResolution) -> tuple[str, float, list[str]]:
    """One row per job (cell, resolution, wall time, device); the summed wall time; the devices."""
    sweep = data.run.sweep
    rows, total, devices = [], 0.0, set()
    for folder, (hls, hfs, _) in sorted(sweep.job_cells.items(), key=lambda kv: (kv[1][:2], str(kv[0]))):
        info = sweep.runs.get(folder) or {}
        side = info.get("resolution") or ((info.get("study") or {}).get("dataset") or {}).get("resolution")
        wall = info.get("wall_s")
        total += float(wall) if isinstance(wall, (int, float)) else 0.0
        device = str(info.get("device", "?")) + (f" ({info['device_name']})" if info.get("device_name") else "")
        devices.add(device)
        rows.append(
            [
                cell_label(hls, hfs),
                side_label(int(side)) if side else "?",
                f"{wall:,.0f} s" if isinstance(wall, (int, float)) else "—",
                info.get("threads", "—"),
                device,
                info.get("members", "—"),
            ]
        )
    return (
        markdown_table(["cell", "resolution", "wall time", "threads", "device", "members"], rows),
        total,
        sorted(devices),
    )


def tally(data: ByResolution) -> list[dict[str, object]]:
    """Per resolution, scheme and measure: in how many cells the scheme beats random, is worse, or is unclear."""
    out = []
    for label in data.labels:
        for scheme in scheme_order(s for s in data.long["scheme"].unique() if s != BASELINE):
            for m in measures_in(data.auc.columns):
                v = data.long[
                    (data.long[BY] == label) & (data.long["scheme"] == scheme) & (data.long["measure"] == m.name)
                ]["verdict"]
                out.append(
                    {
                        "resolution": label,
                        "scheme": scheme,
                        "measure": m.label,
                        "beats": int((v == "beats").sum()),
                        "worse": int((v == "worse").sum()),
                        "of": int((v != "no data").sum()),
                    }
                )
    return out


def verdict_changes(data: ByResolution) -> list[str]:
    """Every cell, scheme and measure whose verdict is not the same at every resolution, as one line each:
    `3x64 same_class, epochs to 40 dB: **beats** (-79.5) at 32x32, unclear (+64.55) at 64x64`."""
    measures = {m.name: m for m in measures_in(data.auc.columns)}
    rows = data.long[data.long["measure"].isin(list(measures))]
    changed = {}
    for (hls, hfs, scheme, name), part in rows.groupby(["hls", "hfs", "scheme", "measure"], sort=False):
        by_label = {str(r[BY]): r for _, r in part.iterrows()}
        if len({r["verdict"] for r in by_label.values()}) > 1:
            shown = ", ".join(f"{verdict_text(by_label[k])} at {k}" for k in data.labels if k in by_label)
            changed[(int(hls), int(hfs)), scheme, name] = (
                f"{cell_label(int(hls), int(hfs))} {scheme}, {measures[name].label}: {shown}"
            )
    cells = {c: i for i, c in enumerate(cell_order({cell for cell, _, _ in changed}))}
    schemes = {s: i for i, s in enumerate(scheme_order({s for _, s, _ in changed}))}
    order = {n: i for i, n in enumerate(measures)}
    return [changed[k] for k in sorted(changed, key=lambda k: (cells[k[0]], schemes[k[1]], order[k[2]]))]


def sweep_span(data: ByResolution) -> float | None:
    """Seconds from the first job's start to the last one's finish (jobs ran side by side), from run.json."""
    try:
        times = [interval(info) for info in data.run.sweep.runs.values()]
    except (KeyError, TypeError, ValueError):
        return None
    return span_s(times) if times else None


def context(data: ByResolution, figures_dir: Path, link_base: Path) -> tuple[dict[str, object], list[Path]]:
    """What templates/_resolution.md.j2 needs, and the figures written for it."""
    run, measures = data.run, measures_in(data.auc.columns)
    palette = scheme_palette(data.auc["scheme"].unique())
    written, figures = [], {}
    for m in [m for m in measures if m.name in ("auc_capped", "epochs_to_30db")]:
        fig = plot_paired_stats(data.long, palette, m, data.labels, by=BY)
        written.append(write_figure(fig, figures_dir / f"resolution_paired{m.suffix}.png"))
        figures[m.label] = Path(os.path.relpath(written[-1], link_base)).as_posix()
    curves = data.run.curves.assign(**{BY: data.run.curves[VARIANT].astype(str).map(data.variant_labels)})
    cells = cell_order({(int(h), int(f)) for h, f in zip(data.auc["hls"], data.auc["hfs"], strict=True)})
    links = []
    for hls, hfs in cells:
        frames = {k: curves[(curves["hls"] == hls) & (curves["hfs"] == hfs) & (curves[BY] == k)] for k in data.labels}
        here = data.auc[(data.auc["hls"] == hls) & (data.auc["hfs"] == hfs)]
        triples = {k: here[here[BY] == k]["triple"].nunique() for k in data.labels}
        fig = plot_cell_pair(frames, hls, hfs, triples, palette, run.psnr_cap, panel="{}")
        written.append(write_figure(fig, figures_dir / f"resolution_psnr_{cell_stem(hls, hfs)}.png"))
        links.append({"cell": (hls, hfs), "link": Path(os.path.relpath(written[-1], link_base)).as_posix()})
    jobs, total, devices = jobs_table(data)
    sources = sorted({str(info.get("data", "?")) for info in run.sweep.runs.values()})
    return {
        **method_context(run.ci_method),
        "root": run.sweep.root,
        "sources": sources,
        "cells": cells,
        "labels": data.labels,
        "protocol": str(data.long["protocol"].iloc[0]),
        "psnr_cap": run.psnr_cap,
        "epochs": span(data.auc["n_epochs"]),
        "triples": span(data.auc.groupby(["hls", "hfs", BY])["triple"].nunique()),
        "schemes": scheme_order(data.auc["scheme"].unique()),
        "difficulty": difficulty_table(data),
        "verdicts": verdict_table(data.long, measures, BY, data.labels),
        "counts": count_table(data.long, measures, BY, data.labels),
        "tally": tally(data),
        "figures": figures,
        "jobs": jobs,
        "total": total,
        "devices": devices,
        "changes": verdict_changes(data),
        "span": duration(sweep_span(data)),
        "curves": links,
        "lead": lead_table(curves, data),
    }, written


def write_resolution_report(
    sweep: str | os.PathLike,
    out: str | os.PathLike | None = None,
    psnr_cap: float | None = DEFAULT_PSNR_CAP,
    ci_method: str = DEFAULT_CI_METHOD,
) -> dict[str, Path]:
    """Analyse a resolution sweep and write its report (beside the sweep by default) with its figures."""
    out = Path(sweep).resolve().parent / DEFAULT_NAME if out is None else Path(out)
    data = split_by_resolution(analyse(sweep, psnr_cap, ci_method))
    ctx, written = context(data, out.with_suffix(""), out.parent)
    written.append(write_text(render("resolution.md.j2", r=ctx), out))
    return {Path(os.path.relpath(p, out.parent)).as_posix(): p for p in written}
