"""summary.md of one sweep's analysis: what was analysed, the verdicts (capped AUC and time to PSNR first, the
raw AUC last and flagged), the per-cell tables and each measure's paired statistics; worded in
templates/summary.md.j2."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from prefit.schema import PSNR_FILE, RUN_FILE

from .load import span
from .reduce import (
    QUANTISATION_PSNR_DB,
    RAW_AUC_FLAG_DB,
    Measure,
    cell_flags,
    measures_in,
    protocol_order,
    scheme_order,
)
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
from .variants import VARIANT, group_keys, has_variants, variant_order

if TYPE_CHECKING:
    from .pipeline import Analysed

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


def measure_sections(
    long: pd.DataFrame, measures: Sequence[Measure], protocol_column: bool | None = None
) -> list[dict[str, object]]:
    """Per measure (lead order): the measure, its statistics table and its multiplicity note."""
    sections = []
    for m in measures:
        rows = long[long["measure"] == m.name]
        sections.append(
            {"measure": m, "table": stats_markdown(long, m, protocol_column), "multiplicity": multiplicity_note(rows)}
        )
    return sections


def summary_markdown(analysed: Analysed) -> str:
    """summary.md from an analysed sweep."""
    sweep, auc, long = analysed.sweep, analysed.auc, analysed.long
    triples = auc.groupby(group_keys(auc))["triple"].nunique()
    measures = measures_in(auc.columns)
    flags = cell_flags(auc)
    tables = {}
    for metric in ("auc_capped", "auc"):
        if metric in auc.columns:
            table, best = metric_table(auc, metric, flags)
            tables[metric] = {"table": table, "best": ", ".join(f"{s} in {n} cell(s)" for s, n in best.items())}
    context = {
        **method_context(analysed.ci_method),
        "root": sweep.root,
        "root_resolved": sweep.root.resolve(),
        "psnr_file": PSNR_FILE,
        "run_file": RUN_FILE,
        "n_files": len(sweep.files),
        "n_complete": sum(1 for run in sweep.runs.values() if run and run.get("status") == "complete"),
        "n_cells": auc.groupby(["hls", "hfs", "protocol"]).ngroups,
        "hls": span(auc["hls"]),
        "hfs": span(auc["hfs"]),
        "variants": [f"`{v}`" if v else "(none)" for v in variant_order(auc[VARIANT])] if has_variants(auc) else [],
        "protocols": ", ".join(protocol_order(auc["protocol"])),
        "triples": span(triples),
        "epochs": span(auc["n_epochs"]),
        "schemes": ", ".join(scheme_order(auc["scheme"].unique())),
        "n_fits": len(auc),
        "n_diverged": int(auc["diverged"].sum()),
        "n_saturated": int(auc["saturated"].sum()),
        "psnr_cap": analysed.psnr_cap,
        "measures": measures,
        "has_stats": bool(len(long)),
        "verdicts": verdict_table(long, measures) if len(long) else "",
        "counts": count_table(long, measures) if len(long) else "",
        "flagged_cells": int(flags["flag_raw_auc"].sum()),
        "flag_note": RAW_FLAG_NOTE,
        "threshold_table": threshold_markdown(auc, flags),
        "metric_tables": tables,
        "sections": measure_sections(long, measures) if len(long) else [],
    }
    return render("summary.md.j2", **context)
