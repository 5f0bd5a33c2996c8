"""The protocol report: the same cells run under the chained and the independent protocol, side by side.

The original study's code aliased its "initial" weights (docs/protocol.md), so its schemes ran as one chain per
triple (`protocol=chained`); `prefit` runs the study as stated (`protocol=independent`). From the analyses of one
sweep of each, a markdown file (templates/protocol.md.j2) and its figures in a folder named after it: the cells of
the full grid covered, whether the triples match, every verdict under both protocols, what changes in the
original's conclusion, the paired differences, box plots, curves and runs; with `robust` a robustness section
(and the full robustness reports), with `resolution` a resolution section, with `families` one on other neural
fields (prefit.analysis.axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd

from prefit.schema import BASELINE, GRID_HFS, GRID_HLS, PROTOCOL_ORDER, cell_label, cell_stem

from . import robustness, tables
from .axis import section as axis_section
from .families import AXIS as FAMILIES
from .figures import plot_auc_boxplot, plot_cell_pair, plot_paired_stats, scheme_palette, write_figure
from .folders import REPO, AnalysisError, Folders, as_paths, relative
from .groups import categorize, cell_order, cells_of, of_cell, present, study_columns, study_texts
from .load import job_info, span
from .pipeline import DEFAULT_OPTIONS, Analysis, load_analysis, remove_stale_figures, write_text
from .reduce import Measure, measures_in
from .resolution import AXIS as RESOLUTION
from .stats import ALPHA
from .tables import CI_NAMES, duration, flagged_cells, markdown_table, render

INDEPENDENT, CHAINED = PROTOCOL_ORDER
FOCUS = "other_class"  # the scheme of the original's conclusion
ORIGINAL_CLAIM = "pre-fitting on an image of a different class helps small models most"
DEFAULT_NAME = "findings.md"  # beside the independent sweep, unless --out says otherwise (make report: docs/)
FIGURE_PATTERNS = (
    "psnr_*.png",
    "paired_differences*.png",
    "auc_*boxplot.png",
    "robustness_*",
    "resolution_*.png",
    "families_*.png",
)


def presentation(original_first: bool = True) -> list[str]:
    """The order the report shows the protocols in: by choice the original's (chained) first, its figures being
    the ones under test; the study's own order (prefit.schema.PROTOCOL_ORDER) otherwise."""
    return list(reversed(PROTOCOL_ORDER)) if original_first else list(PROTOCOL_ORDER)


def coverage(cells: Sequence[tuple[int, int]]) -> dict[str, object]:
    """Which cells of the full grid (prefit.schema.GRID_HLS x GRID_HFS) the report covers, and which it does not."""
    grid = cell_order((h, f) for h in GRID_HLS for f in GRID_HFS)
    found = {"in_grid": [c for c in cells if c in grid], "outside": [c for c in cells if c not in grid]}
    found |= {"n_grid": len(grid), "grid": f"hls {span(GRID_HLS)} x hfs {span(GRID_HFS)}"}
    return found | {"missing": [c for c in grid if c not in cells]}


