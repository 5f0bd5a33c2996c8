"""prefit.analysis.figures: orders, colours and what each figure draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from synthetic_sweep import ALL_SCHEMES, write_synthetic_sweep

from prefit.analysis.figures import plot_auc_boxplot, plot_paired_stats, plot_robustness, scheme_palette, write_figure
from prefit.analysis.load import load_sweep
from prefit.analysis.reduce import MEASURE_BY_NAME, auc_table
from prefit.analysis.stats import stats_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_palette_is_fixed_per_scheme() -> None:
    assert scheme_palette(["other_class", "random"]) == {"random": "cornflowerblue", "other_class": "mediumseagreen"}
    mixed = ["meta", "zeta", "other_class", "random", "multi_same", "alpha", "class_mean", "same_class"]
    palette = scheme_palette(mixed)
    assert list(palette) == [*ALL_SCHEMES, "alpha", "zeta"] and len(set(palette.values())) == len(mixed)
    assert scheme_palette(["meta"]) == {"meta": palette["meta"]}  # a scheme's colour never depends on the rest


def test_box_plot_and_paired_stats_use_the_cell_order(tmp_path: Path) -> None:
    cells = [(3, 64), (2, 32), (2, 128), (4, 64), (8, 32)]
    sweep = write_synthetic_sweep(tmp_path / "s", cells=cells, n_triples=3, epochs=5, recon=False)
    loaded = load_sweep(sweep)
    auc = auc_table(loaded.fits, loaded.members, 59.0)
    palette = scheme_palette(auc["scheme"].unique())
    order = ["2x32", "3x64", "2x128", "4x64", "8x32"]
    fig = plot_auc_boxplot(auc, palette, "auc_capped")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == order
    assert fig.axes[0].get_ylabel().startswith("capped AUC")
    fig = plot_paired_stats(stats_table(auc), palette, "epochs_to_30db")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == order
    assert "below 0 is better" in fig.get_suptitle()
    path = write_figure(fig, tmp_path / "f" / "x.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE and not list((tmp_path / "f").glob("*.tmp"))


def test_robustness_figure_rings_the_disagreements() -> None:
    rows = []
    for hfs, (a, b, agree) in zip((32, 64), ((5.0, 5.2, True), (4.0, -0.5, False)), strict=True):
        for measure in ("auc_capped", "epochs_to_30db"):
            rows.append(
                {
                    "hls": 2,
                    "hfs": hfs,
                    "protocol": "independent",
                    "scheme": "other_class",
                    "measure": measure,
                    "delta_a": a,
                    "ci_low_a": a - 1,
                    "ci_high_a": a + 1,
                    "delta_b": b,
                    "ci_low_b": b - 1,
                    "ci_high_b": b + 1,
                    "agree": agree,
                }
            )
    measures = [MEASURE_BY_NAME["auc_capped"], MEASURE_BY_NAME["epochs_to_30db"]]
    fig = plot_robustness(pd.DataFrame(rows), measures, ("A", "B"))
    assert [ax.get_title() for ax in fig.axes] == ["capped AUC", "epochs to 30 dB"]
    rings = [c for c in fig.axes[0].collections if c.get_label() == "verdicts disagree"]
    assert len(rings) == 1 and np.allclose(rings[0].get_offsets(), [[4.0, -0.5]])
