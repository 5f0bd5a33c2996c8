"""Reading a sweep folder: every job's `psnr.parquet` (validated against prefit.schema), run.json and recon.npz.

The studies in the run.json files name each job's variant (prefit.analysis.variants), so that jobs of one cell
that differ in other keys (`train.lr`) are told apart, and only two jobs of one study collide.

Unusable input raises AnalysisError with a one-line message naming the file, so that the command lines can
print `error: ...` and exit 2 instead of a traceback.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefit.schema import CELL_KEYS, MEMBER_KEYS, PSNR_COLUMNS, PSNR_FILE, RECON_FILE, RUN_FILE

from .variants import VARIANT, group_label, study_variants

MEMBER_INFO = ["target_index", "target_label", "prefit_index", "prefit_label"]
READ_COLUMNS = [*MEMBER_KEYS, "phase", "stage", "epoch", "psnr", *MEMBER_INFO]
RECON_KEYS = ("hls", "hfs", "epochs", "scheme", "triple", "recon", "psnr", "triple_images", "triple_indices")


class AnalysisError(Exception):
    """Input the analysis cannot use; the message is one line and names the offending file."""


@dataclass
class Sweep:
    """What was read from a sweep folder: the fit rows of every job, and where each job's files are.

    In a sweep with variants (prefit.analysis.variants) the frames have a `variant` column after `protocol` and
    `recon_files` is keyed by (hls, hfs, protocol, variant); without, neither, as before variants existed.
    """

    root: Path
    files: list[Path]
    fits: pd.DataFrame  # member keys + epoch + psnr, sorted, one row per member and epoch
    members: pd.DataFrame  # member keys + MEMBER_INFO, one row per member
    recon_files: dict[tuple, Path] = field(default_factory=dict)  # group (hls, hfs, protocol[, variant]) -> file
    runs: dict[Path, dict | None] = field(default_factory=dict)  # job folder -> run.json (None: unreadable)
    job_cells: dict[Path, tuple[int, int, str]] = field(default_factory=dict)  # job folder -> (hls, hfs, protocol)
    variants: dict[Path, str] = field(default_factory=dict)  # job folder -> its variant ("": none)

    def restricted(self, protocol: str) -> Sweep:
        """The same sweep with only the fits (and jobs) of one protocol."""
        keep = {folder for folder, cell in self.job_cells.items() if cell[2] == protocol}
        return Sweep(
            self.root,
            [f for f in self.files if f.parent in keep],
            self.fits[self.fits["protocol"] == protocol].reset_index(drop=True),
            self.members[self.members["protocol"] == protocol].reset_index(drop=True),
            {c: p for c, p in self.recon_files.items() if c[2] == protocol},
            {f: r for f, r in self.runs.items() if f in keep},
            {f: c for f, c in self.job_cells.items() if f in keep},
            {f: v for f, v in self.variants.items() if f in keep},
        )


def one_line(exc: BaseException | str, limit: int = 2000) -> str:
    """An exception's text on one line. Paths make messages long, and their ends say what to do, so only a
    text beyond `limit` characters is cut, in the middle: its start and its end are kept."""
    text = " ".join(str(exc).split())
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


def span(values: Iterable[int]) -> str:
    """`20` if all values are 20, else `min–max`: how tables state counts that should agree."""
    found = sorted({int(v) for v in values})
    if not found:
        return "—"
    return str(found[0]) if len(found) == 1 else f"{found[0]}–{found[-1]}"


def member_name(key: tuple) -> str:
    """A member in error messages: key is (hls, hfs, protocol[, variant], scheme, triple)."""
    hls, hfs, protocol, *variant, scheme, triple = key
    return f"cell {group_label(hls, hfs, *variant)} ({protocol}), scheme {scheme}, triple {triple}"


def find_psnr_files(sweep_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every psnr.parquet below the sweep folder, in a stable order, skipping the analysis output folder."""
    exclude = exclude.resolve() if exclude is not None else None
    return [
        path
        for path in sorted(Path(sweep_dir).rglob(PSNR_FILE))
        if exclude is None or not path.resolve().is_relative_to(exclude)
    ]


