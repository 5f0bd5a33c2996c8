"""The analysis of one sweep (or of several folders of one study), end to end: load -> reduce -> statistics ->
tables, figures and summary.md.

`compute_analysis` does it in memory; `analyze` writes the files of docs/formats.md ("Analysis outputs") into one
folder, default SWEEP/analysis (with several folders the first one's), all or nothing; `read_analysis` reads such a
folder back, and `load_analysis` gives the analysis as that folder holds it, running `analyze` first when the
folder is missing or out of date for any of the sweeps' jobs. The reports and the notebook read the analysis this
way instead of the trajectories.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from prefit import schema
from prefit.errors import one_line
from prefit.io import atomic_write
from prefit.schema import AUC_FILE, RUN_FILE, STATS_FILE

from .figures import plot_auc_boxplot, plot_cell_curves, plot_paired_stats, plot_recon, scheme_palette, write_figure
from .folders import Folder, Folders, as_paths, command, placed, relative, sweep_folders
from .groups import categorize, group_key, group_keys, group_stem, groups, keys_text, present, study_columns
from .load import AnalysisError, Sweep, find_psnr_files, load_recon, load_sweep, read_run, run_facts
from .reduce import auc_table, by, curves_table, measures_in
from .stats import CI_METHODS, stats_table
from .tables import summary_markdown

TABLES = (schema.CURVES_FILE, AUC_FILE, STATS_FILE, schema.JOBS_FILE)
FIGURE_PATTERNS = ("psnr_*.png", "recon_*.png", "auc_*boxplot.png", "paired_differences*.png")


@dataclass(frozen=True)
class Options:
    """The analysis options and their defaults: the PSNR cap of the capped AUC in dB (59, the PSNR of 8-bit
    quantisation; None: no capped AUC), and the bootstrap CI method (percentile or bca)."""

    psnr_cap: float | None = 59.0
    ci_method: str = CI_METHODS[0]

    def __post_init__(self) -> None:
        if self.psnr_cap is not None and not np.isfinite(self.psnr_cap):
            raise AnalysisError(f"the PSNR cap must be a finite number of dB, got {self.psnr_cap}")
        if self.ci_method not in CI_METHODS:
            raise AnalysisError(f"the CI method must be one of {', '.join(CI_METHODS)}, got {self.ci_method!r}")


DEFAULT_OPTIONS = Options()


@dataclass
class Analysis:
    """A sweep reduced: curves (curves.parquet), one row per fit (auc.parquet), the statistics (stats.parquet)."""

    sweep: Sweep
    curves: pd.DataFrame
    auc: pd.DataFrame
    stats: pd.DataFrame
    options: Options

    def of_protocol(self, protocol: str) -> Analysis:
        """One protocol's share (its statistics are per cell, so they carry over unchanged); an error if none."""
        found = present(self.auc["protocol"])
        if protocol not in found:
            raise AnalysisError(f"{self.sweep.name}: no fits with protocol {protocol!r} (found: {', '.join(found)})")

        frames = {"curves": self.curves, "auc": self.auc, "stats": self.stats, "jobs": self.sweep.jobs}
        frames["copies"] = self.sweep.copies if self.sweep.copies is not None else self.sweep.jobs.iloc[:0]
        keep = {name: f[f["protocol"] == protocol].reset_index(drop=True) for name, f in frames.items()}
        sweep = replace(self.sweep, jobs=keep.pop("jobs"), copies=keep.pop("copies"))
        return replace(self, sweep=sweep, **keep)


