"""The figures: PSNR curves per cell, AUC box plots, paired differences with their CIs, reconstructions and the
robustness scatter, each a matplotlib Figure (no pyplot state), saved atomically; one colour per scheme."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from prefit.io import atomic_write
from prefit.schema import SCHEME_ORDER, ordered

from .groups import group_label, groups, present, study_columns
from .load import span
from .reduce import MEASURE_BY_NAME, Measure
from .stats import CONFIDENCE

DPI = 120
# A colour per scheme of prefit.schema.SCHEME_ORDER; the first three are the original's.
COLOURS = ("cornflowerblue", "orange", "mediumseagreen", "mediumpurple", "sienna", "crimson", "teal")
SCHEME_COLOURS = dict(zip(SCHEME_ORDER, COLOURS))
LEGEND = (  # what each scheme of SCHEME_ORDER does, for the legends
    "fit A from a random initialisation|pre-fit on an image of A's class|pre-fit on an image of another class|pre-fit "
    "on the mean image of A's class|pre-fit on several images of A's class|start from a meta-learned initialisation|"
    "shared layers pre-fit jointly on several images of A's class, a fresh head"
)
SCHEME_LABELS = {scheme: f"{scheme}: {text}" for scheme, text in zip(SCHEME_ORDER, LEGEND.split("|"))}
MEAN_STD = "PSNR vs epoch: mean and ±1 std"
NOTE = {"fontsize": 8, "color": "dimgrey"}  # small grey text inside an axes


def scheme_palette(schemes: Iterable[str]) -> dict[str, str]:
    """A colour per scheme, the same one in every figure; unknown schemes get unused tab10 colours."""
    spare = iter(c for c in sns.color_palette("tab10").as_hex() if c not in SCHEME_COLOURS.values())
    order = ordered([str(s) for s in schemes], SCHEME_ORDER).categories
    return {s: SCHEME_COLOURS.get(s) or next(spare, "grey") for s in order}


def write_figure(fig: Figure, path: Path) -> Path:
    """Save a figure as PNG atomically (a reader never sees half a file)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _cell_axis(ax: Axes, labels: list[str], keyed: bool = False) -> None:
    """Cells (and study keys) along x, by size; long labels (`2x32 train.lr=0.0002`) slanted."""
    if keyed and len(labels) > 2:  # long labels (`2x32 train.lr=0.0002`): slanted, ending at their tick
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=60 if len(labels) > 8 else 0)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("cell: hidden layers x hidden features, by size" + (", then study keys" if keyed else ""))


def _merged_legend(fig: Figure, axes: Sequence[Axes], fontsize: int = 8) -> None:
    """One legend below the figure for the labels of all its axes, each once."""
    found: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    if found:
        style = {"loc": "outside lower center", "ncol": min(len(found), 6), "fontsize": fontsize, "frameon": False}
        fig.legend(list(found.values()), list(found), **style)


def draw_cell_curves(ax: Axes, curves: pd.DataFrame, palette: dict, labels: dict | None = None, cap=None) -> None:
    """Onto ax: mean PSNR per scheme over epochs with a +-1 std band, a note of any non-finite values left
    out, and the PSNR cap as a dotted line. labels: legend text per scheme (default SCHEME_LABELS)."""
    labels = SCHEME_LABELS if labels is None else labels
    dropped = []
    for scheme in present(curves["scheme"]):
        c = curves[curves["scheme"] == scheme]
        ax.plot(c["epoch"], c["mean"], color=palette[scheme], lw=1.5, label=labels.get(scheme, scheme))
        std = c["std"].fillna(0.0)
        ax.fill_between(c["epoch"], c["mean"] - std, c["mean"] + std, color=palette[scheme], alpha=0.2, lw=0)
        if c["n_nonfinite"].sum():
            dropped.append(f"{scheme} {int(c['n_nonfinite'].sum())}")
    if cap is not None:
        ax.axhline(cap, color="dimgrey", lw=0.8, ls=":", label=f"PSNR cap {cap:g} dB")
    if dropped:
        note = "non-finite PSNR values left out: " + ", ".join(dropped)
        ax.text(0.01, 0.01, note, transform=ax.transAxes, va="bottom", **NOTE)
    ax.set(xlabel="Epoch", ylabel="PSNR (dB)")
    ax.grid(alpha=0.3)


