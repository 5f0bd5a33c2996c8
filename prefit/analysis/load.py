"""Reading a sweep folder: every job's `psnr.parquet` (validated against prefit.schema), run.json and recon.npz.

Unusable input raises AnalysisError with a one-line message naming the file, so that the command lines print
`error: ...` and exit 2 instead of a traceback.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefit.errors import one_line
from prefit.schema import MEMBER_KEYS, PSNR_COLUMNS, PSNR_FILE, RUN_FILE

from .groups import categorize, group_keys, group_label, job_keys, member_keys, study_columns

Folder = str | os.PathLike  # a folder or file as the functions take it
MEMBER_INFO = ["target_index", "target_label", "prefit_index", "prefit_label"]
READ_COLUMNS = [*MEMBER_KEYS, "phase", "stage", "epoch", "psnr", *MEMBER_INFO]
RECON_KEYS = ("hls", "hfs", "epochs", "scheme", "triple", "recon", "psnr", "triple_images", "triple_indices")


class AnalysisError(Exception):
    """Input the analysis cannot use; the message is one line and names the offending file."""


@dataclass
class Sweep:
    """A sweep folder: `jobs` one row per job (its `folder`, its group columns), `runs` each job's run.json (None:
    missing or unreadable); once its psnr.parquet files are read, `fits` (a row per fit of A and epoch) and `members`
    (a row per fit of A, with its target and pre-fit images)."""

    root: Path
    jobs: pd.DataFrame
    runs: dict[Path, dict | None]
    fits: pd.DataFrame | None = None
    members: pd.DataFrame | None = None


def job_info(sweep: Sweep) -> pd.DataFrame:
    """One row per job: its folder and group columns, then what its run.json says (`status`, `wall_s`, `device`
    with its model's name, the `step` that ran, `threads`, `members`; missing values NA, a job without run.json
    `no run.json`)."""
    runs = [sweep.runs.get(folder) or {} for folder in sweep.jobs["folder"]]
    info = {key: [r.get(key, "—") for r in runs] for key in ("threads", "members")}
    info["status"] = [r.get("status", "no run.json") for r in runs]
    info["wall_s"] = [float(r["wall_s"]) if isinstance(r.get("wall_s"), (int, float)) else np.nan for r in runs]
    info["device"] = [str(r.get("device", "?")) for r in runs]
    info["step"] = [str(r.get("step", "—")) for r in runs]  # the batched engine's step that ran (prefit.probe)
    names = [f" ({r['device_name']})" if "device_name" in r else "" for r in runs]
    info["device_name"] = [device + name for device, name in zip(info["device"], names)]
    return sweep.jobs.assign(**info)


def span(values: Iterable[int]) -> str:
    """`20` if all values are 20, else `min–max`: how tables state counts that should agree."""
    found = sorted({int(v) for v in values})
    if not found:
        return "—"
    return str(found[0]) if len(found) == 1 else f"{found[0]}–{found[-1]}"


def member_name(member: Mapping[str, object]) -> str:
    """A fit of A in error messages: its group, protocol, scheme and triple."""
    label = group_label(member, study_columns(list(member.keys())))
    return f"cell {label} ({member['protocol']}), scheme {member['scheme']}, triple {member['triple']}"


def find_psnr_files(sweep_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every psnr.parquet below the sweep folder, in a stable order, skipping the analysis output folder."""
    skip = exclude.resolve() if exclude is not None else None
    return [p for p in sorted(Path(sweep_dir).rglob(PSNR_FILE)) if skip is None or not p.resolve().is_relative_to(skip)]


