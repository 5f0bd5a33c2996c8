"""Turn a sweep's trajectories into the study's curves, AUCs, figures and a summary.

    python -m prefit.analyze SWEEP_DIR [--out DIR] [--psnr-cap DB]

The module reads top to bottom as the pipeline runs: load every `psnr.parquet` below the sweep folder ->
validate it against docs/formats.md -> reduce the `fit` rows to per-epoch curves and per-fit AUCs -> write
the tables -> draw the figures -> write `summary.md`. Everything lands in one output folder (default
`SWEEP_DIR/analysis`), each file written atomically (a temporary file in the same folder, then a rename):

    curves.parquet   hls, hfs, protocol, scheme, epoch, mean, std, count, n_nonfinite
    auc.parquet/.csv hls, hfs, protocol, scheme, triple, target_index, target_label, prefit_index,
                     prefit_label, n_epochs, auc, [auc_capped], final_psnr, epochs_to_30db, epochs_to_40db,
                     [epochs_to_59db], n_nonfinite, diverged, saturated   ([..]: only with --psnr-cap)
    figures/         auc_boxplot.png, [auc_capped_boxplot.png], psnr_{hls}hls_{hfs}hfs.png per cell,
                     recon_{hls}hls_{hfs}hfs.png per cell with a recon.npz ("_{protocol}" is appended to
                     the per-cell names only when the sweep holds more than one protocol)
    summary.md       what was analysed; per cell the mean AUC per scheme, the best scheme, the paired
                     difference of each pre-fit scheme from random, and the diverged fits

Non-finite PSNR is kept, never silently dropped:
  * NaN (and -inf, a loss of inf) means the fit diverged: `diverged` in the AUC table, and its AUC is NaN.
  * +inf means the loss was exactly 0, a perfect fit rather than a failure: `saturated`, and its AUC is inf.
  * Curves (mean and std over triples) are taken over the finite values only, `count` says how many and
    `n_nonfinite` how many were left out; mean AUCs and paired differences likewise use finite values only,
    and say how many they used. Figures leave non-finite values out and print how many they left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter
from tqdm import tqdm

PSNR_FILE = "psnr.parquet"
RECON_FILE = "recon.npz"
RUN_FILE = "run.json"

# docs/formats.md: every column of psnr.parquet and its type. "Int64" is a nullable integer. Integer and
# float widths are not enforced (an int32 column reads the same), the kind is.
PSNR_COLUMNS: dict[str, str] = {
    "hls": "int64",
    "hfs": "int64",
    "protocol": "string",
    "scheme": "string",
    "phase": "string",
    "stage": "int64",
    "triple": "int64",
    "epoch": "int64",
    "psnr": "float64",
    "loss": "float64",
    "lr": "float64",
    "target_index": "int64",
    "target_label": "int64",
    "prefit_index": "Int64",
    "prefit_label": "Int64",
    "seed": "int64",
    "engine": "string",
}
CELL_KEYS = ["hls", "hfs", "protocol"]
MEMBER_KEYS = [*CELL_KEYS, "scheme", "triple"]
MEMBER_INFO = ["target_index", "target_label", "prefit_index", "prefit_label"]
READ_COLUMNS = [*MEMBER_KEYS, "phase", "stage", "epoch", "psnr", *MEMBER_INFO]

THRESHOLDS_DB = (30.0, 40.0)
CAP_THRESHOLD_DB = 59.0  # ~ the PSNR of 8-bit rounding noise (58.9 dB): as good as a saved image can be
BASELINE = "random"
PROTOCOL_ORDER = ("independent", "chained")

# Known schemes in the order tables and legends list them, each with a fixed colour in every figure
# (the first three are the original's colours).
SCHEME_ORDER = ("random", "same_class", "other_class", "class_mean", "multi_same", "meta")
SCHEME_COLOURS = {
    "random": "cornflowerblue",
    "same_class": "orange",
    "other_class": "mediumseagreen",
    "class_mean": "mediumpurple",
    "multi_same": "sienna",
    "meta": "crimson",
}
SCHEME_LABELS = {
    "random": "random: fit A from a random initialisation",
    "same_class": "same_class: pre-fit on an image of A's class",
    "other_class": "other_class: pre-fit on an image of another class",
    "class_mean": "class_mean: pre-fit on the mean image of A's class",
    "multi_same": "multi_same: pre-fit on several images of A's class",
    "meta": "meta: start from a meta-learned initialisation",
}
DPI = 120
DEFAULT_BOX_TITLE = "Area under each fit's PSNR-vs-epoch curve"
METRIC_NAMES = {"auc": "AUC", "auc_capped": "capped AUC"}


class AnalysisError(Exception):
    """Input the analysis cannot use; the message is one line and names the offending file."""


# ----------------------------------------------------------------------------------------------- load


@dataclass
class Sweep:
    """What was read from a sweep folder: the fit rows of every job, and where each job's files are."""

    root: Path
    files: list[Path]
    fits: pd.DataFrame  # MEMBER_KEYS + epoch + psnr, sorted, one row per member and epoch
    members: pd.DataFrame  # MEMBER_KEYS + MEMBER_INFO, one row per member
    recon_files: dict[tuple[int, int, str], Path] = field(default_factory=dict)
    runs: dict[Path, dict | None] = field(default_factory=dict)  # job folder -> run.json (None: unreadable)


