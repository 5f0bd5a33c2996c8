"""The protocol report: the same cells run under the chained and the independent protocol, side by side.

    python -m prefit.report --independent SWEEP_I --chained SWEEP_C [--out docs/findings.md] [--robust SWEEP_R]
        [--resolution SWEEP_S]
                            [analysis.psnr_cap=59] [analysis.ci_method=bca]

The original study's code aliased its "initial" weights (docs/protocol.md), so its schemes ran as one chain per
triple (`protocol=chained`); `prefit` runs the study as stated (`protocol=independent`). This report analyses
one sweep of each in memory (nothing is written into the sweep folders) and writes a markdown file generated
entirely from their data (templates/protocol.md.j2), with its figures in a folder named after it
(`docs/findings.md` -> `docs/findings/`, linked relatively): which cells it covers (of the full grid), whether
the two sweeps hold the same triples, the verdict of every scheme against random in every covered cell by every
measure under both protocols (capped AUC and time to PSNR first, the raw AUC last and flagged), what changes in
the original's conclusion, the paired differences as figures and tables, the AUC box plots (the raw one is the
original's auc.png), links to every cell's curves, and the runs. With `--robust SWEEP_R` (a rerun of some of
the same cells that differs only in arithmetic) it adds a robustness section and writes the full robustness
report beside its figures (`findings/robustness_<protocol>.md`, see prefit.analysis.robustness). With
`--resolution SWEEP_S` (some cells at several `dataset.resolution`) it adds a resolution section
(prefit.analysis.resolution).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from prefit.schema import BASELINE, GRID_HFS, GRID_HLS, PROTOCOL_ORDER, cell_label, cell_stem

from . import resolution as resolutions
from . import robustness
from .figures import plot_auc_boxplot, plot_cell_pair, plot_paired_stats, scheme_palette, write_figure
from .load import AnalysisError, span
from .pipeline import Analysed, analyse, remove_stale_figures, restricted, write_text
from .reduce import DEFAULT_PSNR_CAP, Measure, cell_flags, cell_order, measures_in, scheme_order
from .render import render
from .stats import ALPHA, DEFAULT_CI_METHOD
from .summary import measure_sections, method_context
from .tables import (
    RAW_FLAG_NOTE,
    compare_markdown,
    count_table,
    duration,
    markdown_table,
    threshold_markdown,
    verdict_table,
)
from .variants import VARIANT, has_variants, variant_order

INDEPENDENT, CHAINED = PROTOCOL_ORDER
FOCUS = "other_class"  # the scheme of the original's conclusion
ORIGINAL_CLAIM = "pre-fitting on an image of a different class helps small models most"
DEFAULT_NAME = "findings.md"  # beside the independent sweep, unless --out says otherwise (make report: docs/)
REPO = Path(__file__).resolve().parents[2]
FIGURE_PATTERNS = (
    "psnr_*.png",
    "paired_differences*.png",
    "auc_*boxplot.png",
    "robustness_*.png",
    "robustness_*.md",
    "resolution_*.png",
)


def presentation(original_first: bool = True) -> list[str]:
    """The order the report shows the protocols in: by choice the original's (chained) first, its figures being
    the ones under test; the study's own order (prefit.schema.PROTOCOL_ORDER) otherwise."""
    return list(reversed(PROTOCOL_ORDER)) if original_first else list(PROTOCOL_ORDER)


def coverage(cells: Sequence[tuple[int, int]]) -> dict[str, object]:
    """Which cells of the full grid (prefit.schema.GRID_HLS x GRID_HFS) the report covers, and which it does not."""
    grid = cell_order((h, f) for h in GRID_HLS for f in GRID_HFS)
    return {
        "n_grid": len(grid),
        "grid": f"hls {span(GRID_HLS)} x hfs {span(GRID_HFS)}",
        "in_grid": [c for c in cells if c in grid],
        "outside": [c for c in cells if c not in grid],
        "missing": [c for c in grid if c not in cells],
    }


def _row(long: pd.DataFrame, protocol: str, cell: tuple[int, int], scheme: str, measure: str) -> pd.Series | None:
    found = long[
        (long["protocol"] == protocol)
        & (long["hls"] == cell[0])
        & (long["hfs"] == cell[1])
        & (long["scheme"] == scheme)
        & (long["measure"] == measure)
    ]
    return found.iloc[0] if len(found) else None


def _verdict(row: pd.Series | None) -> str:
    return "no data" if row is None else str(row["verdict"])