def load_sweep(sweep_dir: Folder, exclude: Path | None = None) -> Sweep:
    """Read and validate every job of the sweep; raise AnalysisError on the first file that is unusable. The study
    keys that set its jobs apart become columns of `fits`, `members` and `jobs` after `protocol`."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such folder")
    files = find_psnr_files(root, exclude)
    if not files:
        raise AnalysisError(f"{root}: no {PSNR_FILE} found below this folder")
    runs = {path.parent: read_run(path.parent / RUN_FILE) for path in files}
    keys = job_keys({folder: (run or {}).get("study") for folder, run in runs.items()})
    fits = pd.concat([read_fit_rows(path).assign(_job=i) for i, path in enumerate(files)], ignore_index=True)
    at = fits.columns.get_loc("protocol") + 1
    for offset, key in enumerate(keys.columns):
        fits.insert(at + offset, key, keys[key].array.take(fits["_job"].to_numpy()))
    member = member_keys(categorize(fits))
    members = fits.drop_duplicates([*member, "_job"])[[*member, *MEMBER_INFO, "_job"]]
    same = members.groupby(member, dropna=False, observed=True, sort=False).ngroup()
    if same.duplicated().any():
        again = members[same.duplicated()].iloc[0]
        first = files[members[same == same[same.duplicated()].iloc[0]].iloc[0]["_job"]]
        where = f"{files[again['_job']]}: the fit of {member_name(again)}"
        raise AnalysisError(f"{where} is also in {first} (a job run twice?)")
    jobs = members.drop_duplicates("_job")
    jobs = jobs[group_keys(jobs)].assign(folder=[files[j].parent for j in jobs["_job"]]).reset_index(drop=True)
    fits = fits.sort_values([*member, "epoch"], ignore_index=True)[[*member, "epoch", "psnr"]]
    members = members.sort_values(member, ignore_index=True).drop(columns="_job")
    return Sweep(root, jobs[["folder", *group_keys(jobs)]], runs, fits, members)


def read_run(path: Path) -> dict | None:
    """run.json is informative only (counts, times, configs); a missing or bad one is not fatal."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _type_ok(dtype: pa.DataType, kind: str) -> bool:
    """Whether a parquet column's type is of PSNR_COLUMNS' kind (ints of any width, floats of any, strings)."""
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
    for name, kind in [(n, k) for n, k in PSNR_COLUMNS.items() if not _type_ok(schema.field(n).type, k)][:1]:
        raise AnalysisError(f"{path}: column {name!r} has type {schema.field(name).type}, expected {kind}")


def read_fit_rows(path: Path) -> pd.DataFrame:
    """The validated `fit` rows of one psnr.parquet: exactly epochs 0..n-1 once per member (of a member's several
    fits of A, its last `fit` stage)."""
    try:
        check_schema(path, pq.read_schema(path))
        table = pq.read_table(path, columns=READ_COLUMNS)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise AnalysisError(f"{path}: not a readable parquet file ({one_line(exc)})") from None
    for name in READ_COLUMNS:  # a NaN float is stored as a null by pandas: only keys must be non-null
        if PSNR_COLUMNS[name] not in ("Int64", "float") and table.column(name).null_count:
            raise AnalysisError(f"{path}: column {name!r} has null values")
    frame = table.to_pandas().query("phase == 'fit'")
    if frame.empty:
        raise AnalysisError(f"{path}: no rows with phase == 'fit'")
    # psnr stored as float32 (computed so); sums in float64
    frame = frame.astype({**dict.fromkeys(MEMBER_INFO, "Int64"), "protocol": str, "scheme": str, "psnr": "float64"})
    last = frame.groupby(MEMBER_KEYS)["stage"].transform("max")
    frame = frame[frame["stage"] == last].drop(columns=["phase", "stage"])
    dup = frame.duplicated([*MEMBER_KEYS, "epoch"])
    if dup.any():
        row = frame[dup].iloc[0]
        raise AnalysisError(f"{path}: epoch {row['epoch']} of {member_name(row)} appears more than once")
    extent = frame.groupby(MEMBER_KEYS)["epoch"].agg(["min", "max", "size"])
    gaps = extent[(extent["min"] != 0) | (extent["max"] != extent["size"] - 1)]
    if len(gaps):
        name = member_name(dict(zip(MEMBER_KEYS, gaps.index[0])))
        raise AnalysisError(f"{path}: the epochs of {name} are not 0..n-1, each once")
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