def compute_analysis(sweep_dirs: Folders, options: Options = DEFAULT_OPTIONS, exclude: Path | None = None) -> Analysis:
    """Load a sweep, or several folders of one study, and reduce it in memory."""
    sweep = load_sweep(sweep_dirs, exclude=exclude)
    auc = auc_table(sweep.fits, sweep.members, options.psnr_cap)
    stats = stats_table(auc, options.ci_method, options.psnr_cap)
    return Analysis(sweep, curves_table(sweep.fits), auc, stats, options)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_figures(figures_dir: Path, written: list[Path], patterns: tuple[str, ...] = FIGURE_PATTERNS) -> None:
    """Drop the figures in a folder that this run did not draw (a cell no longer in the sweep, a capped box plot
    without a cap), so that a folder never mixes two analyses."""
    keep = {path.resolve() for path in written}
    for path in [p for pattern in patterns for p in figures_dir.glob(pattern) if p.resolve() not in keep]:
        path.unlink()


def write_figures(analysis: Analysis, figures_dir: Path) -> list[Path]:
    """The box plots (raw AUC as the original's auc.png, capped AUC), the paired differences of every measure,
    then per group its curves and, given a recon.npz, its reconstructions: `psnr_2hls_32hfs.png`, `_<protocol>`
    appended when the sweep holds several, then the study keys (`_train.lr=0.0002`) in a sweep with some."""
    auc, stats, cap = analysis.auc, analysis.stats, analysis.options.psnr_cap
    palette = scheme_palette(auc["scheme"].unique())
    several = auc["protocol"].nunique() > 1
    written = [write_figure(plot_auc_boxplot(auc, palette), figures_dir / "auc_boxplot.png")]
    if "auc_capped" in auc.columns:
        fig = plot_auc_boxplot(auc, palette, "auc_capped", f"AUC with PSNR capped at {cap:g} dB")
        written.append(write_figure(fig, figures_dir / "auc_capped_boxplot.png"))
    for m in measures_in(auc.columns) if len(stats) else []:
        fig = plot_paired_stats(stats, palette, m)
        written.append(write_figure(fig, figures_dir / f"paired_differences{m.suffix}.png"))
    keys, study = group_keys(auc), study_columns(auc)
    triples = {group_key(k): n for k, n in by(auc, keys)["triple"].nunique().items()}
    curves = {group_key(k): part for k, part in by(analysis.curves, keys)}
    jobs = analysis.sweep.jobs
    recons = {group_key(job[k] for k in keys): job["folder"] / "recon.npz" for job in jobs.to_dict("records")}
    for group in tqdm(groups(auc), desc="figures", unit="cell", disable=None):
        key, hls, hfs, protocol = group_key(group[k] for k in keys), group["hls"], group["hfs"], group["protocol"]
        stem = group_stem(group, study, protocol=several)  # the protocol only when needed
        shown = protocol if several or protocol != "independent" else ""  # named in titles unless the default
        text = keys_text(group, study)
        fig = plot_cell_curves(curves[key], hls, hfs, int(triples[key]), palette, shown, cap, text)
        written.append(write_figure(fig, figures_dir / f"psnr_{stem}.png"))
        recon_path = recons.get(key)
        if recon_path is None or not recon_path.is_file():
            continue
        try:
            recon = load_recon(recon_path)
            if (int(recon["hls"]), int(recon["hfs"])) != (hls, hfs):
                raise AnalysisError(f"{recon_path}: is for cell {int(recon['hls'])}x{int(recon['hfs'])}")
        except AnalysisError as exc:  # a reconstruction grid is a nicety: skip it, keep the analysis
            warnings.warn(f"skipping reconstruction figure: {exc}", stacklevel=2)
            continue
        fig = plot_recon(recon, palette, protocol=shown, keys=text)
        written.append(write_figure(fig, figures_dir / f"recon_{stem}.png"))
    return written


def analysis_dir(sweep_dirs: Folders) -> Path:
    """Where an analysis goes unless told: SWEEP/analysis; with several folders of one study, the first one's (which
    then holds the analysis of them all, and records their folders in jobs.parquet)."""
    return as_paths(sweep_dirs)[0] / schema.ANALYSIS_DIR