def conclusion(stats: pd.DataFrame, cells: list[tuple[int, int]], measures: list[Measure], presented: list) -> dict:
    """What the paired statistics of both protocols say about the original's claim on the common cells: by the
    lead measure (the first of `measures`) in the smallest cell(s) and over all cells, then by the others."""
    lead = measures[0]
    missing = [p for p in presented if FOCUS not in set(stats[stats["protocol"] == p]["scheme"])]
    result: dict[str, object] = {"claim": ORIGINAL_CLAIM, "focus": FOCUS, "lead": lead, "missing": missing}
    if missing:
        return result
    rows = {(r["protocol"], r["hls"], r["hfs"], r["scheme"], r["measure"]): r for r in stats.to_dict("records")}

    def verdicts(p: str, cells: list[tuple[int, int]], m: Measure = lead) -> list[str]:
        return [rows.get((p, *c, FOCUS, m.name), {"verdict": "no data"})["verdict"] for c in cells]

    def tally(scheme: str, m: Measure) -> dict[str, dict[str, int]]:
        part = stats[(stats["scheme"] == scheme) & (stats["measure"] == m.name)]
        counts = {p: part[part["protocol"] == p]["verdict"] for p in presented}
        return {p: {v: int((found == v).sum()) for v in ("beats", "worse")} for p, found in counts.items()}

    smallest = [c for c in cells if c[0] * c[1] == cells[0][0] * cells[0][1]]
    lead_verdicts = {p: verdicts(p, smallest) for p in presented}
    result["smallest_names"] = " and ".join(cell_label(*c) for c in smallest)
    result["in_smallest"] = f"in the smallest cell{'s' if len(smallest) > 1 else ''} ({result['smallest_names']})"
    sides = [
        [{"protocol": p, "row": rows.get((p, *c, FOCUS, lead.name)), "verdict": v[i]} for p, v in lead_verdicts.items()]
        for i, c in enumerate(smallest)
    ]
    result["smallest"] = [{"cell": c, "sides": s} for c, s in zip(smallest, sides)]
    n_used = [int(s["row"]["n"]) for c in result["smallest"] for s in c["sides"] if s["row"] is not None]
    result["few"] = min(n_used) if n_used and 2.0 / 2 ** min(n_used) >= ALPHA else None
    result["min_p"] = 2.0 / 2 ** min(n_used) if n_used else None
    result["tally"], result["largest"] = tally(FOCUS, lead), []
    for p in presented:
        part = stats[(stats["protocol"] == p) & (stats["scheme"] == FOCUS) & (stats["measure"] == lead.name)]
        part = part.dropna(subset=["delta"])
        if len(part) and len(cells) > 1:
            top = part.loc[part["delta"].idxmax() if lead.higher_is_better else part["delta"].idxmin()]
            cell = (int(top["hls"]), int(top["hfs"]))
            largest = {"protocol": p, "cell": cell, "smallest": cell in smallest}
            result["largest"].append(largest | {"rank": cells.index(cell) + 1})
    yes = {p: all(v == "beats" for v in lead_verdicts[p]) for p in presented}
    if yes[CHAINED] and not yes[INDEPENDENT]:
        result["case"] = "only_chained"
        result["independent_worse"] = all(v == "worse" for v in lead_verdicts[INDEPENDENT])
    elif yes[CHAINED]:
        result["case"] = "both"
        diffs = {p: [rows[(p, *c, FOCUS, lead.name)]["delta"] for c in smallest] for p in presented}
        result["ratios"] = [(c, new / old) for c, old, new in zip(smallest, diffs[CHAINED], diffs[INDEPENDENT]) if old]
    else:
        result["case"] = "only_independent" if yes[INDEPENDENT] else "neither"
    result["independent_verdict"] = lead_verdicts[INDEPENDENT][0]
    others = [s for s in present(stats["scheme"]) if s not in (FOCUS, BASELINE)]
    result["others"] = [{"scheme": s, "tally": tally(s, lead)} for s in others]
    smallest_by = {m.name: {p: verdicts(p, smallest, m) for p in presented} for m in measures}
    by_measure = [{"measure": m, "tally": tally(FOCUS, m), "smallest": smallest_by[m.name]} for m in measures]
    result["by_measure"] = by_measure[1:]  # the lead measure's are above
    return result


def conclusion_markdown(stats: pd.DataFrame, cells: list[tuple[int, int]], measures: list, presented: list) -> str:
    """The section "What changes in the conclusion", worded by templates/conclusion.md.j2."""
    c = conclusion(stats, cells, measures, presented)
    return render("conclusion.md.j2", c=c, presented=presented, common=cells)


def refuse_study_keys(run: Analysis) -> None:
    """The report sets the two protocols side by side cell by cell: a sweep whose jobs also differ in other keys
    is refused in one line rather than matched by cell and study keys, which it does not do."""
    if study_columns(run.auc):
        shown = "; ".join(v or "(none)" for v in study_texts(run.auc))
        what = "the protocol report compares sweeps of one study: give it such sweeps, or analyse this one alone"
        raise AnalysisError(f"{run.sweep.name}: its jobs differ in more than hls, hfs and protocol ({shown}); {what}")


