"""The analysis of one sweep, end to end: load -> reduce -> statistics -> tables, figures and summary.md.

`analyse` does it in memory (the reports use it: nothing is written into the sweep folders); `analyze` writes
the files of docs/formats.md ("Analysis outputs") into one folder, default SWEEP/analysis, each atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from prefit.io import atomic_write
from prefit.schema import ANALYSIS_DIR, AUC_CSV_FILE, AUC_FILE, CURVES_FILE, FIGURES_DIR, STATS_FILE, SUMMARY_FILE

from .figures import plot_auc_boxplot, plot_cell_curves, plot_paired_stats, plot_recon, scheme_palette, write_figure
from .load import AnalysisError, Sweep, load_recon, load_sweep
from .reduce import DEFAULT_PSNR_CAP, auc_table, curves_table, group_order, measures_in, protocol_order
from .stats import CI_METHODS, DEFAULT_CI_METHOD, stats_long, wide
from .summary import summary_markdown
from .variants import VARIANT, group_keys, group_stem

FIGURE_PATTERNS = ("psnr_*.png", "recon_*.png", "auc_*boxplot.png", "paired_differences*.png")


@dataclass
class Analysed:
    """A sweep (or one protocol's share of it) reduced: curves, one row per fit, and the long statistics."""

    sweep: Sweep
    curves: pd.DataFrame
    auc: pd.DataFrame
    long: pd.DataFrame  # stats_long: one row per cell, scheme and measure
    psnr_cap: float | None
    ci_method: str

    @property
    def stats(self) -> pd.DataFrame:
        """stats.parquet's layout: one row per cell and scheme."""
        return wide(self.long)

    def cells(self) -> set[tuple]:
        """(hls, hfs, protocol) of every cell with fits; (hls, hfs, protocol, variant) in a sweep with variants."""
        keys = self.auc[group_keys(self.auc)].itertuples(index=False, name=None)
        return {(int(k[0]), int(k[1]), *(str(v) for v in k[2:])) for k in keys}


def check_options(psnr_cap: float | None, ci_method: str) -> None:
    """Fail early, in one line, on a cap or CI method the statistics cannot use."""
    if psnr_cap is not None and not np.isfinite(psnr_cap):
        raise AnalysisError(f"psnr_cap must be a finite number of dB, got {psnr_cap}")
    if ci_method not in CI_METHODS:
        raise AnalysisError(f"ci_method must be one of {', '.join(CI_METHODS)}, got {ci_method!r}")


def analyse(
    sweep_dir: str | os.PathLike,
    psnr_cap: float | None = DEFAULT_PSNR_CAP,
    ci_method: str = DEFAULT_CI_METHOD,
    protocol: str | None = None,
    exclude: Path | None = None,
) -> Analysed:
    """Load a sweep and reduce it in memory; with `protocol`, only that protocol's fits (an error if none)."""
    check_options(psnr_cap, ci_method)
    sweep = load_sweep(sweep_dir, exclude=exclude)
    if protocol is not None:
        found = protocol_order(sweep.fits["protocol"].unique())
        if protocol not in found:
            raise AnalysisError(f"{sweep.root}: no fits with protocol {protocol!r} (found: {', '.join(found)})")
        sweep = sweep.restricted(protocol)
    auc = auc_table(sweep.fits, sweep.members, psnr_cap)
    return Analysed(sweep, curves_table(sweep.fits), auc, stats_long(auc, ci_method), psnr_cap, ci_method)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_figures(figures_dir: Path, written: list[Path], patterns: Sequence[str] = FIGURE_PATTERNS) -> None:
    """Drop figures an earlier run into the same folder drew and this one did not (a cell no longer in the
    sweep, a capped box plot without a cap), so that a folder never mixes two analyses."""
    keep = {path.resolve() for path in written}
    for pattern in patterns:
        for path in figures_dir.glob(pattern):
            if path.resolve() not in keep:
                path.unlink()


def write_figures(analysed: Analysed, figures_dir: Path) -> list[Path]:
    """The box plots (raw AUC as the original's auc.png, capped AUC), the paired differences of every measure,
    then per cell (and variant) its curves and, given a recon.npz, its reconstructions: `psnr_2hls_32hfs.png`,
    `_<protocol>` appended when the sweep holds several, `_<variant>` in a sweep with variants."""
    auc, long, cap = analysed.auc, analysed.long, analysed.psnr_cap
    palette = scheme_palette(auc["scheme"].unique())
    several = auc["protocol"].nunique() > 1
    written = [write_figure(plot_auc_boxplot(auc, palette), figures_dir / "auc_boxplot.png")]
    if "auc_capped" in auc.columns:
        fig = plot_auc_boxplot(auc, palette, "auc_capped", f"AUC with PSNR capped at {cap:g} dB")
        written.append(write_figure(fig, figures_dir / "auc_capped_boxplot.png"))
    if len(long):
        for m in measures_in(auc.columns):
            fig = plot_paired_stats(long, palette, m)
            written.append(write_figure(fig, figures_dir / f"paired_differences{m.suffix}.png"))

    grouping = group_keys(auc)  # (hls, hfs, protocol[, variant]): the keys of the frames and of recon_files
    triples = auc.groupby(grouping)["triple"].nunique()
    keys = [
        (h, f, p, *([v] if VARIANT in grouping else []))
        for h, f, v in group_order(auc)
        for p in protocol_order(auc["protocol"])
    ]
    by_cell = dict(tuple(analysed.curves.groupby(grouping, sort=False)))
    for key in tqdm([k for k in keys if k in triples.index], desc="figures", unit="cell", disable=None):
        hls, hfs, protocol, variant = (*key, "")[:4]
        stem = group_stem(hls, hfs, protocol if several else "", variant)  # the protocol only when needed
        shown = protocol if several or protocol != "independent" else ""  # named in titles unless the default
        fig = plot_cell_curves(by_cell[key], hls, hfs, int(triples[key]), palette, shown, cap, variant)
        written.append(write_figure(fig, figures_dir / f"psnr_{stem}.png"))
        recon_path = analysed.sweep.recon_files.get(key)
        if recon_path is None:
            continue
        try:
            recon = load_recon(recon_path)
            if (int(recon["hls"]), int(recon["hfs"])) != (hls, hfs):
                raise AnalysisError(f"{recon_path}: is for cell {int(recon['hls'])}x{int(recon['hfs'])}")
        except AnalysisError as exc:  # a reconstruction grid is a nicety: skip it, keep the analysis
            warnings.warn(f"skipping reconstruction figure: {exc}", stacklevel=2)
            continue
        fig = plot_recon(recon, palette, protocol=shown, variant=variant)
        written.append(write_figure(fig, figures_dir / f"recon_{stem}.png"))
    return written


def analyze(
    sweep_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    psnr_cap: float | None = DEFAULT_PSNR_CAP,
    ci_method: str = DEFAULT_CI_METHOD,
) -> dict[str, Path]:
    """Analyse a sweep folder and write its files; returns {path relative to out: path} of every file written.

    All or nothing: the files are written into a fresh folder beside `out`, which then takes `out`'s place, so a
    failure (a damaged recon.npz, a full disk, Ctrl-C) leaves the previous analysis whole. Files of the previous
    folder that the analysis does not write (an executed analysis.ipynb, notes) are carried over.
    """
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / ANALYSIS_DIR
    analysed = analyse(sweep_dir, psnr_cap, ci_method, exclude=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        written = _write_all(analysed, fresh)
        _swap_in(fresh, out, written)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return {path.relative_to(fresh).as_posix(): out / path.relative_to(fresh) for path in written}


def _write_all(analysed: Analysed, out: Path) -> list[Path]:
    auc = analysed.auc
    written = [
        write_parquet(analysed.curves, out / CURVES_FILE),
        write_parquet(auc, out / AUC_FILE),
        atomic_write(out / AUC_CSV_FILE, lambda tmp: auc.to_csv(tmp, index=False)),
        write_parquet(analysed.stats, out / STATS_FILE),
    ]
    written += write_figures(analysed, out / FIGURES_DIR)
    written.append(write_text(summary_markdown(analysed), out / SUMMARY_FILE))
    return written


def _swap_in(fresh: Path, out: Path, written: list[Path]) -> None:
    """Put the finished folder `fresh` in `out`'s place, keeping the old folder's files of other origin (not the
    figures an analysis draws: those this one did not draw are stale)."""
    if out.exists():
        produced = {path.relative_to(fresh) for path in written}
        for path in out.rglob("*"):
            rel = path.relative_to(out)
            stale = rel.parts[0] == FIGURES_DIR and any(path.match(pattern) for pattern in FIGURE_PATTERNS)
            if path.is_file() and rel not in produced and not stale:  # a figure of the old analysis is stale
                (fresh / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, fresh / rel)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(fresh, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(fresh, out)


def restricted(analysed: Analysed, protocol: str) -> Analysed:
    """One protocol's share of an analysed sweep (its statistics are per cell, so they carry over unchanged)."""
    keep = {
        name: frame[frame["protocol"] == protocol].reset_index(drop=True)
        for name, frame in (("curves", analysed.curves), ("auc", analysed.auc), ("long", analysed.long))
    }
    return Analysed(
        analysed.sweep.restricted(protocol),
        keep["curves"],
        keep["auc"],
        keep["long"],
        analysed.psnr_cap,
        analysed.ci_method,
    )