def load_sweep(sweep_dir: str | os.PathLike, exclude: Path | None = None) -> Sweep:
    """Read and validate every job of the sweep; raise AnalysisError on the first file that is unusable."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such folder")
    files = find_psnr_files(root, exclude)
    if not files:
        raise AnalysisError(f"{root}: no {PSNR_FILE} found below this folder")

    runs = {path.parent: read_run(path.parent / RUN_FILE) for path in files}
    variants = study_variants({folder: (run or {}).get("study") for folder, run in runs.items()})
    varied = any(variants.values())  # only then a `variant` column: a sweep without reads as it always did
    keys = [*CELL_KEYS, VARIANT, "scheme", "triple"] if varied else MEMBER_KEYS
    fits, members, recon_files, job_cells = [], [], {}, {}
    owner: dict[tuple, Path] = {}  # member -> file, to catch a member written by two jobs of the same study
    for path in files:
        frame = read_fit_rows(path)
        if varied:
            frame.insert(frame.columns.get_loc("protocol") + 1, VARIANT, variants[path.parent])
        info = frame.drop_duplicates(keys)[keys + MEMBER_INFO]
        for key in info[keys].itertuples(index=False, name=None):
            if key in owner:
                raise AnalysisError(f"{path}: the fit of {member_name(key)} is also in {owner[key]} (a job run twice?)")
            owner[key] = path
        fits.append(frame[[*keys, "epoch", "psnr"]])
        members.append(info)
        hls, hfs, protocol = tuple(info[CELL_KEYS].iloc[0])
        cell = (int(hls), int(hfs), str(protocol))
        job_cells[path.parent] = cell
        if (path.parent / RECON_FILE).is_file():
            recon_files[(*cell, variants[path.parent]) if varied else cell] = path.parent / RECON_FILE

    all_fits = pd.concat(fits, ignore_index=True).sort_values([*keys, "epoch"], ignore_index=True)
    return Sweep(root, files, all_fits, pd.concat(members, ignore_index=True), recon_files, runs, job_cells, variants)


def read_run(path: Path) -> dict | None:
    """run.json is informative only (counts, times, configs); a missing or bad one is not fatal."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _type_ok(dtype: pa.DataType, kind: str) -> bool:
    if kind in ("int64", "Int64"):
        return pa.types.is_integer(dtype) or (kind == "Int64" and pa.types.is_null(dtype))
    if kind == "float":
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
        check_schema(path, pq.read_schema(path))
        table = pq.read_table(path, columns=READ_COLUMNS)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise AnalysisError(f"{path}: not a readable parquet file ({one_line(exc)})") from None
    for name in READ_COLUMNS:  # a NaN float is stored as a null by pandas: only keys must be non-null
        if PSNR_COLUMNS[name] not in ("Int64", "float") and table.column(name).null_count:
            raise AnalysisError(f"{path}: column {name!r} has null values")

    frame = table.to_pandas()
    frame = frame[frame["phase"].astype(str) == "fit"]
    if frame.empty:
        raise AnalysisError(f"{path}: no rows with phase == 'fit'")
    for name in MEMBER_INFO:
        frame[name] = frame[name].astype("Int64")
    for name in ("protocol", "scheme"):
        frame[name] = frame[name].astype(str)
    frame["psnr"] = frame["psnr"].astype("float64")  # stored as float32 (computed so); sums in float64
    last = frame.groupby(MEMBER_KEYS)["stage"].transform("max")
    frame = frame[frame["stage"] == last].drop(columns=["phase", "stage"])

    dup = frame.duplicated([*MEMBER_KEYS, "epoch"])
    if dup.any():
        row = frame[dup].iloc[0]
        raise AnalysisError(
            f"{path}: epoch {row['epoch']} of {member_name(tuple(row[MEMBER_KEYS]))} appears more than once"
        )
    extent = frame.groupby(MEMBER_KEYS)["epoch"].agg(["min", "max", "size"])
    gaps = extent[(extent["min"] != 0) | (extent["max"] != extent["size"] - 1)]
    if len(gaps):
        raise AnalysisError(f"{path}: the epochs of {member_name(gaps.index[0])} are not 0..n-1, each once")
    return frame.reset_index(drop=True)


def load_recon(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a recon.npz (docs/formats.md), checked for the keys and shapes the figure needs."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in RECON_KEYS if k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise AnalysisError(f"{path}: not a readable npz file ({one_line(exc)})") from None
    missing = [k for k in RECON_KEYS if k not in arrays]
    if missing:
        raise AnalysisError(f"{path}: missing key(s) {', '.join(missing)}")
    n_fits, n_epochs = len(arrays["scheme"]), len(arrays["epochs"])
    if arrays["recon"].shape[:2] != (n_fits, n_epochs) or arrays["psnr"].shape != (n_fits, n_epochs):
        raise AnalysisError(f"{path}: recon/psnr shapes do not match scheme and epochs")
    if len(arrays["triple"]) != n_fits or arrays["triple_images"].ndim != 5 or arrays["triple_indices"].ndim != 2:
        raise AnalysisError(f"{path}: triple/triple_images/triple_indices shapes do not match docs/formats.md")
    return arrays