def conclusion(
    long: pd.DataFrame, cells: list[tuple[int, int]], measures: Sequence[Measure], presented: Sequence[str]
) -> dict[str, object]:
    """What the paired statistics of both protocols say about the original's claim on the common cells: by the
    lead measure (the first of `measures`) in the smallest cell(s) and over all cells, then by the others."""
    lead = measures[0]
    missing = [p for p in presented if FOCUS not in set(long[long["protocol"] == p]["scheme"])]
    result: dict[str, object] = {"claim": ORIGINAL_CLAIM, "focus": FOCUS, "lead": lead, "missing": missing}
    if missing:
        return result
    size = cells[0][0] * cells[0][1]
    smallest = [c for c in cells if c[0] * c[1] == size]
    verdicts = {p: [_verdict(_row(long, p, c, FOCUS, lead.name)) for c in smallest] for p in presented}
    result["smallest_names"] = " and ".join(cell_label(*c) for c in smallest)
    result["in_smallest"] = f"in the smallest cell{'s' if len(smallest) > 1 else ''} ({result['smallest_names']})"
    result["smallest"] = [
        {
            "cell": c,
            "sides": [
                {"protocol": p, "row": _row(long, p, c, FOCUS, lead.name), "verdict": verdicts[p][i]} for p in presented
            ],
        }
        for i, c in enumerate(smallest)
    ]
    n_used = [int(s["row"]["n"]) for c in result["smallest"] for s in c["sides"] if s["row"] is not None]
    result["few"] = min(n_used) if n_used and 2.0 / 2 ** min(n_used) >= ALPHA else None
    result["min_p"] = 2.0 / 2 ** min(n_used) if n_used else None

    def tally(scheme: str, m: Measure) -> dict[str, dict[str, int]]:
        rows = long[(long["scheme"] == scheme) & (long["measure"] == m.name)]
        return {
            p: {v: int((rows[rows["protocol"] == p]["verdict"] == v).sum()) for v in ("beats", "worse")}
            for p in presented
        }

    result["tally"] = tally(FOCUS, lead)
    largest = []
    for p in presented:
        rows = long[(long["protocol"] == p) & (long["scheme"] == FOCUS) & (long["measure"] == lead.name)]
        rows = rows.dropna(subset=["mean_diff"])
        if len(rows) and len(cells) > 1:
            top = rows.loc[rows["mean_diff"].idxmax() if lead.higher_is_better else rows["mean_diff"].idxmin()]
            cell = (int(top["hls"]), int(top["hfs"]))
            largest.append({"protocol": p, "cell": cell, "smallest": cell in smallest, "rank": cells.index(cell) + 1})
    result["largest"] = largest
    yes = {p: all(v == "beats" for v in verdicts[p]) for p in presented}
    if yes[CHAINED] and not yes[INDEPENDENT]:
        result["case"] = "only_chained"
        result["independent_worse"] = all(v == "worse" for v in verdicts[INDEPENDENT])
    elif yes[CHAINED]:
        result["case"] = "both"
        diffs = {p: [_row(long, p, c, FOCUS, lead.name)["mean_diff"] for c in smallest] for p in presented}
        result["ratios"] = [
            (c, new / old) for c, old, new in zip(smallest, diffs[CHAINED], diffs[INDEPENDENT], strict=True) if old
        ]
    else:
        result["case"] = "only_independent" if yes[INDEPENDENT] else "neither"
    result["independent_verdict"] = verdicts[INDEPENDENT][0]
    others = [s for s in scheme_order(long["scheme"].unique()) if s not in (FOCUS, BASELINE)]
    result["others"] = [{"scheme": s, "tally": tally(s, lead)} for s in others]
    result["by_measure"] = [
        {
            "measure": m,
            "tally": tally(FOCUS, m),
            "smallest": {p: [_verdict(_row(long, p, c, FOCUS, m.name)) for c in smallest] for p in presented},
        }
        for m in measures[1:]
    ]
    return result


def conclusion_markdown(
    long: pd.DataFrame, cells: list[tuple[int, int]], measures: Sequence[Measure], presented: Sequence[str]
) -> str:
    """The section "What changes in the conclusion", worded by templates/conclusion.md.j2."""
    return render(
        "conclusion.md.j2",
        c=conclusion(long, cells, measures, presented),
        presented=presented,
        common=cells,
        alpha=f"{ALPHA:g}",
    )


def refuse_variants(run: Analysed) -> None:
    """The report sets the two protocols side by side cell by cell: a sweep whose jobs also differ in other keys
    (variants) is refused in one line rather than matched by (cell, variant), which it does not do."""
    if has_variants(run.auc):
        shown = "; ".join(v or "(none)" for v in variant_order(run.auc[VARIANT]))
        raise AnalysisError(
            f"{run.sweep.root}: its jobs differ in more than hls, hfs and protocol (variants: "
            f"{shown}); the protocol report compares sweeps of one variant: give it such sweeps, or "
            "analyse this one with python -m prefit.analyze"
        )


