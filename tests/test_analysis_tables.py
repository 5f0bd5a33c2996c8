"""prefit.analysis.tables: markdown tables, the raw-AUC marker, and the packaged templates."""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest

from prefit.analysis.reduce import MEASURE_BY_NAME
from prefit.analysis.tables import (
    RAW_FLAG,
    environment,
    fmt,
    fmt_p,
    markdown_table,
    render,
    stats_markdown,
    verdict_table,
    verdict_text,
)

TEMPLATES = Path(__file__).resolve().parents[1] / "prefit" / "analysis" / "templates"


def long_rows() -> pd.DataFrame:
    rows = []
    for measure, diff, verdict in (
        ("auc_capped", 500.0, "beats"),
        ("epochs_to_30db", -12.0, "beats"),
        ("epochs_to_40db", 3.0, "unclear"),
        ("auc", 90_000.0, "worse"),
    ):
        for hfs, flag in ((32, True), (64, False)):
            rows.append(
                {
                    "hls": 2,
                    "hfs": hfs,
                    "protocol": "independent",
                    "scheme": "same_class",
                    "measure": measure,
                    "baseline": "random",
                    "n": 20,
                    "delta": diff,
                    "ci_low": diff - 1,
                    "ci_high": diff + 1,
                    "p": 0.0004,
                    "verdict": verdict,
                    "n_diverged": 0,
                    "n_saturated": 0,
                    "n_unreached": 2,
                    "flag_raw_auc": flag,
                }
            )
    return pd.DataFrame(rows)


def test_markdown_table_escapes_pipes() -> None:
    assert markdown_table(["a", "b"], [[1, "x|y"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_number_formats() -> None:
    assert fmt(12345.6) == "12,346" and fmt(12.3456) == "12.35" and fmt(2.0, sign=True) == "+2" and fmt(np.nan) == "—"
    assert fmt_p(0.0004) == "<0.001" and fmt_p(0.0312) == "0.031" and fmt_p(np.nan) == "—"


def test_verdict_table_leads_with_capped_auc_and_flags_the_raw_auc() -> None:
    long = long_rows()
    measures = [MEASURE_BY_NAME[m] for m in ("auc_capped", "epochs_to_30db", "epochs_to_40db", "auc")]
    lines = verdict_table(long, measures).splitlines()
    assert lines[0] == "| cell | scheme | capped AUC | epochs to 30 dB | epochs to 40 dB | raw AUC |"
    assert lines[2] == (
        f"| 2x32 | same_class | **beats** (+500) | **beats** (-12) | unclear (+3) | **worse** (+90,000) {RAW_FLAG} |"
    )
    assert lines[3].endswith("| **worse** (+90,000) |")  # 2x64: no fit past 100 dB, no marker
    assert verdict_text(None) == "—"


def test_stats_markdown_per_measure() -> None:
    table = stats_markdown(long_rows(), MEASURE_BY_NAME["epochs_to_30db"])
    header, _, first, _ = table.splitlines()
    assert header == (
        "| cell | scheme | Δ epochs to 30 dB [95% CI] | p (Wilcoxon) | n | verdict | unreached | diverged |"
    )
    assert first == "| 2x32 | same_class | -12 [-13, -11] | <0.001 | 20 | **beats** | 2 | 0 |"
    raw = stats_markdown(long_rows(), MEASURE_BY_NAME["auc"]).splitlines()[2]
    assert f"+90,000 [+89,999, +90,001] {RAW_FLAG}" in raw


def test_templates_are_packaged_and_strict() -> None:
    names = set(environment().list_templates())
    assert {"summary.md.j2", "protocol.md.j2", "robustness.md.j2", "_method.md.j2", "_robustness.md.j2"} <= names
    assert names == {p.name for p in TEMPLATES.glob("*.md.j2")}
    with pytest.raises(jinja2.UndefinedError):  # a missing value is an error, not an empty string
        render("summary.md.j2")
    pyproject = (TEMPLATES.parents[2] / "pyproject.toml").read_text()
    assert '"prefit.analysis" = ["templates/*.md.j2"]' in pyproject and "jinja2" in pyproject
