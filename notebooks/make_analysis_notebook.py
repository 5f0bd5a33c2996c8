"""Writes notebooks/analysis.ipynb with nbformat (run from the repo root)."""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        """# prefit: analysis of a sweep

Does pre-fitting a SIREN on another image make fitting a target image A faster? Each cell of the grid
(`hls` hidden layers x `hfs` hidden features) fits A for 20 triples under several schemes: from a
**random** initialisation, after a pre-fit on an image of A's class (**same_class**), after a pre-fit
on an image of another class (**other_class**), and, where the sweep ran them, **class_mean**,
**multi_same** and **meta**; within a triple every scheme starts from the same random initialisation.

This notebook reads the folder written by

```
python -m prefit.analyze SWEEP_DIR                        # -> SWEEP_DIR/analysis
python -m prefit.analyze SWEEP_DIR analysis.psnr_cap=59   # also the AUC with PSNR capped at 59 dB
```

(`curves.parquet`, `auc.parquet`, `stats.parquet`, `summary.md`, `figures/`) and shows the AUC box plot
over all cells, the paired statistics of each scheme against random, one cell's PSNR curves and AUCs,
and the summary. Set `ANALYSIS_DIR` and `CELL` in the next cell (it is tagged `parameters`, so a tool
can inject other values)."""
    ),
    new_code_cell(
        """ANALYSIS_DIR = "../outputs/sweeps/NAME/analysis"  # a folder written by `python -m prefit.analyze`
CELL = None  # the cell to look at: (hls, hfs) or "2x32"; None -> the first (smallest) cell""",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        """from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Image, Markdown, display

from prefit.analyze import cell_label, cell_order, scheme_order, scheme_palette

analysis = Path(ANALYSIS_DIR)
if not (analysis / "curves.parquet").is_file():
    raise FileNotFoundError(
        f"{analysis.resolve()} has no curves.parquet: run `python -m prefit.analyze SWEEP_DIR` "
        "and point ANALYSIS_DIR at its output folder"
    )
curves = pd.read_parquet(analysis / "curves.parquet")
auc = pd.read_parquet(analysis / "auc.parquet")
summary = (analysis / "summary.md").read_text(encoding="utf-8")

schemes = scheme_order(auc["scheme"].unique())
palette = scheme_palette(schemes)  # the colours of the saved figures
cells = cell_order(zip(auc["hls"], auc["hfs"]))
print(f"{len(cells)} cells, {len(auc)} fits of A, schemes: {', '.join(schemes)}")"""
    ),
    new_markdown_cell(
        """## AUC of every fit, all cells

The area under each fit's PSNR-vs-epoch curve (trapezoid over epoch index), cells ordered by model
size `hls * hfs` (ties by `hls`), as in the original study's figure. Higher is faster and better."""
    ),
    new_code_cell("""display(Image(filename=str(analysis / "figures" / "auc_boxplot.png")))"""),
    new_markdown_cell(
        """## Paired statistics: each scheme against random (`stats.parquet`)

Per cell and scheme, over the triples (pairs matched on the triple: same A, same initialisation):
`mean_diff_auc`, the mean of AUC(scheme) − AUC(random); `ci_low`/`ci_high`, its 95% percentile-bootstrap
interval (10,000 resamples, fixed seed); `p_wilcoxon`, the two-sided Wilcoxon signed-rank p; `n`, the
pairs used; `n_diverged`, the pairs left out because a fit diverged. With a PSNR cap the same columns
follow for the capped AUC (`_capped`). The p-values are not corrected for the number of tests."""
    ),
    new_code_cell(
        """stats_path = analysis / "stats.parquet"
if stats_path.is_file():
    stats = pd.read_parquet(stats_path)
    rank = {c: i for i, c in enumerate(cells)}
    stats = stats.assign(cell=[cell_label(h, f) for h, f in zip(stats["hls"], stats["hfs"])],
                         _rank=[rank[(h, f)] for h, f in zip(stats["hls"], stats["hfs"])])
    stats = stats.sort_values(["_rank", "protocol"], kind="stable")
    shown = ["cell", "protocol", "scheme", "n", "mean_diff_auc", "ci_low", "ci_high", "p_wilcoxon", "n_diverged"]
    shown += [c for c in stats.columns if c.endswith("_capped")]
    print(f"paired statistics: {len(stats)} rows, one per cell and scheme, each against random")
    digits = {c: 4 if c.startswith("p_") else 1 for c in shown if c.startswith(("mean_", "ci_", "p_"))}
    display(stats[shown].reset_index(drop=True).round(digits))
    figure = analysis / "figures" / "paired_differences.png"
    if figure.is_file():
        display(Image(filename=str(figure)))
else:
    print("no stats.parquet in this analysis folder: rerun `python -m prefit.analyze` to get the paired statistics")"""
    ),
    new_markdown_cell(
        """## One cell

Mean PSNR over triples with a band of one standard deviation (non-finite values are left out of
the mean; `curves.n_nonfinite` counts them), then the AUC of each triple per scheme."""
    ),
    new_code_cell(
        """if CELL is None:
    hls, hfs = cells[0]
elif isinstance(CELL, str):
    hls, hfs = (int(v) for v in CELL.lower().split("x"))
else:
    hls, hfs = CELL
if (hls, hfs) not in cells:
    raise ValueError(f"cell {cell_label(hls, hfs)} is not in this analysis: {[cell_label(*c) for c in cells]}")

cell_curves = curves[(curves["hls"] == hls) & (curves["hfs"] == hfs)]
cell_auc = auc[(auc["hls"] == hls) & (auc["hfs"] == hfs)]
protocols = list(cell_curves["protocol"].unique())
fig, axes = plt.subplots(1, len(protocols), figsize=(9 * len(protocols), 5), squeeze=False)
for ax, protocol in zip(axes[0], protocols):
    c = cell_curves[cell_curves["protocol"] == protocol]
    for scheme in scheme_order(c["scheme"].unique()):
        s = c[c["scheme"] == scheme]
        std = s["std"].fillna(0.0)
        ax.plot(s["epoch"], s["mean"], color=palette[scheme], label=scheme)
        ax.fill_between(s["epoch"], s["mean"] - std, s["mean"] + std, color=palette[scheme], alpha=0.2, lw=0)
    n = cell_auc.loc[cell_auc["protocol"] == protocol, "triple"].nunique()
    title = f"{cell_label(hls, hfs)}, {protocol}: mean ± 1 std over {n} triples"
    ax.set(xlabel="Epoch", ylabel="PSNR (dB)", title=title)
    ax.legend()
plt.show()"""
    ),
    new_code_cell(
        """fig, ax = plt.subplots(figsize=(7, 4))
finite = cell_auc[cell_auc["auc"].abs() < float("inf")]
sns.boxplot(data=finite, x="scheme", y="auc", hue="scheme", order=schemes, palette=palette, legend=False, ax=ax)
sns.stripplot(data=finite, x="scheme", y="auc", order=schemes, color="black", size=3, ax=ax)
ax.set(xlabel="", ylabel="AUC (dB·epoch)", title=f"AUC per fit, cell {cell_label(hls, hfs)}")
plt.show()

per_triple = cell_auc.pivot_table(index=["protocol", "triple"], columns="scheme", values="auc")
per_triple = per_triple[[s for s in schemes if s in per_triple.columns]]
if "random" in per_triple.columns:  # paired on triple: same A, same initialisation
    for scheme in per_triple.columns.drop("random"):
        per_triple[f"{scheme} - random"] = per_triple[scheme] - per_triple["random"]
display(per_triple.round(1))"""
    ),
    new_code_cell(
        """# Reconstructions of A at the snapshot epochs (the job's recon.npz); "_<protocol>" is appended to the
# file name when the sweep holds several protocols.
recons = sorted((analysis / "figures").glob(f"recon_{hls}hls_{hfs}hfs*.png"))
for recon in recons:
    display(Image(filename=str(recon)))
if not recons:
    print(f"no reconstruction figure for cell {cell_label(hls, hfs)}")"""
    ),
    new_markdown_cell("## Summary (`summary.md`)"),
    new_code_cell("display(Markdown(summary))"),
]

for number, cell in enumerate(cells):  # fixed ids: regenerating the notebook gives the same file
    cell["id"] = f"cell-{number:02d}"

nb = new_notebook(
    cells=cells,
    metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    },
)
nbformat.validate(nb)
out = Path(sys.argv[1] if len(sys.argv) > 1 else "notebooks/analysis.ipynb")
nbformat.write(nb, out)
print(f"wrote {out}")
