"""Writes notebooks/analysis.ipynb with nbformat (run from the repo root; the notebook is the artefact)."""
import nbformat

cells = []


def md(text):
    cells.append(nbformat.v4.new_markdown_cell(text.strip("\n")))


def code(text, tags=None):
    cell = nbformat.v4.new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = tags
    cells.append(cell)


md('''
# prefit: analysis of a sweep

Does pre-fitting a SIREN on another image make fitting a target image A faster? Each cell of the grid
(`hls` hidden layers x `hfs` hidden features) fits A for 20 triples under several schemes: from a
**random** initialisation, after a pre-fit on an image of A's class (**same_class**), after a pre-fit
on an image of another class (**other_class**), and, where the sweep ran them, **class_mean**,
**multi_same** and **meta**; within a triple every scheme starts from the same random initialisation.

This notebook reads the folder written by

```
python -m prefit.analyze SWEEP_DIR                     # -> SWEEP_DIR/analysis (PSNR cap 59 dB)
python -m prefit.analyze SWEEP_DIR --ci-method bca     # BCa bootstrap intervals instead of percentile
```

(`curves.parquet`, `auc.parquet`, `stats.parquet`, `jobs.parquet`, `summary.md`, `figures/`). It leads with the measures
that an image can show: the **capped AUC** (PSNR clipped at 59 dB, the PSNR of 8-bit quantisation) and the
**epochs to 30 and 40 dB** (fewer is better). The raw AUC, the original study's measure, comes last, for
comparison, flagged (†) in every cell where a fit passes 100 dB. Set `ANALYSIS_DIR` and `CELL` in the next
cell (it is tagged `parameters`, so a tool can inject other values).
''')
code('''
ANALYSIS_DIR = "../outputs/sweeps/NAME/analysis"  # a folder written by `python -m prefit.analyze`
CELL = None  # the cell to look at: (hls, hfs) or "2x32"; None -> the first (smallest) cell
''', tags=['parameters'])
code('''
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Image, Markdown, display

from prefit.analysis import read_analysis
from prefit.analysis.figures import scheme_palette
from prefit.analysis.groups import cells_of, present
from prefit.analysis.reduce import measures_in
from prefit.analysis.tables import RAW_FLAG_NOTE, count_table, stats_markdown, threshold_markdown, verdict_table
from prefit.schema import FIGURES_DIR, SUMMARY_FILE, cell_label

analysis = read_analysis(ANALYSIS_DIR)  # one line naming the command to run if the folder holds no analysis
figures = Path(ANALYSIS_DIR) / FIGURES_DIR
curves, auc, stats = analysis.curves, analysis.auc, analysis.stats  # scheme and protocol: ordered categoricals
summary = (Path(ANALYSIS_DIR) / SUMMARY_FILE).read_text(encoding="utf-8")

schemes = present(auc["scheme"])
palette = scheme_palette(schemes)  # the colours of the saved figures
cells = cells_of(auc)
measures = measures_in(auc.columns)  # capped AUC, epochs to 30 dB, epochs to 40 dB, raw AUC
print(f"{len(cells)} cells, {len(auc)} fits of A, schemes: {', '.join(schemes)}")
print("measures, in the order they are read:", ", ".join(m.label for m in measures))
''')
md('''
## Verdicts: each scheme against random (`stats.parquet`)

Per cell and scheme, over the triples (pairs matched on the triple: same A, same initialisation), for each
measure: the mean paired difference from random, its 95% bootstrap CI (`scipy.stats.bootstrap`, 10,000
resamples, fixed seed) and the two-sided Wilcoxon signed-rank p. A scheme **beats** random when the CI lies
on the favourable side of 0 (above it for the AUCs, below it for the epochs: sooner) and p < 0.05, is
**worse** when it lies on the other side and p < 0.05, and is *unclear* otherwise. A fit that never reaches
a threshold counts as taking all its epochs. The p-values are not corrected for the number of tests.
''')
code('''
# stats.parquet: one row per cell, scheme and measure (delta, ci_low, ci_high, p, n, verdict, ...)
pairs = stats.groupby(["hls", "hfs", "protocol", "scheme"], observed=True).ngroups
print(f"verdicts: {len(stats)} comparisons, {pairs} cells x schemes over {len(measures)} measures")
display(Markdown(verdict_table(stats, measures)))
if stats["flag_raw_auc"].any():
    display(Markdown(RAW_FLAG_NOTE))
display(Markdown(count_table(stats, measures)))
''')
md('''
## Capped AUC and time to PSNR

The capped AUC of every fit per cell (by size) and scheme, then the paired differences from random of the
capped AUC and of the epochs to 30 dB with their CIs, then per cell and scheme the median epochs to each
threshold (how many fits reached it, of all).
''')
code('''
for name in ("auc_capped_boxplot.png", "paired_differences_capped.png", "paired_differences_epochs_to_30db.png"):
    if (figures / name).is_file():
        display(Image(filename=str(figures / name)))
display(Markdown(threshold_markdown(auc)))
''')
md('''
## One cell

Mean PSNR over triples with a band of one standard deviation (non-finite values are left out of the mean;
`curves.n_nonfinite` counts them) and the 59 dB cap, then per triple the capped AUC and the epochs to 30 dB
of each scheme, and their differences from random.
''')
code('''
if CELL is None:
    hls, hfs = cells[0]
elif isinstance(CELL, str):
    hls, hfs = (int(v) for v in CELL.lower().split("x"))
else:
    hls, hfs = CELL
if (hls, hfs) not in cells:
    raise ValueError(f"cell {cell_label(hls, hfs)} is not in this analysis: {[cell_label(*c) for c in cells]}")

cell_curves = curves[(curves["hls"] == hls) & (curves["hfs"] == hfs)]
cell_auc = auc[(auc["hls"] == hls) & (auc["hfs"] == hfs)]
protocols = present(cell_curves["protocol"])
fig, axes = plt.subplots(1, len(protocols), figsize=(9 * len(protocols), 5), squeeze=False)
for ax, protocol in zip(axes[0], protocols):
    c = cell_curves[cell_curves["protocol"] == protocol]
    for scheme in present(c["scheme"]):
        s = c[c["scheme"] == scheme]
        std = s["std"].fillna(0.0)
        ax.plot(s["epoch"], s["mean"], color=palette[scheme], label=scheme)
        ax.fill_between(s["epoch"], s["mean"] - std, s["mean"] + std, color=palette[scheme], alpha=0.2, lw=0)
    ax.axhline(59.0, color="dimgrey", ls=":", lw=0.8, label="59 dB (8-bit quantisation)")
    n = cell_auc.loc[cell_auc["protocol"] == protocol, "triple"].nunique()
    title = f"{cell_label(hls, hfs)}, {protocol}: mean ± 1 std over {n} triples"
    ax.set(xlabel="Epoch", ylabel="PSNR (dB)", title=title)
    ax.legend()
plt.show()
''')
code('''
lead = "auc_capped" if "auc_capped" in cell_auc.columns else "auc"
fig, ax = plt.subplots(figsize=(7, 4))
finite = cell_auc[cell_auc[lead].abs() < float("inf")]
sns.boxplot(data=finite, x="scheme", y=lead, hue="scheme", order=schemes, palette=palette, legend=False, ax=ax)
sns.stripplot(data=finite, x="scheme", y=lead, order=schemes, color="black", size=3, ax=ax)
ax.set(xlabel="", ylabel=f"{lead} (dB·epoch)", title=f"{lead} per fit, cell {cell_label(hls, hfs)}")
plt.show()

plain = cell_auc.astype({"protocol": str, "scheme": str})  # new columns below: differences from random
per_triple = plain.pivot_table(index=["protocol", "triple"], columns="scheme", values=[lead, "epochs_to_30db"])
if "random" in schemes:  # paired on triple: same A, same initialisation
    for scheme in [s for s in schemes if s != "random"]:
        per_triple[(lead, f"{scheme} - random")] = per_triple[(lead, scheme)] - per_triple[(lead, "random")]
display(per_triple.round(1))
''')
code('''
# Reconstructions of A at the snapshot epochs (the job's recon.npz); "_<protocol>" is appended to the
# file name when the sweep holds several protocols.
recons = sorted(figures.glob(f"recon_{hls}hls_{hfs}hfs*.png"))
for recon in recons:
    display(Image(filename=str(recon)))
if not recons:
    print(f"no reconstruction figure for cell {cell_label(hls, hfs)}")
''')
md('''
## Raw AUC, for comparison with the original

The original study's measure and figure (auc.png): the area under the raw PSNR curve. Beyond 59 dB it mostly
measures float precision, so every cell where a fit passes 100 dB is flagged (†, `stats.flag_raw_auc`).
''')
code('''
display(Image(filename=str(figures / "auc_boxplot.png")))
raw = [m for m in measures if m.name == "auc"][0]
flagged = stats[stats["measure"] == "auc"].drop_duplicates(["hls", "hfs", "protocol"])["flag_raw_auc"]
print(f"raw AUC flagged in {int(flagged.sum())} cell(s)")
display(Markdown(stats_markdown(stats, raw)))
''')
md('''
## Summary (`summary.md`)
''')
code('''
display(Markdown(summary))
''')

nb = nbformat.v4.new_notebook()
nb.cells = cells
nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
               "language_info": {"name": "python"}}
for i, cell in enumerate(nb.cells):
    cell["id"] = f"cell-{i:02d}"
nbformat.validate(nb)
nbformat.write(nb, "notebooks/analysis.ipynb")