def analyze(sweep_dirs: Folders, out: Folder | None = None, options: Options = DEFAULT_OPTIONS) -> dict[str, Path]:
    """Analyse a sweep folder, or several of one study as one, and write the files; returns {path relative to out:
    path} of every file written. All or nothing: the files are written into a fresh folder beside `out` (default
    `analysis_dir`), which then takes `out`'s place, so a failure (a damaged recon.npz, a full disk, Ctrl-C) leaves
    the previous analysis whole. Files of the previous folder that the analysis does not write (an executed
    analysis.ipynb, notes) are carried over.
    """
    roots = sweep_folders(sweep_dirs)
    out = Path(out) if out is not None else analysis_dir(roots)
    analysis = compute_analysis(roots, options, exclude=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        written = _write_all(analysis, fresh, out)
        _swap_in(fresh, out, written)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return {path.relative_to(fresh).as_posix(): out / path.relative_to(fresh) for path in written}


def jobs_table(sweep: Sweep, out: Path) -> pd.DataFrame:
    """jobs.parquet: every job found, its `sweep` folder relative to the analysis folder `out` (`..` for
    SWEEP/analysis), its `folder` relative to its sweep, its group columns, where and when it ran (RUN_FACTS), and
    `used`: false for a copy of a cell read from another folder."""
    parts = [(sweep.jobs, True)] + ([(sweep.copies, False)] if sweep.copies is not None else [])
    frames = []
    for jobs, used in parts:
        where = zip(jobs["sweep"], jobs["folder"])
        places = {"sweep": [relative(s, out) for s in jobs["sweep"]]}
        places["folder"] = [Path(folder).relative_to(root).as_posix() for root, folder in where]
        frames.append(jobs.assign(**places, **run_facts(jobs, sweep.runs), used=used))
    return pd.concat(frames, ignore_index=True)


def _write_all(analysis: Analysis, out: Path, final: Path) -> list[Path]:
    """Every file of an analysis into `out`, a fresh folder that then becomes `final`."""
    auc, jobs = analysis.auc, jobs_table(analysis.sweep, final)
    tables = {schema.CURVES_FILE: analysis.curves, AUC_FILE: auc, STATS_FILE: analysis.stats, schema.JOBS_FILE: jobs}
    written = [write_parquet(frame, out / name) for name, frame in tables.items()]
    written.append(atomic_write(out / schema.AUC_CSV_FILE, lambda tmp: auc.to_csv(tmp, index=False)))
    written += write_figures(analysis, out / schema.FIGURES_DIR)
    written.append(write_text(summary_markdown(analysis), out / schema.SUMMARY_FILE))
    return written


def _swap_in(fresh: Path, out: Path, written: list[Path]) -> None:
    """Put the finished folder `fresh` in `out`'s place, keeping the old folder's files of other origin (not the
    figures an analysis draws: those this one did not draw are stale)."""
    if not out.exists():
        os.replace(fresh, out)
        return
    produced = {path.relative_to(fresh) for path in written}
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        stale = rel.parts[0] == schema.FIGURES_DIR and any(path.match(pattern) for pattern in FIGURE_PATTERNS)
        if path.is_file() and rel not in produced and not stale:
            (fresh / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, fresh / rel)
    os.replace(out, old := out.with_name(f".{out.name}.old-{os.getpid()}"))
    os.replace(fresh, out)
    shutil.rmtree(old, ignore_errors=True)


def check_layout(out: Path, roots: list[Path]) -> None:
    """Fail, in one line, on an analysis folder that is not in the layout of docs/formats.md (written by an older
    version: stats.parquet one row per cell and scheme)."""
    again = f"run `{command(roots)}` again"
    try:
        names = pq.read_schema(out / STATS_FILE).names
    except (OSError, pa.ArrowException) as exc:
        raise AnalysisError(f"{out / STATS_FILE}: not a readable analysis ({one_line(exc)}); {again}") from None
    if "measure" not in names or not (out / schema.JOBS_FILE).is_file():
        raise AnalysisError(f"{out}: an analysis in an older layout (stats.parquet a row per cell and scheme); {again}")


def read_analysis(out: Folder, roots: Folders | None = None) -> Analysis:
    """An analysis folder read back (`roots`: its sweep folders, default those its jobs.parquet records, or the
    folder above it), scheme and protocol ordered categoricals; AnalysisError, in one line, for a folder without an
    analysis or one in an older layout."""
    out = Path(out)
    given = None if roots is None else as_paths(roots)
    if not (out / STATS_FILE).is_file():
        raise AnalysisError(f"{out}: no {STATS_FILE}: run `{command(given or [out.parent])}` first")
    check_layout(out, given or [out.parent])
    try:
        curves, auc, stats, jobs = (categorize(pd.read_parquet(out / name)) for name in TABLES)
    except (OSError, pa.ArrowException) as exc:
        raise AnalysisError(f"{out}: not a readable analysis ({one_line(exc)})") from None
    jobs = placed(jobs, out, given)
    used = jobs.pop("used").astype(bool) if "used" in jobs.columns else pd.Series(True, index=jobs.index)
    copies, jobs = jobs[~used].reset_index(drop=True), jobs[used].reset_index(drop=True)
    runs = {folder: read_run(folder / RUN_FILE) for folder in [*jobs["folder"], *copies["folder"]]}
    roots = given or list(dict.fromkeys(jobs["sweep"])) or [out.parent]
    cap = stats["psnr_cap"].iloc[0] if len(stats) else DEFAULT_OPTIONS.psnr_cap if "auc_capped" in auc else np.nan
    method = str(stats["ci_method"].iloc[0]) if len(stats) else CI_METHODS[0]
    options = Options(None if pd.isna(cap) else float(cap), method)
    return Analysis(Sweep(roots[0], jobs, runs, roots=tuple(roots), copies=copies), curves, auc, stats, options)


def is_current(roots: list[Path], out: Path, options: Options) -> bool:
    """Whether an analysis folder was written after every job's files of every sweep folder, from the same jobs
    (copies left out included), with these options."""
    tables = [out / name for name in TABLES]
    files = [(root, path) for root in roots for path in find_psnr_files(root, exclude=out)]
    if not files or not all(path.is_file() for path in tables):
        return False
    inputs = [p for _, f in files for p in (f, f.parent / RUN_FILE) if p.is_file()]
    if max(p.stat().st_mtime_ns for p in inputs) > min(p.stat().st_mtime_ns for p in tables):
        return False
    if "sweep" not in pq.read_schema(out / schema.JOBS_FILE).names:
        return False  # an analysis of one folder by an earlier version: analysed again
    jobs = pd.read_parquet(out / schema.JOBS_FILE, columns=["sweep", "folder"])
    found = {(relative(root, out), path.parent.relative_to(root).as_posix()) for root, path in files}
    if set(zip(jobs["sweep"], jobs["folder"])) != found:
        return False
    stats = pd.read_parquet(out / STATS_FILE, columns=["psnr_cap", "ci_method"])
    cap = stats["psnr_cap"].isna() if options.psnr_cap is None else stats["psnr_cap"] == options.psnr_cap
    capped = "auc_capped" in pq.read_schema(out / AUC_FILE).names
    same = cap.all() and (stats["ci_method"] == options.ci_method).all()
    return bool(same) and capped == (options.psnr_cap is not None)


def load_analysis(sweep_dirs: Folders, options: Options = DEFAULT_OPTIONS) -> Analysis:
    """The analysis of a sweep, or of several folders of one study, as `analysis_dir` holds it, analysed first
    (`analyze`, with `options`) when that folder is missing, older than a job's files, made from other jobs or with
    other options. An analysis in an older layout is refused in one line (`check_layout`)."""
    roots = sweep_folders(sweep_dirs)
    out = analysis_dir(roots)
    if (out / STATS_FILE).is_file():
        check_layout(out, roots)
    if not is_current(roots, out, options):
        analyze(roots, out, options)
    return read_analysis(out, roots)
