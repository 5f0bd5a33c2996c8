"""summary.md of one sweep's analysis: what was analysed, the verdicts (capped AUC and time to PSNR first, the
raw AUC last and flagged), the per-cell tables and each measure's paired statistics; worded in
templates/summary.md.j2."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from prefit.schema import PSNR_FILE, RUN_FILE

from .groups import group_keys, present, study_texts
from .load import span
from .reduce import QUANTISATION_PSNR_DB, RAW_AUC_FLAG_DB, Measure, by, cell_flags, measures_in
from .render import render
from .stats import ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE
from .tables import (
    RAW_FLAG,
    RAW_FLAG_NOTE,
    count_table,
    metric_table,
    multiplicity_note,
    stats_markdown,
    threshold_markdown,
    verdict_table,
)

if TYPE_CHECKING:
    from .pipeline import Analysis

CI_NAMES = {"percentile": "percentile", "bca": "bias-corrected and accelerated (BCa)"}


def method_context(ci_method: str) -> dict[str, object]:
    """What every report says about how its intervals, tests and verdicts were computed."""
    return {
        "ci_name": CI_NAMES.get(ci_method, ci_method),
        "confidence": f"{CONFIDENCE:.0%}",
        "alpha": f"{ALPHA:g}",
        "resamples": f"{BOOTSTRAP_RESAMPLES:,}",
        "seed": BOOTSTRAP_SEED,
        "raw_flag": RAW_FLAG,
        "raw_flag_db": f"{RAW_AUC_FLAG_DB:g}",
        "quantisation": f"{QUANTISATION_PSNR_DB:.1f}",
    }


def measure_sections(stats: pd.DataFrame, measures: Sequence[Measure]) -> list[dict[str, object]]:
    """Per measure (lead order): the measure, its statistics table and its multiplicity note."""
    return [
        {
            "measure": m,
            "table": stats_markdown(stats, m),
            "multiplicity": multiplicity_note(stats[stats["measure"] == m.name]),
        }
        for m in measures
    ]


def summary_markdown(analysis: Analysis) -> str:
    """summary.md from an analysis."""
    sweep, auc, stats = analysis.sweep, analysis.auc, analysis.stats
    measures, flags = measures_in(auc.columns), cell_flags(auc)
    tables = {}
    for metric in ("auc_capped", "auc"):
        if metric in auc.columns:
            table, best = metric_table(auc, metric, flags)
            tables[metric] = {"table": table, "best": ", ".join(f"{s} in {n} cell(s)" for s, n in best.items())}
    context = {
        **method_context(analysis.options.ci_method),
        "root": sweep.root,
        "root_resolved": sweep.root.resolve(),
        "psnr_file": PSNR_FILE,
        "run_file": RUN_FILE,
        "n_files": len(sweep.jobs),
        "n_complete": sum(1 for run in sweep.runs.values() if run and run.get("status") == "complete"),
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
        "flagged_cells": int(flags["flag_raw_auc"].sum()),
        "flag_note": RAW_FLAG_NOTE,
        "threshold_table": threshold_markdown(auc, flags),
        "metric_tables": tables,
        "sections": measure_sections(stats, measures) if len(stats) else [],
    }
    return render("summary.md.j2", **context)
