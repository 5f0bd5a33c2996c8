"""Reading sweep folders: every job's `psnr.parquet` (validated against prefit.schema), run.json and recon.npz.

One folder, or several of one study (prefit.analysis.folders: their jobs merged, a cell in two folders read once).
Unusable input raises AnalysisError with a one-line message naming the file, so that the command lines print
`error: ...` and exit 2 instead of a traceback.
"""

from __future__ import annotations

import json
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

from .folders import AnalysisError, Folders, drop_copies, folders_text, sweep_folders
from .groups import categorize, group_keys, group_label, job_keys, member_keys, study_columns

MEMBER_INFO = ["target_index", "target_label", "prefit_index", "prefit_label"]
READ_COLUMNS = [*MEMBER_KEYS, "phase", "stage", "epoch", "psnr", *MEMBER_INFO]
RECON_KEYS = ("hls", "hfs", "epochs", "scheme", "triple", "recon", "psnr", "triple_images", "triple_indices")
RUN_FACTS = ("device", "device_name", "step", "started", "finished", "wall_s")  # where and when: kept in jobs.parquet


@dataclass
class Sweep:
    """The jobs of one sweep folder or of several of one study (`roots`; `root` the first): `jobs` one row per job
    read (its `sweep` folder, its `folder`, its group columns), `copies` the same for jobs left out as copies of one
    read from another folder, `runs` each job's run.json (None: missing or unreadable); once its psnr.parquet files
    are read, `fits` (a row per fit of A and epoch) and `members` (a row per fit of A, with its target and pre-fit
    images)."""

    root: Path
    jobs: pd.DataFrame
    runs: dict[Path, dict | None]
    fits: pd.DataFrame | None = None
    members: pd.DataFrame | None = None
    roots: tuple[Path, ...] = ()
    copies: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.roots = tuple(self.roots) or (self.root,)

    @property
    def name(self) -> str:
        """Its folders in messages and reports: `A`, or `A, B`."""
        return folders_text(self.roots)


def known(value: object) -> object:
    """A recorded value, None for null, NaN or NA (as a table read back holds them)."""
    return None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else value


def run_facts(jobs: pd.DataFrame, runs: Mapping[Path, dict | None]) -> dict[str, list]:
    """Per job where and when it ran (RUN_FACTS, None where unsaid) as its run.json says; a job whose run.json is
    gone keeps what jobs.parquet recorded of it, so that a report still tells its machine and time."""
    facts = {}
    for key in RUN_FACTS:
        kept = jobs[key].tolist() if key in jobs else [None] * len(jobs)
        values = [known(k if runs.get(f) is None else runs[f].get(key)) for f, k in zip(jobs["folder"], kept)]
        if key == "wall_s":
            facts[key] = [float(v) if isinstance(v, (int, float)) else np.nan for v in values]
        else:
            facts[key] = [None if v is None else str(v) for v in values]
    return facts


def job_info(sweep: Sweep) -> pd.DataFrame:
    """One row per job: its sweep, folder and group columns, then what its run.json says (`status`, `wall_s`,
    `device`, `machine` (the device with its model's name), the `step` that ran, `started`, `threads`, `members`;
    missing values NA or a dash, a job without run.json `no run.json`)."""
    runs = [sweep.runs.get(folder) or {} for folder in sweep.jobs["folder"]]
    facts = run_facts(sweep.jobs, sweep.runs)
    info = {key: [r.get(key, "—") for r in runs] for key in ("threads", "members")}
    info["status"] = [r.get("status", "no run.json") for r in runs]
    info["wall_s"] = facts["wall_s"]
    info["device"] = [device or "?" for device in facts["device"]]
    info["step"] = [step or "—" for step in facts["step"]]  # the batched engine's step that ran (prefit.probe)
    names = [f" ({name})" if name else "" for name in facts["device_name"]]
    info["machine"] = [device + name for device, name in zip(info["device"], names)]
    info["started"] = [started or "—" for started in facts["started"]]
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


def load_sweep(sweep_dirs: Folders, exclude: Path | None = None) -> Sweep:
    """Read and validate every job of one sweep folder, or of several of one study (a cell in two of them read once
    when its copies agree, refused when not: prefit.analysis.folders); raise AnalysisError on the first file that is
    unusable. The study keys that set the jobs apart become columns of `fits`, `members` and `jobs` after
    `protocol`."""
    roots = sweep_folders(sweep_dirs)
    found: list[tuple[Path, Path]] = []
    for root in roots:
        files = find_psnr_files(root, exclude)
        if not files:
            raise AnalysisError(f"{root}: no {PSNR_FILE} found below this folder")
        found += [(root, path) for path in files]
    runs = {path.parent: read_run(path.parent / RUN_FILE) for _, path in found}
    frames = [read_fit_rows(path) for _, path in found]
    copies = drop_copies(found, frames, runs)
    used = [i for i in range(len(found)) if i not in copies]
    files = [found[i][1] for i in used]
    keys = job_keys({path.parent: (runs[path.parent] or {}).get("study") for path in files})
    fits = pd.concat([frames[i].assign(_job=j) for j, i in enumerate(used)], ignore_index=True)
    del frames
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
    sweeps, folders = [found[used[j]][0] for j in jobs["_job"]], [files[j].parent for j in jobs["_job"]]
    jobs = jobs[group_keys(jobs)].assign(sweep=sweeps, folder=folders).reset_index(drop=True)
    jobs = jobs[["sweep", "folder", *group_keys(jobs)]]
    row = {folder: k for k, folder in enumerate(jobs["folder"])}
    left_out = [
        jobs.iloc[[row[found[j][1].parent]]].assign(sweep=[found[i][0]], folder=[found[i][1].parent])
        for i, j in copies.items()
    ]
    fits = fits.sort_values([*member, "epoch"], ignore_index=True)[[*member, "epoch", "psnr"]]
    members = members.sort_values(member, ignore_index=True).drop(columns="_job")
    copies_frame = pd.concat(left_out, ignore_index=True) if left_out else jobs.iloc[:0]
    return Sweep(roots[0], jobs, runs, fits, members, tuple(roots), copies_frame)


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