def job_table(run: Analysed) -> pd.DataFrame:
    """One row per job: its cell, run.json status, wall_s and device."""
    rows = []
    for folder, (hls, hfs, _) in run.sweep.job_cells.items():
        info = run.sweep.runs.get(folder) or {}
        wall = info.get("wall_s")
        rows.append(
            {
                "hls": hls,
                "hfs": hfs,
                "status": info.get("status", "no run.json"),
                "wall_s": float(wall) if isinstance(wall, (int, float)) else np.nan,
                "device": str(info.get("device", "?")),
            }
        )
    return pd.DataFrame(rows, columns=["hls", "hfs", "status", "wall_s", "device"])


def runs_markdown(runs: dict[str, Analysed], common: Sequence[tuple[int, int]]) -> str:
    """Per sweep its cells, triples, epochs, jobs and time; per common cell the triples, epochs and time of each."""
    jobs = {p: job_table(r) for p, r in runs.items()}
    header = [
        "protocol",
        "sweep",
        "cells",
        "triples per cell",
        "epochs per fit",
        "schemes",
        "jobs (complete)",
        "time (sum of wall_s)",
        "device(s)",
    ]
    rows = []
    for p, run in runs.items():
        j = jobs[p]
        missing = int(j["wall_s"].isna().sum())
        rows.append(
            [
                p,
                f"`{run.sweep.root}`",
                run.auc.groupby(["hls", "hfs"]).ngroups,
                span(run.auc.groupby(["hls", "hfs"])["triple"].nunique()),
                span(run.auc["n_epochs"]),
                ", ".join(scheme_order(run.auc["scheme"].unique())),
                f"{len(j)} ({int((j['status'] == 'complete').sum())})",
                duration(float(j["wall_s"].sum())) + (f" ({missing} job(s) without wall_s)" if missing else ""),
                ", ".join(sorted(set(j["device"]))) or "—",
            ]
        )
    table = markdown_table(header, rows)
    header = ["cell"] + [f"{k} ({p})" for k in ("triples", "epochs", "time") for p in runs]
    rows = []
    for hls, hfs in common:
        auc = {p: r.auc[(r.auc["hls"] == hls) & (r.auc["hfs"] == hfs)] for p, r in runs.items()}
        times = {p: j[(j["hls"] == hls) & (j["hfs"] == hfs)]["wall_s"] for p, j in jobs.items()}
        rows.append(
            [cell_label(hls, hfs)]
            + [auc[p]["triple"].nunique() for p in runs]
            + [span(auc[p]["n_epochs"]) for p in runs]
            + [duration(float(t.sum())) if len(t) and t.notna().all() else "—" for t in times.values()]
        )
    return (
        table + "\n\nTime is the sum over jobs of `wall_s` in each job's `run.json` (jobs may have run in "
        "parallel).\n\n" + markdown_table(header, rows)
    )