def runs_markdown(runs: dict[str, Analysis], common: Sequence[tuple[int, int]]) -> str:
    """Per sweep (its folders) its cells, triples, epochs, jobs and time; per common cell the triples, epochs and
    time of each; per job of a common cell its folders, the machine it ran on, its step, start and time."""
    jobs, rows = {p: job_info(r.sweep) for p, r in runs.items()}, []
    header = ["protocol", "sweep", "cells", "triples per cell", "epochs per fit", "schemes", "jobs (complete)"]
    for (p, run), j in zip(runs.items(), jobs.values()):
        cells, missing = run.auc.groupby(["hls", "hfs"]), int(j["wall_s"].isna().sum())
        time = duration(float(j["wall_s"].sum())) + (f" ({missing} job(s) without wall_s)" if missing else "")
        done = f"{len(j)} ({int((j['status'] == 'complete').sum())})"
        triples = span(cells["triple"].nunique())
        rows.append([p, code(run.sweep.roots), cells.ngroups, triples, span(run.auc["n_epochs"])])
        rows[-1] += [", ".join(present(run.auc["scheme"])), done, time]
        rows[-1] += [", ".join(sorted(set(j[key]))) or "—" for key in ("machine", "step")]
    table = markdown_table([*header, "time (sum of wall_s)", "device(s)", "step(s)"], rows)
    header, rows = ["cell"] + [f"{k} ({p})" for k in ("triples", "epochs", "time") for p in runs], []
    for cell in common:
        auc, times = [of_cell(r.auc, cell) for r in runs.values()], [of_cell(j, cell)["wall_s"] for j in jobs.values()]
        time = [duration(float(t.sum())) if len(t) and t.notna().all() else "—" for t in times]
        triples, epochs = [a["triple"].nunique() for a in auc], [span(a["n_epochs"]) for a in auc]
        rows.append([cell_label(*cell), *triples, *epochs, *time])
    note = "Time is the sum over jobs of `wall_s` in each job's `run.json` (jobs may have run in parallel)."
    return f"{table}\n\n{note}\n\n{markdown_table(header, rows)}\n\n{jobs_markdown(jobs, common)}"


def jobs_markdown(jobs: dict[str, pd.DataFrame], common: Sequence[tuple[int, int]]) -> str:
    """One row per job of a common cell (job_info of each protocol's sweep): where its results came from (its sweep
    folder and its folder there), the machine it ran on, the step, when it started and its wall time."""
    rows = []
    for cell in common:
        for p, frame in jobs.items():
            for job in of_cell(frame, cell).to_dict("records"):
                place = [code([job["sweep"]]), code([Path(job["folder"]).relative_to(job["sweep"]).as_posix()])]
                when = [job["machine"], job["step"], started(job["started"]), duration(job["wall_s"])]
                rows.append([cell_label(*cell), p, *place, *when])
    return markdown_table(["cell", "protocol", "sweep", "job", "machine", "step", "started", "wall time"], rows)


def started(value: str) -> str:
    """A run.json `started` to the minute (`2025-01-01 09:30`); as recorded if it is no ISO time."""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return value


def code(items: Sequence[object]) -> str:
    """Folders in markdown: `A`, `B`."""
    return ", ".join(f"`{item}`" for item in items)


def protocol_link(out: Path) -> str:
    """A relative link to docs/protocol.md when the report is inside this repository, else its name."""
    if out.resolve().is_relative_to(REPO):
        return f"[`docs/protocol.md`]({relative(REPO / 'docs' / 'protocol.md', out.parent)})"
    return "`docs/protocol.md`"


def default_report(independent: Folders) -> Path:
    """Where the report goes when no --out is given: beside the (first) independent sweep, never into the tracked
    docs/."""
    return as_paths(independent)[0].resolve().parent / DEFAULT_NAME