def find_psnr_files(sweep_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every psnr.parquet below the sweep folder, in a stable order, skipping the analysis output folder."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in sorted(Path(sweep_dir).rglob(PSNR_FILE)):
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return found


def load_sweep(sweep_dir: str | os.PathLike, exclude: Path | None = None) -> Sweep:
    """Read and validate every job of the sweep; raise AnalysisError on the first file that is unusable."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such folder")
    files = find_psnr_files(root, exclude)
    if not files:
        raise AnalysisError(f"{root}: no {PSNR_FILE} found below this folder")

    fits, members, recon_files, runs = [], [], {}, {}
    owner: dict[tuple, Path] = {}  # member -> file, to catch a member written by two jobs
    for path in files:
        frame = read_fit_rows(path)
        info = frame.drop_duplicates(MEMBER_KEYS)[MEMBER_KEYS + MEMBER_INFO]
        for key in info[MEMBER_KEYS].itertuples(index=False, name=None):
            if key in owner:
                raise AnalysisError(
                    f"{path}: the fit of {_member_name(key)} is also in {owner[key]} (a job run twice?)"
                )
            owner[key] = path
        fits.append(frame[[*MEMBER_KEYS, "epoch", "psnr"]])
        members.append(info)
        cell = tuple(info[CELL_KEYS].iloc[0])
        if (path.parent / RECON_FILE).is_file():
            recon_files[(int(cell[0]), int(cell[1]), str(cell[2]))] = path.parent / RECON_FILE
        runs[path.parent] = _read_run(path.parent / RUN_FILE)

    all_fits = pd.concat(fits, ignore_index=True).sort_values([*MEMBER_KEYS, "epoch"], ignore_index=True)
    all_members = pd.concat(members, ignore_index=True)
    return Sweep(root, files, all_fits, all_members, recon_files, runs)


def _read_run(path: Path) -> dict | None:
    """run.json is informative only (the summary counts complete jobs); a missing or bad one is not fatal."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _member_name(key: tuple) -> str:
    hls, hfs, protocol, scheme, triple = key
    return f"cell {hls}x{hfs} ({protocol}), scheme {scheme}, triple {triple}"


# ------------------------------------------------------------------------------------------- validate


def _type_ok(dtype: pa.DataType, kind: str) -> bool:
    if kind in ("int64", "Int64"):
        return pa.types.is_integer(dtype) or (kind == "Int64" and pa.types.is_null(dtype))
    if kind == "float64":
        return pa.types.is_floating(dtype)
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def check_schema(path: Path, schema: pa.Schema) -> None:
    """Fail on a parquet that is not a prefit psnr.parquet: a missing column or one of the wrong kind."""
    missing = [c for c in PSNR_COLUMNS if c not in schema.names]
    if missing:
        raise AnalysisError(f"{path}: not a prefit {PSNR_FILE}, missing column(s) {', '.join(missing)}")
    for name, kind in PSNR_COLUMNS.items():
        dtype = schema.field(name).type
        if not _type_ok(dtype, kind):
            raise AnalysisError(f"{path}: column {name!r} has type {dtype}, expected {kind}")


def read_fit_rows(path: Path) -> pd.DataFrame:
    """The validated `fit` rows of one psnr.parquet: exactly epochs 0..n-1 once per member.

    Should a member hold several fits of A (several `fit` stages), the last one is the one reported.
    """
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise AnalysisError(f"{path}: not a readable parquet file ({_one_line(exc)})") from None
    check_schema(path, schema)
    try:
        table = pq.read_table(path, columns=READ_COLUMNS)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise AnalysisError(f"{path}: cannot read ({_one_line(exc)})") from None
    for name in READ_COLUMNS:  # a NaN float is stored as a null by pandas: only keys must be non-null
        if PSNR_COLUMNS[name] not in ("Int64", "float64") and table.column(name).null_count:
            raise AnalysisError(f"{path}: column {name!r} has null values")

    frame = table.to_pandas()
    frame = frame[frame["phase"] == "fit"]
    if frame.empty:
        raise AnalysisError(f"{path}: no rows with phase == 'fit'")
    for name in MEMBER_INFO:
        frame[name] = frame[name].astype("Int64")
    for name in ("protocol", "scheme"):
        frame[name] = frame[name].astype(str)
    last = frame.groupby(MEMBER_KEYS)["stage"].transform("max")
    frame = frame[frame["stage"] == last].drop(columns=["phase", "stage"])

    dup = frame.duplicated([*MEMBER_KEYS, "epoch"])
    if dup.any():
        row = frame[dup].iloc[0]
        key = tuple(row[MEMBER_KEYS])
        raise AnalysisError(f"{path}: epoch {row['epoch']} of {_member_name(key)} appears more than once")
    span = frame.groupby(MEMBER_KEYS)["epoch"].agg(["min", "max", "size"])
    gaps = span[(span["min"] != 0) | (span["max"] != span["size"] - 1)]
    if len(gaps):
        raise AnalysisError(f"{path}: the epochs of {_member_name(gaps.index[0])} are not 0..n-1, each once")
    return frame.reset_index(drop=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _span(values: Iterable[int]) -> str:
    """`20` if all values are 20, else `min–max`."""
    values = sorted({int(v) for v in values})
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


# --------------------------------------------------------------------------------------------- reduce


def scheme_order(schemes: Iterable[str]) -> list[str]:
    """Known schemes in the study's order, then any others alphabetically."""
    present = set(schemes)
    known = [s for s in SCHEME_ORDER if s in present]
    return known + sorted(present - set(known))


def scheme_palette(schemes: Iterable[str]) -> dict[str, str]:
    """A colour per scheme, the same one in every figure; unknown schemes get unused tab10 colours."""
    ordered = scheme_order(schemes)
    spare = iter(c for c in sns.color_palette("tab10").as_hex() if c not in SCHEME_COLOURS.values())
    return {s: SCHEME_COLOURS.get(s) or next(spare, "grey") for s in ordered}


def protocol_order(protocols: Iterable[str]) -> list[str]:
    """The protocol as stated first, the original's chained one next, any others after."""
    return sorted(set(protocols), key=lambda p: (PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else 99, p))


def cell_order(cells: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Cells (hls, hfs) by model size hls*hfs ascending, ties by hls: the x order of the original AUC plot."""
    return sorted(set(cells), key=lambda c: (c[0] * c[1], c[0], c[1]))


def cell_label(hls: int, hfs: int) -> str:
    """`2x32`: hidden layers x hidden features, the box plot's tick label."""
    return f"{hls}x{hfs}"


def _sort_rows(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sort with schemes and protocols in study order rather than alphabetically."""
    ranks = {
        "scheme": {s: i for i, s in enumerate(scheme_order(frame["scheme"].unique()))},
        "protocol": {p: i for i, p in enumerate(protocol_order(frame["protocol"].unique()))},
    }
    return frame.sort_values(by, key=lambda col: col.map(ranks[col.name]) if col.name in ranks else col,
                             ignore_index=True)  # fmt: skip


def curves_table(fits: pd.DataFrame) -> pd.DataFrame:
    """Per cell, scheme and epoch: mean, std (ddof 1) and count of the finite PSNRs over triples.

    `n_nonfinite` counts the triples whose PSNR at that epoch was NaN or +-inf and so left out.
    """
    finite = fits["psnr"].where(np.isfinite(fits["psnr"]))
    grouped = fits.assign(psnr=finite).groupby([*CELL_KEYS, "scheme", "epoch"], sort=False)["psnr"]
    curves = grouped.agg(["mean", "std", "count", "size"]).reset_index()
    curves["n_nonfinite"] = (curves["size"] - curves["count"]).astype("int64")
    curves["count"] = curves["count"].astype("int64")
    curves = curves.drop(columns="size")
    return _sort_rows(curves, [*CELL_KEYS, "scheme", "epoch"])


def threshold_column(db: float) -> str:
    return f"epochs_to_{db:g}db"


def auc_table(fits: pd.DataFrame, members: pd.DataFrame, psnr_cap: float | None = None) -> pd.DataFrame:
    """One row per fit of A (cell, scheme, triple): AUC, final PSNR, epochs to thresholds, divergence.

    auc: trapezoid of PSNR over epoch index (unit spacing), NaN for a diverged fit, inf for a saturated one.
    epochs_to_XXdb: first epoch whose PSNR >= XX dB, NA if never.
    With psnr_cap: also auc_capped (PSNR clipped at the cap first, so saturation stops dominating) and
    epochs_to_59db.
    """
    thresholds = THRESHOLDS_DB + ((CAP_THRESHOLD_DB,) if psnr_cap is not None else ())
    records = []
    for key, group in fits.groupby(MEMBER_KEYS, sort=False):
        psnr = group["psnr"].to_numpy(dtype=np.float64)  # already sorted by epoch
        rec = dict(zip(MEMBER_KEYS, key, strict=True))
        rec["n_epochs"] = len(psnr)
        with np.errstate(invalid="ignore"):
            rec["auc"] = float(np.trapezoid(psnr))
            if psnr_cap is not None:
                rec["auc_capped"] = float(np.trapezoid(np.minimum(psnr, psnr_cap)))
        rec["final_psnr"] = float(psnr[-1])
        for db in thresholds:
            hits = np.flatnonzero(psnr >= db)
            rec[threshold_column(db)] = int(hits[0]) if len(hits) else pd.NA
        rec["n_nonfinite"] = int((~np.isfinite(psnr)).sum())
        rec["diverged"] = bool(np.isnan(psnr).any() or np.isneginf(psnr).any())
        rec["saturated"] = bool(np.isposinf(psnr).any())
        records.append(rec)

    auc = pd.DataFrame.from_records(records)
    for db in thresholds:
        auc[threshold_column(db)] = auc[threshold_column(db)].astype("Int64")
    auc = auc.merge(members, on=MEMBER_KEYS, how="left", validate="one_to_one")
    front = [*MEMBER_KEYS, *MEMBER_INFO, "n_epochs"]
    auc = auc[front + [c for c in auc.columns if c not in front]]
    return _sort_rows(auc, MEMBER_KEYS)


def paired_differences(auc: pd.DataFrame, metric: str = "auc", baseline: str = BASELINE) -> pd.DataFrame:
    """Per cell and scheme: the mean over triples of metric(scheme) - metric(baseline), matched on triple.

    A triple shares its target A and its random initialisation across schemes, so the paired difference
    removes the spread between images that dominates the raw AUCs. Pairs where either side is missing or
    non-finite are left out; n_pairs says how many were used and n_better how many favour the scheme.
    """
    columns = [*CELL_KEYS, "scheme", "baseline", "mean_diff", "std_diff", "n_pairs", "n_better"]
    wide = auc.set_index([*CELL_KEYS, "triple", "scheme"])[metric].unstack("scheme")
    if baseline not in wide.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for scheme in scheme_order(wide.columns):
        if scheme == baseline:
            continue
        diff = (wide[scheme] - wide[baseline]).astype(float)
        diff = diff[np.isfinite(diff)]
        by_cell = diff.groupby(level=CELL_KEYS)
        stats = pd.DataFrame(
            {
                "mean_diff": by_cell.mean(),
                "std_diff": by_cell.std(),
                "n_pairs": by_cell.size(),
                "n_better": (diff > 0).groupby(level=CELL_KEYS).sum(),
            }
        )
        cells = wide.index.droplevel("triple").unique()
        stats = stats.reindex(cells)
        stats["n_pairs"] = stats["n_pairs"].fillna(0).astype("int64")
        stats["n_better"] = stats["n_better"].fillna(0).astype("int64")
        stats = stats.reset_index()
        stats["scheme"], stats["baseline"] = scheme, baseline
        rows.append(stats[columns])
    if not rows:
        return pd.DataFrame(columns=columns)
    return _sort_rows(pd.concat(rows, ignore_index=True), [*CELL_KEYS, "scheme"])


# --------------------------------------------------------------------------------------- write tables


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file next to path, then rename it over path: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_figure(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


# -------------------------------------------------------------------------------------------- figures


def _cell_stem(hls: int, hfs: int, protocol: str, several_protocols: bool) -> str:
    """`{hls}hls_{hfs}hfs`, as the original named its plots; the protocol is added only when needed."""
    stem = f"{hls}hls_{hfs}hfs"
    return f"{stem}_{protocol}" if several_protocols else stem


def plot_cell_curves(
    curves: pd.DataFrame, hls: int, hfs: int, n_triples: int, palette: dict[str, str], protocol: str = ""
) -> Figure:
    """Mean PSNR per scheme over epochs with a +-1 std band, for one cell (the original's per-cell plot)."""
    fig = Figure(figsize=(10, 6), dpi=DPI)
    ax = fig.subplots()
    dropped = []
    for scheme in scheme_order(curves["scheme"].unique()):
        c = curves[curves["scheme"] == scheme]
        colour = palette[scheme]
        ax.plot(c["epoch"], c["mean"], color=colour, lw=1.5, label=SCHEME_LABELS.get(scheme, scheme))
        std = c["std"].fillna(0.0)
        ax.fill_between(c["epoch"], c["mean"] - std, c["mean"] + std, color=colour, alpha=0.2, lw=0)
        if c["n_nonfinite"].sum():
            dropped.append(f"{scheme} {int(c['n_nonfinite'].sum())}")
    if dropped:
        ax.text(
            0.01, 0.01, "non-finite PSNR values left out: " + ", ".join(dropped),
            transform=ax.transAxes, fontsize=8, color="dimgrey", va="bottom",
        )  # fmt: skip
    suffix = f", {protocol} protocol" if protocol else ""
    ax.set_title(
        f"SIREN with {hls} hidden layers, {hfs} hidden features{suffix}\n"
        f"PSNR vs epoch: mean and ±1 std over {n_triples} triples"
    )
    ax.set_xlabel("Epoch")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def plot_auc_boxplot(
    auc: pd.DataFrame, palette: dict[str, str], metric: str = "auc", title: str = DEFAULT_BOX_TITLE
) -> Figure:
    """Box plot of the AUC of every fit, per cell and scheme, cells ordered by hls*hfs then hls."""
    cells = cell_order(zip(auc["hls"], auc["hfs"], strict=True))
    labels = [cell_label(*c) for c in cells]
    schemes = scheme_order(auc["scheme"].unique())
    protocols = protocol_order(auc["protocol"])
    width = max(8.0, 0.12 * len(cells) * len(schemes) + 2.5)
    fig = Figure(figsize=(width, 6.5 * len(protocols)), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(len(protocols), 1, squeeze=False)[:, 0])
    for ax, protocol in zip(axes, protocols, strict=True):
        data = auc[auc["protocol"] == protocol]
        finite = data[np.isfinite(data[metric].astype(float))].assign(
            cell=lambda d: [cell_label(h, f) for h, f in zip(d["hls"], d["hfs"], strict=True)]
        )
        if len(finite):
            with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                warnings.filterwarnings("ignore", message="vert: bool", category=DeprecationWarning)
                sns.boxplot(
                    data=finite, x="cell", y=metric, hue="scheme", order=labels, hue_order=schemes,
                    palette=palette, ax=ax, fliersize=2, linewidth=0.8, width=0.8,
                )  # fmt: skip
            ax.legend(title="scheme", loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
        n_dropped = len(data) - len(finite)
        if n_dropped:
            ax.text(
                0.99, 0.01, f"{n_dropped} non-finite value(s) not shown", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="dimgrey",
            )  # fmt: skip
        for tick in ax.get_xticklabels():
            tick.set_rotation(60)
            tick.set_ha("right")
            tick.set_rotation_mode("anchor")
        ax.set_xlabel("cell: hidden layers x hidden features, by size (hls·hfs)")
        ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (dB·epoch)")
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.grid(axis="y", alpha=0.3)
        details = f"{_span(data['n_epochs'])} epochs"
        details += f", {protocol} protocol" if len(protocols) > 1 else ""
        ax.set_title(f"{title} ({details})")
    fig.tight_layout()
    return fig


def load_recon(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a recon.npz (docs/formats.md), checked for the keys and shapes the figure needs."""
    keys = ("hls", "hfs", "epochs", "scheme", "triple", "recon", "psnr", "triple_images", "triple_indices")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in keys if k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise AnalysisError(f"{path}: not a readable npz file ({_one_line(exc)})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise AnalysisError(f"{path}: missing key(s) {', '.join(missing)}")
    n_fits, n_epochs = len(arrays["scheme"]), len(arrays["epochs"])
    if arrays["recon"].shape[:2] != (n_fits, n_epochs) or arrays["psnr"].shape != (n_fits, n_epochs):
        raise AnalysisError(f"{path}: recon/psnr shapes do not match scheme and epochs")
    return arrays


def plot_recon(
    recon: dict[str, np.ndarray], palette: dict[str, str], max_triples: int = 4, protocol: str = ""
) -> Figure:
    """Rows: a few triples. Columns: A, the same- and other-class images, then each scheme's
    reconstruction of A at each snapshot epoch, titled with its PSNR."""
    epochs = [int(e) for e in recon["epochs"]]
    schemes = scheme_order(str(s) for s in recon["scheme"])
    n_images = recon["triple_images"].shape[0]
    triples = sorted({int(t) for t in recon["triple"]} & set(range(n_images)))[:max_triples]
    pairs = zip(recon["scheme"], recon["triple"], strict=True)
    fit_of = {(str(s), int(t)): i for i, (s, t) in enumerate(pairs)}
    n_cols = 3 + len(schemes) * len(epochs)
    n_rows = max(len(triples), 1)
    height = 1.6 * n_rows + 0.5
    fig = Figure(figsize=(1.2 * n_cols + 0.3, height), dpi=DPI)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    # Fixed margins rather than a layout engine: a constrained layout of ~50 axes costs seconds per cell.
    fig.subplots_adjust(left=0.3 / (1.2 * n_cols + 0.3), right=0.995, bottom=0.02, top=1 - 0.75 / height,
                        wspace=0.08, hspace=0.42)  # fmt: skip
    names = ("A (target)", "same class", "other class")
    for row, triple in enumerate(triples):
        for col, name in enumerate(names):
            ax = axes[row, col]
            ax.imshow(recon["triple_images"][triple, col])
            ax.set_title(f"{name}\n#{int(recon['triple_indices'][triple, col])}", fontsize=7)
        axes[row, 0].set_ylabel(f"triple {triple}", fontsize=8)
        col = 3
        for scheme in schemes:
            for e, epoch in enumerate(epochs):
                ax = axes[row, col]
                fit = fit_of.get((scheme, triple))
                if fit is not None:
                    ax.imshow(recon["recon"][fit, e])
                    ax.set_title(f"{scheme} @{epoch}\n{recon['psnr'][fit, e]:.1f} dB", fontsize=7,
                                 color=palette.get(scheme, "black"))  # fmt: skip
                col += 1
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Reconstructions of A, {int(recon['hls'])} hidden layers x {int(recon['hfs'])} hidden features"
        + (f", {protocol} protocol" if protocol else ""),
        fontsize=10,
        y=1 - 0.08 / height,
        va="top",
    )
    return fig


def write_figures(
    sweep: Sweep, curves: pd.DataFrame, auc: pd.DataFrame, figures_dir: Path, psnr_cap: float | None
) -> list[Path]:
    """All figures: the AUC box plot(s), then per cell its curves and, given a recon.npz, its reconstructions."""
    palette = scheme_palette(auc["scheme"].unique())
    several = auc["protocol"].nunique() > 1
    written = [_write_figure(plot_auc_boxplot(auc, palette), figures_dir / "auc_boxplot.png")]
    if psnr_cap is not None:
        fig = plot_auc_boxplot(auc, palette, "auc_capped", f"AUC with PSNR capped at {psnr_cap:g} dB")
        written.append(_write_figure(fig, figures_dir / "auc_capped_boxplot.png"))

    triples = auc.groupby(CELL_KEYS)["triple"].nunique()
    keys = [
        (hls, hfs, protocol)
        for hls, hfs in cell_order(zip(auc["hls"], auc["hfs"], strict=True))
        for protocol in protocol_order(auc["protocol"])
        if (hls, hfs, protocol) in triples.index
    ]
    by_cell = dict(tuple(curves.groupby(CELL_KEYS, sort=False)))
    for hls, hfs, protocol in tqdm(keys, desc="figures", unit="cell", disable=None):
        stem = _cell_stem(hls, hfs, protocol, several)
        shown = protocol if several or protocol != "independent" else ""  # named in titles when not the default
        n_triples = int(triples[(hls, hfs, protocol)])
        fig = plot_cell_curves(by_cell[(hls, hfs, protocol)], hls, hfs, n_triples, palette, shown)
        written.append(_write_figure(fig, figures_dir / f"psnr_{stem}.png"))
        recon_path = sweep.recon_files.get((hls, hfs, protocol))
        if recon_path is None:
            continue
        try:
            recon = load_recon(recon_path)
            if (int(recon["hls"]), int(recon["hfs"])) != (hls, hfs):
                raise AnalysisError(f"{recon_path}: is for cell {int(recon['hls'])}x{int(recon['hfs'])}")
        except AnalysisError as exc:  # a reconstruction grid is a nicety: skip it, keep the analysis
            warnings.warn(f"skipping reconstruction figure: {exc}", stacklevel=2)
            continue
        fig = plot_recon(recon, palette, protocol=shown)
        written.append(_write_figure(fig, figures_dir / f"recon_{stem}.png"))
    return written


# -------------------------------------------------------------------------------------------- summary


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float, sign: bool = False) -> str:
    """Large AUCs with thousands separators, small values with 4 significant digits, missing as a dash."""
    if value is None or pd.isna(value):
        return "—"
    if not np.isfinite(value):
        return str(value)
    spec = ("+" if sign else "") + (",.0f" if abs(value) >= 1000 else ".4g")
    return format(value, spec)


def _metric_table(auc: pd.DataFrame, metric: str) -> tuple[str, pd.Series]:
    """The per-cell markdown table of one metric, and how often each scheme was best."""
    schemes = scheme_order(auc["scheme"].unique())
    protocols = protocol_order(auc["protocol"])
    finite = auc[np.isfinite(auc[metric].astype(float))]
    means = finite.groupby([*CELL_KEYS, "scheme"])[metric].mean()
    paired = paired_differences(auc, metric).set_index([*CELL_KEYS, "scheme"])
    diverged = auc.groupby([*CELL_KEYS, "scheme"])["diverged"].sum()
    triples = auc.groupby(CELL_KEYS)["triple"].nunique()
    others = [s for s in schemes if s != BASELINE] if BASELINE in schemes else []

    header = ["cell"] + (["protocol"] if len(protocols) > 1 else []) + ["triples"]
    header += [f"mean {METRIC_NAMES.get(metric, metric)} {s}" for s in schemes] + ["best"]
    header += [f"Δ {s} − {BASELINE} (pairs)" for s in others]
    header += ["diverged (" + "/".join(schemes) + ")"]
    rows, best_counts = [], []
    for hls, hfs in cell_order(zip(auc["hls"], auc["hfs"], strict=True)):
        for protocol in protocols:
            cell = (hls, hfs, protocol)
            if cell not in triples.index:
                continue
            cell_means = {s: means.get((*cell, s), np.nan) for s in schemes}
            known = {s: m for s, m in cell_means.items() if pd.notna(m)}
            best = max(known, key=known.get) if known else "—"
            best_counts.append(best)
            row = [cell_label(hls, hfs)] + ([protocol] if len(protocols) > 1 else []) + [int(triples[cell])]
            row += [_fmt(cell_means[s]) for s in schemes] + [best]
            for s in others:
                if (*cell, s) in paired.index:
                    p = paired.loc[(*cell, s)]
                    row.append(f"{_fmt(p['mean_diff'], sign=True)} ({int(p['n_pairs'])})")
                else:
                    row.append("—")
            row.append("/".join(str(int(diverged.get((*cell, s), 0))) for s in schemes))
            rows.append(row)
    return markdown_table(header, rows), pd.Series(best_counts).value_counts()


def summary_markdown(sweep: Sweep, auc: pd.DataFrame, psnr_cap: float | None = None) -> str:
    """A short report: what was analysed, then per cell the mean AUC per scheme and paired differences."""
    complete = sum(1 for run in sweep.runs.values() if run and run.get("status") == "complete")
    triples = auc.groupby(CELL_KEYS)["triple"].nunique()
    schemes = scheme_order(auc["scheme"].unique())
    lines = [
        f"# Analysis of `{sweep.root}`",
        "",
        f"- sweep folder: `{sweep.root.resolve()}`",
        f"- jobs: {len(sweep.files)} `{PSNR_FILE}` files ({complete} with `{RUN_FILE}` status complete)",
        f"- cells: {len(triples)} (hls {_span(auc['hls'])}, hfs {_span(auc['hfs'])}); "
        f"protocol(s): {', '.join(protocol_order(auc['protocol']))}",
        f"- triples per cell: {_span(triples)}",
        f"- epochs per fit: {_span(auc['n_epochs'])}",
        f"- schemes: {', '.join(schemes)}",
        f"- fits of A: {len(auc)}; diverged (NaN or -inf PSNR): {int(auc['diverged'].sum())}; "
        f"saturated (+inf PSNR, loss exactly 0): {int(auc['saturated'].sum())}",
        "",
        "AUC is the trapezoid of PSNR (dB) over epoch index with unit spacing. Mean AUCs use the finite AUCs "
        "of a cell; Δ is the mean over triples of the per-triple difference from `random` (same A, same "
        "initialisation), over the pairs where both AUCs are finite, their number in parentheses.",
    ]
    metrics = ["auc"] + (["auc_capped"] if psnr_cap is not None else [])
    for metric in metrics:
        table, best = _metric_table(auc, metric)
        title = "AUC" if metric == "auc" else f"AUC with PSNR capped at {psnr_cap:g} dB"
        lines += ["", f"## {title} per cell", "", table, ""]
        lines.append("Best scheme by mean: " + ", ".join(f"{s} in {n} cell(s)" for s, n in best.items()))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- pipeline


def analyze(
    sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None, psnr_cap: float | None = None
) -> dict[str, Path]:
    """Analyse a sweep folder end to end; returns {path relative to out: path} of every file written."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "analysis"
    if psnr_cap is not None and not np.isfinite(psnr_cap):
        raise AnalysisError(f"psnr_cap must be a finite number of dB, got {psnr_cap}")

    sweep = load_sweep(sweep_dir, exclude=out)
    curves = curves_table(sweep.fits)
    auc = auc_table(sweep.fits, sweep.members, psnr_cap)

    written = [
        _write_parquet(curves, out / "curves.parquet"),
        _write_parquet(auc, out / "auc.parquet"),
        atomic_write(out / "auc.csv", lambda tmp: auc.to_csv(tmp, index=False)),
    ]
    written += write_figures(sweep, curves, auc, out / "figures", psnr_cap)
    written.append(_write_text(summary_markdown(sweep, auc, psnr_cap), out / "summary.md"))
    _remove_stale_figures(out / "figures", written)
    return {path.relative_to(out).as_posix(): path for path in written}


def _remove_stale_figures(figures_dir: Path, written: list[Path]) -> None:
    """Drop figures an earlier analysis into the same folder drew and this one did not (a cell no longer in
    the sweep, a capped box plot without a cap), so the folder never mixes two analyses."""
    keep = {path.resolve() for path in written}
    for pattern in ("psnr_*.png", "recon_*.png", "auc_*boxplot.png"):
        for path in figures_dir.glob(pattern):
            if path.resolve() not in keep:
                path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: unusable input is one `error: ...` line on stderr and exit status 2, no traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m prefit.analyze", description="Curves, AUCs, figures and a summary of a prefit sweep."
    )
    parser.add_argument("sweep_dir", type=Path, help="folder searched recursively for psnr.parquet files")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/analysis)")
    parser.add_argument("--psnr-cap", type=float, default=None, help="also report AUC with PSNR clipped here (dB)")
    args = parser.parse_args(argv)
    try:
        outputs = analyze(args.sweep_dir, args.out, args.psnr_cap)
    except (AnalysisError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.sweep_dir / "analysis"
    print(f"wrote {len(outputs)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
