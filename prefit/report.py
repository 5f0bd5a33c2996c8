"""The protocol-finding report: the same cells run under the chained and the independent protocol, side by side.

    python -m prefit.report --independent SWEEP_I --chained SWEEP_C [--out docs/findings.md] [analysis.psnr_cap=59]

The original study's code aliased its "initial" weights (docs/protocol.md), so its schemes ran as one chain per
triple (`protocol=chained`); `prefit` runs the study as stated (`protocol=independent`). This report reads one
sweep of each, analyses both with `prefit.analyze` (in memory: nothing is written into the sweep folders) and
writes a markdown file generated entirely from their data, with its figures in a folder named after it
(`docs/findings.md` -> `docs/findings/`, linked relatively so that it renders on GitHub):

  * which cells the two sweeps share, and whether their triples are the same (target_index per triple, and the
    pre-fit images), and whether the `random` fits (the same computation under both protocols) agree;
  * "What changes in the conclusion": a paragraph written from the paired statistics, about the original's
    conclusion that pre-fitting on an image of another class helps small models most;
  * the paired differences from random (Δ AUC with bootstrap CI and Wilcoxon p) per protocol, as a figure
    and a table; the mean AUC per scheme per protocol;
  * per common cell, the chained protocol's mean ± std PSNR curves beside the independent protocol's, on one
    y axis (`findings/psnr_{hls}hls_{hfs}hfs.png`);
  * the runs: cells, triples, epochs, jobs and their time (the sum of `wall_s` of each job's run.json).

A scheme *beats* random in a cell when the bootstrap CI of its mean paired difference lies above 0 and the
Wilcoxon p is below ALPHA (`prefit.analyze.verdict`); the report states this criterion where it uses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from prefit.analyze import (
    ALPHA,
    BASELINE,
    CAP_HELP,
    CONFIDENCE,
    DPI,
    QUANTISATION_PSNR_DB,
    STATS_NOTE,
    AnalysisError,
    Sweep,
    _fmt,
    _one_line,
    _remove_stale_figures,
    _span,
    _write_figure,
    _write_text,
    auc_table,
    cell_label,
    cell_order,
    curves_table,
    draw_cell_curves,
    fmt_diff_ci,
    fmt_p,
    load_sweep,
    markdown_table,
    mean_table,
    plot_paired_stats,
    resolve_psnr_cap,
    scheme_order,
    scheme_palette,
    split_overrides,
    stats_table,
    verdict,
)

PROTOCOLS = ("chained", "independent")  # the report's order: the original's protocol, then the corrected one
FOCUS = "other_class"  # the scheme of the original's conclusion
ORIGINAL_CLAIM = "pre-fitting on an image of a different class helps small models most"
DEFAULT_OUT = Path("docs/findings.md")
REPO = Path(__file__).resolve().parents[1]
VERDICT_WORDS = {
    "better": "beats random",
    "worse": "is worse than random",
    "unclear": "is not clearly different from random",
    "no data": "has no usable pairs",
}


@dataclass
class ProtocolRun:
    """One protocol's share of a sweep, analysed: restricted to that protocol's rows."""

    protocol: str
    sweep: Sweep
    curves: pd.DataFrame
    auc: pd.DataFrame
    stats: pd.DataFrame

    def cells(self) -> set[tuple[int, int]]:
        return {(int(h), int(f)) for h, f in zip(self.auc["hls"], self.auc["hfs"], strict=True)}


def analyse_protocol(sweep_dir: str | os.PathLike, protocol: str, psnr_cap: float | None = None) -> ProtocolRun:
    """Load a sweep and analyse its fits of the given protocol (curves, AUC table, paired stats)."""
    sweep = load_sweep(sweep_dir)
    found = sorted(sweep.fits["protocol"].unique())
    if protocol not in found:
        raise AnalysisError(f"{sweep.root}: no fits with protocol {protocol!r} (found: {', '.join(found)})")
    fits = sweep.fits[sweep.fits["protocol"] == protocol].reset_index(drop=True)
    members = sweep.members[sweep.members["protocol"] == protocol].reset_index(drop=True)
    auc = auc_table(fits, members, psnr_cap)
    return ProtocolRun(protocol, sweep, curves_table(fits), auc, stats_table(auc))


def _in_cells(frame: pd.DataFrame, cells: set[tuple[int, int]]) -> pd.DataFrame:
    keep = [(int(h), int(f)) in cells for h, f in zip(frame["hls"], frame["hfs"], strict=True)]
    return frame[np.asarray(keep, dtype=bool)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- checks


def compare_triples(a: ProtocolRun, b: ProtocolRun, cells: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """Per common cell: triples in each run, in both, how many of those fit a different A (target_index), how
    many fits pre-fit on a different image (prefit_index, schemes run in both), and the largest difference
    between the two runs' AUCs of the `random` fits (the same computation under both protocols)."""
    rows = []
    for hls, hfs in cells:
        # the AUC tables carry each fit's target_index and prefit_index
        side = [run.auc[(run.auc["hls"] == hls) & (run.auc["hfs"] == hfs)] for run in (a, b)]
        targets = [s.groupby("triple")["target_index"].agg(lambda v: tuple(sorted(set(v.dropna())))) for s in side]
        common = sorted(set(targets[0].index) & set(targets[1].index))
        target_diff = sum(targets[0][t] != targets[1][t] for t in common)
        prefit = [s.dropna(subset=["prefit_index"]).set_index(["scheme", "triple"])["prefit_index"] for s in side]
        shared = prefit[0].index.intersection(prefit[1].index)
        prefit_diff = int((prefit[0][shared] != prefit[1][shared]).sum()) if len(shared) else 0
        random_auc = [s[s["scheme"] == BASELINE].set_index("triple")["auc"].astype(float) for s in side]
        both = random_auc[0].index.intersection(random_auc[1].index)
        with np.errstate(invalid="ignore"):
            gap = (random_auc[0][both] - random_auc[1][both]).abs()
        rows.append({
            "hls": hls, "hfs": hfs, "triples_a": len(targets[0]), "triples_b": len(targets[1]),
            "common": len(common), "target_mismatch": int(target_diff), "prefit_compared": len(shared),
            "prefit_mismatch": prefit_diff,
            "random_auc_max_gap": float(gap.max()) if len(gap) and gap.notna().any() else np.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def triples_sentence(check: pd.DataFrame, names: tuple[str, str]) -> str:
    """What compare_triples found, in words."""
    a, b = names
    same_count = (check["triples_a"] == check["triples_b"]) & (check["common"] == check["triples_a"])
    same = same_count & (check["target_mismatch"] == 0)
    if same.all():
        text = (f"In all {len(check)} common cell(s) the two sweeps hold the same triples: the same triple numbers "
                f"({_span(check['common'])} per cell), and every triple fits the same target image A "
                "(`target_index` matches).")  # fmt: skip
    else:
        bad = ", ".join(
            f"{cell_label(r.hls, r.hfs)} ({a}: {r.triples_a} triples, {b}: {r.triples_b}, {r.common} in both, "
            f"{r.target_mismatch} with a different A)" for r in check[~same].itertuples()
        )  # fmt: skip
        text = (f"**The triples differ** in {int((~same).sum())} of {len(check)} common cell(s): {bad}. The "
                "comparison below sets side by side runs on different images; differences between the protocols "
                "there mix the protocol with the images.")  # fmt: skip
    compared = int(check["prefit_compared"].sum())
    if compared:
        mismatched = int(check["prefit_mismatch"].sum())
        text += (" The pre-fit images (`prefit_index` of the fits of A) also match in all "
                 f"{compared} fits run under both protocols." if not mismatched else
                 f" The pre-fit image (`prefit_index`) differs in {mismatched} of the {compared} fits of A run "
                 "under both protocols.")  # fmt: skip
    gap = check["random_auc_max_gap"].dropna()
    if len(gap):
        text += (f" The `random` fits are the same computation under both protocols; their AUCs differ by at most "
                 f"{_fmt(float(gap.max()))} dB·epoch between the sweeps.")  # fmt: skip
    return text


# -------------------------------------------------------------------------------------------- figures


def plot_cell_pair(curves: dict[str, pd.DataFrame], hls: int, hfs: int, triples: dict[str, int],
                   palette: dict[str, str]) -> Figure:  # fmt: skip
    """One cell: the chained protocol's mean ± std curves beside the independent protocol's, one y axis."""
    fig = Figure(figsize=(13, 5.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(PROTOCOLS), sharey=True, sharex=True, squeeze=False)[0]
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        draw_cell_curves(ax, curves[protocol], palette, labels={})
        ax.set_title(f"{protocol} protocol: mean ± 1 std over {triples[protocol]} triples", fontsize=10)
    for ax in axes[1:]:
        ax.set_ylabel("")
    handles, labels = axes[0].get_legend_handles_labels()
    for handle, label in zip(*axes[1].get_legend_handles_labels(), strict=True):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"SIREN with {hls} hidden layers, {hfs} hidden features: PSNR vs epoch", fontsize=11)
    return fig


# -------------------------------------------------------------------------------------------- markdown


def _stats_of(stats: pd.DataFrame) -> dict[tuple[int, int, str], pd.Series]:
    return {(int(r["hls"]), int(r["hfs"]), str(r["scheme"])): r for _, r in stats.iterrows()}


def _describe(row: pd.Series | None, suffix: str = "") -> str:
    """`Δ = +1,234 [+567, +2,000], p = 0.012, n = 20`."""
    if row is None:
        return "no pairs"
    return f"Δ = {fmt_diff_ci(row, suffix)}, p = {fmt_p(row[f'p_wilcoxon{suffix}'])}, n = {int(row[f'n{suffix}'])}"


def verdict_counts(stats: dict[str, pd.DataFrame], cells: Sequence[tuple[int, int]], suffix: str = "") -> pd.DataFrame:
    """Per scheme and protocol: in how many common cells the scheme beats random, is worse, or is unclear."""
    schemes = scheme_order(set().union(*(set(s["scheme"]) for s in stats.values())))
    rows = []
    for scheme in schemes:
        row = {"scheme": scheme}
        for protocol, table in stats.items():
            by_key = _stats_of(table)
            found = [verdict(by_key.get((h, f, scheme)), suffix) for h, f in cells]
            for word in ("better", "worse"):
                row[f"{protocol}_{word}"] = found.count(word)
            row[f"{protocol}_cells"] = sum(v != "no data" for v in found)
        rows.append(row)
    return pd.DataFrame(rows)


def conclusion_paragraph(stats: dict[str, pd.DataFrame], cells: Sequence[tuple[int, int]],
                         psnr_cap: float | None = None) -> str:  # fmt: skip
    """'What changes in the conclusion', written from the paired statistics of both protocols on the common
    cells: the original's claim about other_class in the smallest cell(s), counts over all cells, where the
    gain is largest, and whether the claim survives the corrected protocol."""
    chained, independent = PROTOCOLS
    cells = cell_order(cells)
    smallest = [c for c in cells if c[0] * c[1] == cells[0][0] * cells[0][1]]
    smallest_names = " and ".join(cell_label(*c) for c in smallest)
    plural = len(smallest) > 1
    by_key = {p: _stats_of(s) for p, s in stats.items()}
    parts = [  # each a paragraph
        f"The original study concluded that {ORIGINAL_CLAIM}. Here a scheme *beats* random in a cell when the "
        f"{CONFIDENCE:.0%} bootstrap CI of its mean paired AUC difference lies entirely above 0 and the two-sided "
        f"Wilcoxon p is below {ALPHA:g} (*worse*: the CI below 0, p below {ALPHA:g}); otherwise the difference is "
        "not clear."
    ]
    present = {p: set(s["scheme"]) for p, s in stats.items()}
    if not all(FOCUS in present[p] for p in PROTOCOLS):
        missing = [p for p in PROTOCOLS if FOCUS not in present[p]]
        parts.append(f"`{FOCUS}` was not run under the {' and '.join(missing)} protocol, so the original's claim "
                     "cannot be checked here; the table below gives the other schemes.")  # fmt: skip
        return "\n\n".join(parts)

    verdicts = {p: [verdict(by_key[p].get((*c, FOCUS))) for c in smallest] for p in PROTOCOLS}
    for cell in smallest:
        descs = []
        for p in PROTOCOLS:
            row = by_key[p].get((*cell, FOCUS))
            descs.append(f"under {p}, {_describe(row)}: {FOCUS} {VERDICT_WORDS[verdict(row)]}")
        which = "one of the smallest common cells" if plural else "the smallest common cell"
        parts.append(f"In {which}, {cell_label(*cell)}, " + "; ".join(descs) + ".")

    n_used = [int(r["n"]) for p in PROTOCOLS for c in smallest if (r := by_key[p].get((*c, FOCUS))) is not None]
    if n_used and min(n_used) >= 1 and 2.0 / 2 ** min(n_used) >= ALPHA:
        parts[-1] += (
            f" With {min(n_used)} pairs the smallest exact two-sided Wilcoxon p is 2/2^{min(n_used)} = "
            f"{2.0 / 2 ** min(n_used):.3g}, not below {ALPHA:g}: no difference can count as clear with so few "
            "triples (the criterion needs at least 6), whatever the CI."
        )
    counts = verdict_counts(stats, cells).set_index("scheme")
    c = counts.loc[FOCUS]
    across = (
        f"Across all {len(cells)} common cells, {FOCUS} beats random in {c[f'{chained}_better']} under {chained} "
        f"and in {c[f'{independent}_better']} under {independent} (worse than random in {c[f'{chained}_worse']} "
        f"and {c[f'{independent}_worse']})."
    )
    if len(cells) > 1:
        largest = []
        for p in PROTOCOLS:
            table = stats[p][stats[p]["scheme"] == FOCUS].dropna(subset=["mean_diff_auc"])
            if len(table):
                top = table.loc[table["mean_diff_auc"].idxmax()]
                cell = (int(top["hls"]), int(top["hfs"]))
                rank = cells.index(cell) + 1
                where = " (the smallest)" if cell in smallest else f" (size rank {rank} of {len(cells)})"
                largest.append(f"{cell_label(*cell)}{where} under {p}")
        if largest:
            across += f" Its mean gain over random is largest in {' and in '.join(largest)}."
    parts.append(across)

    in_smallest = f"in the smallest cell{'s' if plural else ''} ({smallest_names})"
    chained_yes = all(v == "better" for v in verdicts[chained])
    independent_yes = all(v == "better" for v in verdicts[independent])
    independent_worse = all(v == "worse" for v in verdicts[independent])
    if chained_yes and not independent_yes:
        parts.append(
            f"**What changes:** the original's finding that {FOCUS} beats random in small models holds only under "
            f"the chained protocol. There the `{FOCUS}` fit of A starts from a model already fit to A twice (the "
            "chain A → same-class image → A → other-class image → A), so its head start includes re-fitting A, not "
            "only pre-fitting on another image. Run as stated (independent), pre-fitting on an image of another "
            "class "
            + ("is worse than" if independent_worse else "does not beat")
            + f" a random initialisation {in_smallest}."
        )
    elif chained_yes and independent_yes:
        ratio = []
        for cell in smallest:
            d = {p: by_key[p][(*cell, FOCUS)]["mean_diff_auc"] for p in PROTOCOLS}
            if d[chained]:
                ratio.append(f"{cell_label(*cell)}: {d[independent] / d[chained]:.0%}")
        parts.append(
            f"**What changes:** the direction of the conclusion survives the corrected protocol {in_smallest}: "
            f"{FOCUS} beats random under both protocols. The size of the gain does change: under independent it is "
            + ", ".join(ratio)
            + " of the gain under chained."
        )
    elif independent_yes:
        parts.append(
            f"**What changes:** this sweep does not reproduce the original's finding under the chained protocol "
            f"{in_smallest}, yet under the independent protocol {FOCUS} beats random there."
        )
    else:
        parts.append(
            f"**What changes:** neither protocol shows {FOCUS} beating random {in_smallest}, so this sweep does not "
            "reproduce the original's conclusion even under the chained protocol; under the independent protocol "
            f"{FOCUS} {VERDICT_WORDS[verdicts[independent][0]]} there."
        )
    others = [s for s in counts.index if s not in (FOCUS, BASELINE)]
    if others:
        parts.append("For comparison, cells where each other scheme beats random (chained / independent): "
                     + "; ".join(f"{s} {counts.loc[s, f'{chained}_better']} / {counts.loc[s, f'{independent}_better']}"
                                 for s in others) + f", of {len(cells)}.")  # fmt: skip
    if psnr_cap is not None and all("mean_diff_auc_capped" in s.columns for s in stats.values()):
        capped = verdict_counts(stats, cells, "_capped").set_index("scheme").loc[FOCUS]
        small = "; ".join(f"{p}: {_describe(by_key[p].get((*smallest[0], FOCUS)), '_capped')}" for p in PROTOCOLS)
        parts.append(
            f"With PSNR capped at {psnr_cap:g} dB (beyond {QUANTISATION_PSNR_DB:.1f} dB a fit is better than 8-bit "
            f"quantisation can show), {FOCUS} beats random in {capped[f'{chained}_better']} cells under chained and "
            f"{capped[f'{independent}_better']} under independent; in {cell_label(*smallest[0])}, {small}."
        )
    return "\n\n".join(parts)


def _duration(seconds: float) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)  # round once, so that 239.7 s reads 4 min 00 s, not 3 min 60 s
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def job_table(run: ProtocolRun) -> pd.DataFrame:
    """One row per job of the run's protocol: its cell, run.json status, wall_s and device."""
    rows = []
    for folder, (hls, hfs, protocol) in run.sweep.job_cells.items():
        if protocol != run.protocol:
            continue
        info = run.sweep.runs.get(folder) or {}
        wall = info.get("wall_s")
        rows.append({
            "hls": hls, "hfs": hfs, "job": folder, "status": info.get("status", "no run.json"),
            "wall_s": float(wall) if isinstance(wall, (int, float)) else np.nan,
            "device": str(info.get("device", "?")),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["hls", "hfs", "job", "status", "wall_s", "device"])


def runs_markdown(runs: dict[str, ProtocolRun], common: Sequence[tuple[int, int]]) -> str:
    """The runs section: per sweep its cells, triples, epochs, jobs and time; per common cell the time of each."""
    lines = []
    header = ["protocol", "sweep", "cells", "triples per cell", "epochs per fit", "schemes", "jobs (complete)",
              "time (sum of wall_s)", "device(s)"]  # fmt: skip
    rows, jobs = [], {}
    for protocol, run in runs.items():
        jobs[protocol] = job_table(run)
        j = jobs[protocol]
        triples = run.auc.groupby(["hls", "hfs"])["triple"].nunique()
        missing = int(j["wall_s"].isna().sum())
        time = _duration(float(j["wall_s"].sum())) + (f" ({missing} job(s) without wall_s)" if missing else "")
        rows.append([
            protocol, f"`{run.sweep.root}`", len(triples), _span(triples), _span(run.auc["n_epochs"]),
            ", ".join(scheme_order(run.auc["scheme"].unique())), f"{len(j)} ({int((j['status'] == 'complete').sum())})",
            time, ", ".join(sorted(set(j["device"]))) or "—",
        ])  # fmt: skip
    lines += [markdown_table(header, rows), ""]
    lines.append("Time is the sum over jobs of `wall_s` in each job's `run.json` (jobs may have run in parallel).")
    header = ["cell"] + [f"triples ({p})" for p in runs] + [f"epochs ({p})" for p in runs]
    header += [f"time ({p})" for p in runs]
    rows = []
    for hls, hfs in common:
        row = [cell_label(hls, hfs)]
        cell_auc = {p: r.auc[(r.auc["hls"] == hls) & (r.auc["hfs"] == hfs)] for p, r in runs.items()}
        row += [cell_auc[p]["triple"].nunique() for p in runs]
        row += [_span(cell_auc[p]["n_epochs"]) for p in runs]
        for p in runs:
            j = jobs[p][(jobs[p]["hls"] == hls) & (jobs[p]["hfs"] == hfs)]
            row.append(_duration(float(j["wall_s"].sum())) if len(j) and j["wall_s"].notna().all() else "—")
        rows.append(row)
    lines += ["", markdown_table(header, rows)]
    return "\n".join(lines)


def mean_auc_markdown(runs: dict[str, ProtocolRun], cells: Sequence[tuple[int, int]], metric: str = "auc") -> str:
    """Mean (± std) of the finite AUCs per cell and scheme, one column per protocol."""
    means = {p: mean_table(r.auc, metric).set_index(["hls", "hfs", "scheme"]) for p, r in runs.items()}
    schemes = scheme_order(set().union(*(set(r.auc["scheme"]) for r in runs.values())))
    name = "capped AUC" if metric == "auc_capped" else "AUC"
    header = ["cell", "scheme"] + [f"mean {name} ± std ({p})" for p in runs] + [f"finite fits ({p})" for p in runs]
    rows = []
    for hls, hfs in cells:
        for scheme in schemes:
            found = {p: m.loc[(hls, hfs, scheme)] if (hls, hfs, scheme) in m.index else None for p, m in means.items()}
            if all(v is None for v in found.values()):
                continue
            row = [cell_label(hls, hfs), scheme]
            row += [f"{_fmt(v['mean'])} ± {_fmt(v['std'])}" if v is not None else "—" for v in found.values()]
            row += [f"{int(v['n_finite'])}/{int(v['n_fits'])}" if v is not None else "—" for v in found.values()]
            rows.append(row)
    return markdown_table(header, rows)


def paired_markdown(stats: dict[str, pd.DataFrame], cells: Sequence[tuple[int, int]], suffix: str = "") -> str:
    """Per cell and scheme: Δ vs random [CI], p, n and diverged under each protocol, side by side."""
    by_key = {p: _stats_of(s) for p, s in stats.items()}
    schemes = scheme_order(set().union(*(set(s["scheme"]) for s in stats.values())))
    name = "capped AUC" if suffix else "AUC"
    header = ["cell", "scheme"]
    for p in stats:
        header += [f"Δ {name} [{CONFIDENCE:.0%} CI] ({p})", f"p ({p})", f"n ({p})", f"diverged ({p})"]
    rows = []
    for hls, hfs in cells:
        for scheme in schemes:
            found = {p: by_key[p].get((hls, hfs, scheme)) for p in stats}
            if all(v is None for v in found.values()):
                continue
            row = [cell_label(hls, hfs), scheme]
            for r in found.values():
                if r is None:
                    row += ["—"] * 4
                else:
                    row += [fmt_diff_ci(r, suffix), fmt_p(r[f"p_wilcoxon{suffix}"]), int(r[f"n{suffix}"]),
                            int(r["n_diverged"])]  # fmt: skip
            rows.append(row)
    return markdown_table(header, rows)


def _link(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _protocol_link(out: Path) -> str:
    """A relative link to docs/protocol.md when the report is inside this repository, else its name."""
    target = REPO / "docs" / "protocol.md"
    if out.resolve().is_relative_to(REPO):
        return f"[`docs/protocol.md`]({_link(target, out.resolve().parent)})"
    return "`docs/protocol.md`"


# ------------------------------------------------------------------------------------------- pipeline


def write_report(
    independent: str | os.PathLike,
    chained: str | os.PathLike,
    out: str | os.PathLike = DEFAULT_OUT,
    psnr_cap: float | None = None,
) -> dict[str, Path]:
    """Analyse both sweeps and write the report and its figures; returns {name: path} of every file written
    (names relative to the report's folder)."""
    if psnr_cap is not None and not np.isfinite(psnr_cap):
        raise AnalysisError(f"psnr_cap must be a finite number of dB, got {psnr_cap}")
    out = Path(out)
    figures_dir = out.with_suffix("")
    if figures_dir == out:
        raise AnalysisError(f"{out}: the report's name needs a suffix (e.g. findings.md), its figures go beside it")
    runs = {
        "chained": analyse_protocol(chained, "chained", psnr_cap),
        "independent": analyse_protocol(independent, "independent", psnr_cap),
    }
    cells_of = {p: r.cells() for p, r in runs.items()}
    common = cell_order(cells_of["chained"] & cells_of["independent"])
    if not common:
        raise AnalysisError(
            f"no cell is in both sweeps (chained: {', '.join(cell_label(*c) for c in cell_order(cells_of['chained']))};"
            f" independent: {', '.join(cell_label(*c) for c in cell_order(cells_of['independent']))})"
        )
    only = {p: cell_order(cells_of[p] - set(common)) for p in PROTOCOLS}
    stats = {p: _in_cells(r.stats, set(common)) for p, r in runs.items()}
    palette = scheme_palette(set().union(*(set(r.auc["scheme"]) for r in runs.values())))

    written = []
    both = pd.concat([s for s in stats.values()], ignore_index=True)
    if len(both):
        fig = plot_paired_stats(both, palette, protocols=PROTOCOLS, title="Paired difference from random")
        written.append(_write_figure(fig, figures_dir / "paired_differences.png"))
        if psnr_cap is not None:
            fig = plot_paired_stats(both, palette, "_capped", PROTOCOLS, f"PSNR capped at {psnr_cap:g} dB")
            written.append(_write_figure(fig, figures_dir / "paired_differences_capped.png"))
    cell_figures = {}
    for hls, hfs in common:
        curves = {p: r.curves[(r.curves["hls"] == hls) & (r.curves["hfs"] == hfs)] for p, r in runs.items()}
        triples = {p: r.auc[(r.auc["hls"] == hls) & (r.auc["hfs"] == hfs)]["triple"].nunique() for p, r in runs.items()}
        path = figures_dir / f"psnr_{hls}hls_{hfs}hfs.png"
        written.append(_write_figure(plot_cell_pair(curves, hls, hfs, triples, palette), path))
        cell_figures[(hls, hfs)] = path

    check = compare_triples(runs["chained"], runs["independent"], common)
    epochs = {p: sorted(set(_in_cells(r.auc, set(common))["n_epochs"])) for p, r in runs.items()}
    link = {path: _link(path, out.parent) for path in written}
    lines = [
        "# Chained vs independent protocol: what the original's aliasing defect changes",
        "",
        "Generated by `python -m prefit.report` from two sweeps; every number and sentence below is computed from "
        "their files (`psnr.parquet` and `run.json` of each job). The original study's code aliased its initial "
        "weights, so its schemes ran as one chain per triple: A (reported as random) → same-class image → A "
        "(reported as same_class) → other-class image → A (reported as other_class). `protocol=chained` runs that "
        "chain, `protocol=independent` the study as stated (every scheme from the triple's random "
        "initialisation); see " + _protocol_link(out) + ".",
        "",
        f"- chained sweep: `{runs['chained'].sweep.root}`; independent sweep: `{runs['independent'].sweep.root}`",
        f"- compared: the {len(common)} cell(s) in both sweeps: {', '.join(cell_label(*c) for c in common)}",
    ]
    for p in PROTOCOLS:
        if only[p]:
            lines.append(f"- only in the {p} sweep (left out): {', '.join(cell_label(*c) for c in only[p])}")
    lines.append(f"- epochs per fit: chained {', '.join(map(str, epochs['chained']))}; independent "
                 f"{', '.join(map(str, epochs['independent']))}"
                 + ("" if epochs["chained"] == epochs["independent"] else
                    " (**different**: AUCs are not comparable across the protocols, only within each)"))  # fmt: skip
    lines.append(f"- PSNR cap: {'off' if psnr_cap is None else f'{psnr_cap:g} dB'}")
    lines += ["", triples_sentence(check, ("chained", "independent"))]

    lines += ["", "## What changes in the conclusion", "", conclusion_paragraph(stats, common, psnr_cap), ""]
    counts = verdict_counts(stats, common)
    header = ["scheme"] + [f"beats random ({p})" for p in PROTOCOLS] + [f"worse than random ({p})" for p in PROTOCOLS]
    rows = [[r["scheme"]] + [f"{r[f'{p}_better']}/{r[f'{p}_cells']}" for p in PROTOCOLS]
            + [f"{r[f'{p}_worse']}/{r[f'{p}_cells']}" for p in PROTOCOLS] for _, r in counts.iterrows()]  # fmt: skip
    lines += ["Cells (of those with pairs) where each scheme beats random or is worse than random:", "",
              markdown_table(header, rows)]  # fmt: skip

    lines += ["", "## Paired differences from random", "", STATS_NOTE, ""]
    if len(both):
        lines += [f"![Paired differences from random]({link[figures_dir / 'paired_differences.png']})", ""]
    lines += [paired_markdown(stats, common)]
    if psnr_cap is not None:
        lines += ["", f"### With PSNR capped at {psnr_cap:g} dB", ""]
        if len(both):
            lines += [f"![Paired differences, capped AUC]({link[figures_dir / 'paired_differences_capped.png']})", ""]
        lines += [paired_markdown(stats, common, "_capped")]

    lines += ["", "## Mean AUC per scheme", "",
              "AUC: the trapezoid of PSNR (dB) over epoch index. Means and standard deviations over the finite AUCs "
              "of a cell's fits (their number after the slash: of all fits).", "",
              mean_auc_markdown(runs, common)]  # fmt: skip
    if psnr_cap is not None:
        lines += ["", mean_auc_markdown(runs, common, "auc_capped")]

    lines += ["", "## PSNR curves per cell", "",
              "Mean ± 1 std of PSNR over triples at every epoch; left the chained protocol (the original's figures), "
              "right the independent protocol, on one y axis."]  # fmt: skip
    for cell in common:
        lines += ["", f"### {cell_label(*cell)}", "", f"![{cell_label(*cell)}]({link[cell_figures[cell]]})"]

    lines += ["", "## Runs", "", runs_markdown(runs, common)]
    written.append(_write_text("\n".join(lines) + "\n", out))
    _remove_stale_figures(figures_dir, written, ("psnr_*.png", "paired_differences*.png"))
    return {_link(path, out.parent): path for path in written}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: unusable input is one `error: ...` line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m prefit.report",
        description="Compare a sweep run under protocol=chained with one under protocol=independent: "
        "docs/findings.md and its figures.",
    )
    parser.add_argument("--independent", required=True, help="sweep folder run with protocol=independent")
    parser.add_argument("--chained", required=True, help="sweep folder run with protocol=chained")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the report (default: {DEFAULT_OUT}); "
                        "its figures go into the folder of the same name without the suffix")  # fmt: skip
    parser.add_argument("--psnr-cap", type=float, default=None, metavar="DB", help=CAP_HELP)
    parser.add_argument("overrides", nargs="*", metavar="analysis.psnr_cap=DB",
                        help="Hydra-style spelling of --psnr-cap (null: off)")  # fmt: skip
    args = parser.parse_intermixed_args(argv)
    try:
        positional, overrides = split_overrides(args.overrides)
        if positional:
            raise AnalysisError(f"unexpected argument(s): {' '.join(positional)} (use --independent/--chained)")
        outputs = write_report(args.independent, args.chained, args.out, resolve_psnr_cap(args.psnr_cap, overrides))
    except (AnalysisError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and {len(outputs) - 1} figure(s) in {args.out.with_suffix('')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