def plot_cell_curves(curves: pd.DataFrame, hls: int, hfs: int, n: int, palette: dict, protocol="", cap=None, keys=""):
    """Mean PSNR per scheme over epochs with a +-1 std band, for one cell (`protocol` and `keys`, its study keys
    as text, named in the title when given): the original's per-cell plot."""
    fig = Figure(figsize=(10, 6), dpi=DPI)
    ax = fig.subplots()
    draw_cell_curves(ax, curves, palette, cap=cap)
    suffix = (f", {protocol} protocol" if protocol else "") + (f", {keys}" if keys else "")
    ax.set_title(f"SIREN with {hls} hidden layers, {hfs} hidden features{suffix}\n{MEAN_STD} over {n} triples")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def plot_cell_pair(curves: dict, hls: int, hfs: int, triples: dict, palette: dict, cap=None, panel="{} protocol"):
    """One cell under several protocols (or resolutions: `panel` words each panel's key), in the order of
    `curves`, side by side on one y axis."""
    fig = Figure(figsize=(6.5 * len(curves), 5.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(curves), sharey=True, sharex=True, squeeze=False)[0]
    for ax, (protocol, frame) in zip(axes, curves.items()):
        draw_cell_curves(ax, frame, palette, labels={}, cap=cap)
        ax.set_title(f"{panel.format(protocol)}: mean ± 1 std over {triples[protocol]} triples", fontsize=10)
    for ax in axes[1:]:
        ax.set_ylabel("")
    _merged_legend(fig, axes, fontsize=9)
    fig.suptitle(f"SIREN with {hls} hidden layers, {hfs} hidden features: PSNR vs epoch", fontsize=11)
    return fig


def plot_paired_stats(stats: pd.DataFrame, palette: dict, measure: Measure, sides=None, column="protocol") -> Figure:
    """Per cell (x, by size, then study keys) and scheme: the mean paired difference of one measure from random with
    its CI as an error bar, one panel per protocol (or per value of `column`, e.g. the resolution) on a shared y
    axis; a dashed line at 0 (`stats`: stats.parquet rows)."""
    m = MEASURE_BY_NAME[measure] if isinstance(measure, str) else measure
    data = stats[stats["measure"] == m.name]
    sides = present(data[column]) if sides is None else list(sides)
    study = study_columns(data)
    cells = list(dict.fromkeys(group_label(g, study) for g in groups(data, with_protocol=False)))
    schemes = present(data["scheme"])
    panel_width = max(6.0, 0.3 * len(cells) * max(len(schemes), 1) + 2.0)
    side_by_side = len(sides) > 1 and len(cells) < 8
    shape = (1, len(sides)) if side_by_side else (max(len(sides), 1), 1)
    size = (panel_width * shape[1] + 1.5, 4.8) if side_by_side else (panel_width + 1.5, 4.2 * shape[0])
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(*shape, squeeze=False, sharey=True).ravel()
    spread = min(0.3, 0.12 * (len(schemes) - 1))
    offsets = np.linspace(-spread, spread, len(schemes)) if len(schemes) > 1 else np.zeros(1)
    for ax, side in zip(axes, sides):
        part = data[data[column] == side]
        for offset, scheme in zip(offsets, schemes):
            rows = part[(part["scheme"] == scheme) & part["delta"].notna()]
            x = [cells.index(group_label(r, study)) + offset for r in rows.to_dict("records")]
            if x:
                style = {"fmt": "o", "ms": 4, "capsize": 3, "lw": 1, "color": palette.get(scheme, "grey")}
                ax.errorbar(x, rows["delta"], yerr=_error_bars(rows), label=scheme, **style)
        ax.axhline(0.0, color="black", lw=0.8, ls="--")
        _cell_axis(ax, cells, bool(study))
        ax.set_title(f"{side} protocol" if column == "protocol" else str(side), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes[0].set_ylabel(f"Δ {m.label} vs random ({m.unit})")
    _merged_legend(fig, axes)
    better = "above 0 is better" if m.higher_is_better else "below 0 is better (sooner)"
    what = f"{m.label}(scheme) − {m.label}(random) per triple: mean, {CONFIDENCE:.0%} bootstrap CI; {better}"
    fig.suptitle(f"Paired difference from random: {m.label}\n{what}", fontsize=10)
    return fig


def plot_auc_boxplot(auc: pd.DataFrame, palette: dict, metric: str = "auc", title: str = "", protocols=()) -> Figure:
    """Box plot of a measure of every fit per cell and scheme, cells ordered by hls*hfs then hls (then study keys,
    named under the cell), one panel per protocol (default: the protocols in their order): with metric "auc", the
    original's auc.png."""
    label = MEASURE_BY_NAME[metric].label if metric in MEASURE_BY_NAME else metric
    title = title or f"{label[0].upper()}{label[1:]} of each fit"
    schemes, protocols = present(auc["scheme"]), list(protocols) or present(auc["protocol"])
    study = study_columns(auc)
    labels = [group_label(r, study) for r in auc.to_dict("records")]
    order = list(dict.fromkeys(group_label(g, study) for g in groups(auc, with_protocol=False)))
    auc = auc.assign(cell=pd.Categorical(labels, categories=order, ordered=True))  # every panel's boxes alike
    fig = Figure(figsize=(max(8.0, 0.12 * len(order) * len(schemes) + 2.5), 6.5 * len(protocols)), dpi=DPI)
    axes = fig.subplots(len(protocols), 1, squeeze=False)[:, 0]
    for ax, protocol in zip(axes, protocols):
        data = auc[auc["protocol"] == protocol]
        finite = data[np.isfinite(data[metric].astype(float))]
        finite = finite.assign(**{metric: finite[metric].astype(float), "scheme": finite["scheme"].astype(str)})
        if len(finite):
            with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                warnings.filterwarnings("ignore", message="vert: bool", category=DeprecationWarning)
                box = {"fliersize": 2, "linewidth": 0.8, "width": 0.8}
                box |= {"hue": "scheme", "hue_order": schemes, "palette": palette}
                sns.boxplot(data=finite, x="cell", y=metric, ax=ax, **box)
            ax.legend(title="scheme", loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
        if len(data) > len(finite):
            note = f"{len(data) - len(finite)} non-finite value(s) not shown"
            ax.text(0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", **NOTE)
        for tick in ax.get_xticklabels():
            tick.set(rotation=60, ha="right", rotation_mode="anchor")
        ax.set_xlabel("cell: hidden layers x hidden features, by size (hls·hfs)" + (", then study keys" * bool(study)))
        ax.set_ylabel(f"{label}: area under PSNR vs epoch (dB·epoch)")
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.grid(axis="y", alpha=0.3)
        epochs = f"{span(data['n_epochs'])} epochs" + (f", {protocol} protocol" if len(protocols) > 1 else "")
        ax.set_title(f"{title} ({epochs})")
    fig.tight_layout()
    return fig


def plot_recon(recon: dict[str, np.ndarray], palette: dict, max_triples=4, protocol="", keys="") -> Figure:
    """Rows: a few triples. Columns: A, the same- and other-class images, then each scheme's reconstruction of
    A at each snapshot epoch, titled with its PSNR."""
    epochs = [int(e) for e in recon["epochs"]]
    schemes = list(ordered([str(s) for s in recon["scheme"]], SCHEME_ORDER).categories)
    triples = sorted({int(t) for t in recon["triple"]} & set(range(recon["triple_images"].shape[0])))[:max_triples]
    fit_of = {(str(s), int(t)): i for i, (s, t) in enumerate(zip(recon["scheme"], recon["triple"]))}
    n_cols, n_rows = 3 + len(schemes) * len(epochs), max(len(triples), 1)
    height = 1.6 * n_rows + 0.5
    fig = Figure(figsize=(1.2 * n_cols + 0.3, height), dpi=DPI)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    # Fixed margins rather than a layout engine: a constrained layout of ~50 axes costs seconds per cell.
    left, top = 0.3 / (1.2 * n_cols + 0.3), 1 - 0.75 / height
    fig.subplots_adjust(left=left, right=0.995, bottom=0.02, top=top, wspace=0.08, hspace=0.42)
    n_shown = min(3, recon["triple_images"].shape[1], recon["triple_indices"].shape[1])
    for row, triple in enumerate(triples):
        for col, name in enumerate(("A (target)", "same class", "other class")[:n_shown]):
            axes[row, col].imshow(recon["triple_images"][triple, col])
            axes[row, col].set_title(f"{name}\n#{int(recon['triple_indices'][triple, col])}", fontsize=7)
        axes[row, 0].set_ylabel(f"triple {triple}", fontsize=8)
        for k, (scheme, (e, epoch)) in enumerate((s, e) for s in schemes for e in enumerate(epochs)):
            fit = fit_of.get((scheme, triple))
            if fit is not None:
                axes[row, 3 + k].imshow(recon["recon"][fit, e])
                title = f"{scheme} @{epoch}\n{recon['psnr'][fit, e]:.1f} dB"
                axes[row, 3 + k].set_title(title, fontsize=7, color=palette.get(scheme, "black"))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    title = f"Reconstructions of A, {int(recon['hls'])} hidden layers x {int(recon['hfs'])} hidden features"
    title += (f", {protocol} protocol" if protocol else "") + (f", {keys}" if keys else "")
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return fig


def _error_bars(rows: pd.DataFrame, suffix: str = "") -> np.ndarray:
    """The (below, above) lengths of CI error bars around delta (0 where the CI is missing)."""
    mean = rows[f"delta{suffix}"]
    return np.nan_to_num(np.clip([mean - rows[f"ci_low{suffix}"], rows[f"ci_high{suffix}"] - mean], 0, None))


def plot_robustness(table: pd.DataFrame, measures: Sequence[Measure], names: tuple[str, str]) -> Figure:
    """One panel per measure: each (cell, scheme)'s mean paired difference from random in sweep A (x) against
    sweep B (y) with both CIs as error bars, on the line y = x when the arithmetic does not matter; a point
    whose verdicts disagree is drawn as a red ring (`table`: robustness.compare's rows)."""
    fig = Figure(figsize=(4.6 * len(measures) + 0.6, 5.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    palette = scheme_palette(table["scheme"].unique())
    for ax, m in zip(axes, measures):
        rows = table[(table["measure"] == m.name) & table["delta_a"].notna() & table["delta_b"].notna()]
        for scheme in present(rows["scheme"]):
            r = rows[rows["scheme"] == scheme]
            xerr, yerr = (_error_bars(r, f"_{side}") for side in "ab")
            style = {"fmt": "o", "ms": 4, "lw": 0.8, "capsize": 2, "color": palette[scheme]}
            ax.errorbar(r["delta_a"], r["delta_b"], xerr=xerr, yerr=yerr, label=scheme, **style)
        off = rows[~rows["agree"]]
        if len(off):
            ring = {"s": 160, "facecolors": "none", "edgecolors": "red", "lw": 1.5, "zorder": 5}
            ax.scatter(off["delta_a"], off["delta_b"], label="verdicts disagree", **ring)
        values = pd.concat([rows[c] for c in ("ci_low_a", "ci_high_a", "ci_low_b", "ci_high_b")]).dropna()
        low, high = (float(values.min()), float(values.max())) if len(values) else (-1.0, 1.0)
        pad = 0.05 * (high - low) or 1.0
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=0.7, ls="--")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(xlabel=f"Δ vs random, {names[0]} ({m.unit})", ylabel=f"Δ vs random, {names[1]} ({m.unit})")
        ax.set_title(m.label)
        ax.grid(alpha=0.3)
    _merged_legend(fig, axes)
    what = f"{names[0]} against {names[1]} (mean, {CONFIDENCE:.0%} CI)"
    fig.suptitle(f"Paired differences from random per cell and scheme: {what}", fontsize=10)
    return fig