def write_report(
    independent: Folders,
    chained: Folders,
    out=None,
    options=DEFAULT_OPTIONS,
    robust=None,
    resolution=None,
    families=None,
):
    """Read both sweeps' analyses (and the robust, resolution and families ones) and write the report and its
    figures; returns {name: path} of every file written, names relative to the report's folder. Each sweep may be
    several folders of one study (prefit.analysis.folders), analysed as one."""
    out = default_report(independent) if out is None else Path(out)
    figures_dir = out.with_suffix("")
    if figures_dir == out:
        raise AnalysisError(f"{out}: the report's name needs a suffix (e.g. findings.md), its figures go beside it")
    presented = presentation()
    sources = {INDEPENDENT: independent, CHAINED: chained}
    runs = {p: load_analysis(sources[p], options).of_protocol(p) for p in presented}
    for run in runs.values():
        refuse_study_keys(run)
    cells = {p: set(cells_of(r.auc)) for p, r in runs.items()}
    common = cell_order(set.intersection(*cells.values()))
    if not common:
        shown = "; ".join(f"{p}: {', '.join(cell_label(*c) for c in cell_order(cells[p]))}" for p in presented)
        raise AnalysisError(f"no cell is in both sweeps ({shown})")

    def in_common(run: Analysis, name: str) -> pd.DataFrame:
        frame = getattr(run, name)
        return frame[[(h, f) in common for h, f in zip(frame["hls"], frame["hfs"])]]

    frames = {n: pd.concat([in_common(runs[p], n) for p in presented], ignore_index=True) for n in ("stats", "auc")}
    stats, auc = (categorize(frame, presented) for frame in frames.values())
    measures, palette = measures_in(auc.columns), scheme_palette(auc["scheme"].unique())
    written: list[Path] = []

    def link_figure(fig: object, name: str) -> str:
        written.append(write_figure(fig, figures_dir / name))
        return relative(written[-1], out.parent)

    drawn = [m for m in ("auc_capped", "auc") if m in auc]
    boxes = {m: link_figure(plot_auc_boxplot(auc, palette, m), f"{m}_boxplot.png") for m in drawn}
    sections = tables.measure_sections(stats, measures)
    for section in sections:
        m = section["measure"]
        section["figure"] = link_figure(plot_paired_stats(stats, palette, m), f"paired_differences{m.suffix}.png")
        section["table"] = tables.compare_markdown(stats, m, "protocol", presented)
    curves = []
    for cell in common:
        frames = {p: of_cell(r.curves, cell) for p, r in runs.items()}
        triples = {p: of_cell(r.auc, cell)["triple"].nunique() for p, r in runs.items()}
        fig = plot_cell_pair(frames, *cell, triples, palette, options.psnr_cap)
        curves.append({"cell": cell, "link": link_figure(fig, f"psnr_{cell_stem(*cell)}.png")})
    robust_sections = []
    if robust is not None:
        other = load_analysis(robust, options)
        for p in [p for p in presented if p in set(other.auc["protocol"])]:
            comparison = robustness.compare(runs[p], other.of_protocol(p))
            files = robustness.write_comparison(comparison, figures_dir / f"robustness_{p}.md", options)
            written += files.values()
            link = relative(files[f"robustness_{p}.png"], out.parent)
            report = {"protocol": p, "report": relative(files[f"robustness_{p}.md"], out.parent)}
            robust_sections.append(report | robustness.comparison_context(comparison, link, options))
        if not robust_sections:
            raise AnalysisError(f"{other.sweep.name}: holds neither protocol of the report's sweeps")
    axes: dict[str, dict | None] = {"resolution": None, "families": None}
    for name, axis, sweep in (("resolution", RESOLUTION, resolution), ("families", FAMILIES, families)):
        if sweep is not None:
            axes[name], files = axis_section(axis, sweep, options, figures_dir, out.parent)
            written += files
    check = robustness.compare_triples(runs[presented[0]].auc, runs[presented[1]].auc, common, ["hls", "hfs"])
    context = {
        "ci_name": CI_NAMES[options.ci_method],
        "presented": presented,
        "runs": {p: code(r.sweep.roots) for p, r in runs.items()},
        "common": common,
        "only": {p: cell_order(cells[p] - set(common)) for p in presented},
        **coverage(common),
        "epochs": {p: sorted(set(in_common(runs[p], "auc")["n_epochs"])) for p in presented},
        "psnr_cap": options.psnr_cap,
        "protocol_link": protocol_link(out),
        "check": robustness.triples_text(check, ["hls", "hfs"]),
        "measures": measures,
        "verdicts": tables.verdict_table(stats, measures, "protocol", presented),
        "counts": tables.count_table(stats, measures, "protocol", presented),
        "conclusion": conclusion_markdown(stats, common, measures, presented),
        "flagged": len(flagged_cells(auc)),
        "sections": sections,
        "boxes": boxes,
        "means": tables.threshold_markdown(auc),
        "curves": curves,
        "robust": robust_sections,
        "robust_root": None if robust is None else code(as_paths(robust)),
        "runs_table": runs_markdown(runs, common),
        **axes,
    }
    written.append(write_text(render("protocol.md.j2", **context), out))
    remove_stale_figures(figures_dir, written, FIGURE_PATTERNS)
    return {relative(path, out.parent): path for path in written}