def _link(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def protocol_link(out: Path) -> str:
    """A relative link to docs/protocol.md when the report is inside this repository, else its name."""
    if out.resolve().is_relative_to(REPO):
        return f"[`docs/protocol.md`]({_link(REPO / 'docs' / 'protocol.md', out.resolve().parent)})"
    return "`docs/protocol.md`"


def default_report(independent: str | os.PathLike) -> Path:
    """Where the report goes when no --out is given: beside the sweeps, never into the tracked docs/."""
    return Path(independent).resolve().parent / DEFAULT_NAME


def write_report(
    independent: str | os.PathLike,
    chained: str | os.PathLike,
    out: str | os.PathLike | None = None,
    psnr_cap: float | None = DEFAULT_PSNR_CAP,
    ci_method: str = DEFAULT_CI_METHOD,
    robust: str | os.PathLike | None = None,
    original_first: bool = True,
    resolution: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Analyse both sweeps (and the robust one) and write the report and its figures; returns {name: path} of
    every file written, names relative to the report's folder."""
    out = default_report(independent) if out is None else Path(out)
    figures_dir = out.with_suffix("")
    if figures_dir == out:
        raise AnalysisError(f"{out}: the report's name needs a suffix (e.g. findings.md), its figures go beside it")
    presented = presentation(original_first)
    sources = {INDEPENDENT: independent, CHAINED: chained}
    runs = {p: analyse(sources[p], psnr_cap, ci_method, protocol=p) for p in presented}
    for run in runs.values():
        refuse_variants(run)
    cells_of = {p: {c[:2] for c in r.cells()} for p, r in runs.items()}
    common = cell_order(set.intersection(*cells_of.values()))
    if not common:
        raise AnalysisError(
            "no cell is in both sweeps ("
            + "; ".join(f"{p}: {', '.join(cell_label(*c) for c in cell_order(cells_of[p]))}" for p in presented)
            + ")"
        )
    keep = {(h, f) for h, f in common}

    def in_common(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[[(int(h), int(f)) in keep for h, f in zip(frame["hls"], frame["hfs"], strict=True)]]

    long = pd.concat([in_common(runs[p].long) for p in presented], ignore_index=True)
    auc = pd.concat([in_common(runs[p].auc) for p in presented], ignore_index=True)
    measures = measures_in(auc.columns)
    palette = scheme_palette(auc["scheme"].unique())
    written: list[Path] = []

    def figure(fig: object, name: str) -> str:
        written.append(write_figure(fig, figures_dir / name))
        return _link(written[-1], out.parent)

    boxes = {
        m: figure(plot_auc_boxplot(auc, palette, m, protocols=presented), f"{m}_boxplot.png")
        for m in ("auc_capped", "auc")
        if m in auc.columns
    }
    sections = measure_sections(long, measures)
    for section in sections:
        m = section["measure"]
        section["figure"] = figure(plot_paired_stats(long, palette, m, presented), f"paired_differences{m.suffix}.png")
        section["table"] = compare_markdown(long, m, "protocol", presented)
    curves = []
    for hls, hfs in common:
        frames = {p: r.curves[(r.curves["hls"] == hls) & (r.curves["hfs"] == hfs)] for p, r in runs.items()}
        triples = {p: r.auc[(r.auc["hls"] == hls) & (r.auc["hfs"] == hfs)]["triple"].nunique() for p, r in runs.items()}
        fig = plot_cell_pair(frames, hls, hfs, triples, palette, psnr_cap)
        curves.append({"cell": (hls, hfs), "link": figure(fig, f"psnr_{cell_stem(hls, hfs)}.png")})

    robust_sections = []
    if robust is not None:
        other = analyse(robust, psnr_cap, ci_method)
        for p in [p for p in presented if p in {c[2] for c in other.cells()}]:
            comparison = robustness.compare(runs[p], restricted(other, p))
            files = robustness.write_comparison(comparison, figures_dir / f"robustness_{p}.md", ci_method, psnr_cap)
            written += files.values()
            robust_sections.append(
                {
                    "protocol": p,
                    "report": _link(files[f"robustness_{p}.md"], out.parent),
                    **robustness.context(
                        comparison, _link(files[f"robustness_{p}.png"], out.parent), ci_method, psnr_cap
                    ),
                }
            )
        if not robust_sections:
            raise AnalysisError(f"{robust}: holds neither protocol of the report's sweeps")

    resolution_section = None
    if resolution is not None:
        by_side = resolutions.split_by_resolution(analyse(resolution, psnr_cap, ci_method))
        resolution_section, files = resolutions.context(by_side, figures_dir, out.parent)
        written += files

    check = robustness.compare_triples(runs[presented[0]].auc, runs[presented[1]].auc, common, ["hls", "hfs"])
    context = {
        **method_context(ci_method),
        "presented": presented,
        "runs": {p: r.sweep.root for p, r in runs.items()},
        "common": common,
        "only": {p: cell_order(cells_of[p] - keep) for p in presented},
        **coverage(common),
        "epochs": {p: sorted(set(in_common(runs[p].auc)["n_epochs"])) for p in presented},
        "psnr_cap": psnr_cap,
        "protocol_link": protocol_link(out),
        "check": robustness.triples_text(check),
        "measures": measures,
        "verdicts": verdict_table(long, measures, "protocol", presented),
        "counts": count_table(long, measures, "protocol", presented),
        "conclusion": conclusion_markdown(long, common, measures, presented),
        "flagged": int(cell_flags(auc)["flag_raw_auc"].sum()),
        "flag_note": RAW_FLAG_NOTE,
        "sections": sections,
        "boxes": boxes,
        "means": threshold_markdown(auc, cell_flags(auc), presented),
        "curves": curves,
        "robust": robust_sections,
        "robust_root": robust,
        "runs_table": runs_markdown(runs, common),
        "resolution": resolution_section,
    }
    written.append(write_text(render("protocol.md.j2", **context), out))
    remove_stale_figures(figures_dir, written, FIGURE_PATTERNS)
    return {_link(path, out.parent): path for path in written}
