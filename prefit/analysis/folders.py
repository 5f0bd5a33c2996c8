"""The sweep folders an analysis reads: one, or several of one study (cells run on different machines or days).

Unusable input raises AnalysisError with a one-line message naming the file or folder, so that the command lines
print `error: ...` and exit 2 instead of a traceback.

The folders' jobs are merged. A cell in two folders (the same hls, hfs, protocol and values of the keys swept in
either folder) is read once when both jobs are of one study (`prefit.keys.config_diff` on `prefit.config.study_of`
of their run.json studies) with the same results (the sha256 of psnr.parquet, as run.json's `files` records it,
`prefit.records.file_record`); the copy of the later folder is left out with one info line. A cell whose copies
differ in either is refused in one line naming both folders: which of them the study means is not the analysis'
call.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from prefit.config import study_of
from prefit.keys import config_diff, flatten
from prefit.records import file_record
from prefit.schema import PSNR_FILE, cell_label

from .groups import CELL_COLUMNS, text, varying_keys

Folder = str | os.PathLike  # a folder or file as the functions take it
Folders = Folder | Sequence[Folder]  # one sweep folder, or several of one study
Job = tuple[Path, Path]  # (its sweep folder, its psnr.parquet)


class AnalysisError(Exception):
    """Input the analysis cannot use; the message is one line and names the offending file."""


def as_paths(given: Folders) -> list[Path]:
    """One folder or several as a list of paths."""
    return [Path(given)] if isinstance(given, (str, os.PathLike)) else [Path(g) for g in given]


def sweep_folders(given: Folders) -> list[Path]:
    """The sweep folders as paths, in the order given; AnalysisError for a folder given twice or inside another (its
    jobs would be read twice)."""
    roots = as_paths(given)
    if not roots:
        raise AnalysisError("no sweep folder given")
    for root in roots:
        if not root.is_dir():
            raise AnalysisError(f"{root}: no such folder")
    resolved = [root.resolve() for root in roots]
    for i, (root, path) in enumerate(zip(roots, resolved)):
        for other, other_path in zip(roots[:i], resolved[:i]):
            if path == other_path:
                raise AnalysisError(f"{root}: given twice (as {other}); give each sweep folder once")
            if path.is_relative_to(other_path) or other_path.is_relative_to(path):
                inner, outer = (root, other) if path.is_relative_to(other_path) else (other, root)
                raise AnalysisError(f"{inner} is inside {outer}: give each sweep folder once, not one within another")
    return roots


def folders_text(roots: Sequence[Path]) -> str:
    """Sweep folders in messages and reports: `A`, or `A, B`."""
    return ", ".join(str(root) for root in roots)


REPO = Path(__file__).resolve().parents[2]  # the repository holding this package (reports link into its docs/)


def relative(path: Path, start: Path) -> str:
    """`path` relative to `start`, both resolved, POSIX: the reports' links, and how jobs.parquet names a sweep
    folder (relative to the analysis folder, so that a tree moved whole still reads back)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def swept_keys(jobs: Sequence[Job], runs: Mapping[Path, dict | None]) -> list[str]:
    """The study keys swept within any one folder (`varying_keys` of its jobs' studies): with the cell, they say
    which jobs of two folders are one cell."""
    keys: set[str] = set()
    for root in dict.fromkeys(root for root, _ in jobs):
        studies = [(runs.get(path.parent) or {}).get("study") for r, path in jobs if r == root]
        keys |= set(varying_keys(study_of(dict(s)) for s in studies if isinstance(s, Mapping)))
    return sorted(keys)


def identity(frame: pd.DataFrame, run: dict | None, keys: Sequence[str]) -> tuple:
    """What makes a job one cell: its (hls, hfs, protocol) and its values of the swept keys (null: unrecorded)."""
    cells = tuple(sorted(frame[CELL_COLUMNS].drop_duplicates().itertuples(index=False, name=None)))
    study = (run or {}).get("study")
    flat = flatten(study_of(dict(study))) if isinstance(study, Mapping) else {}
    return cells, tuple(json.dumps(flat.get(key), sort_keys=True, default=str) for key in keys)


def results_digest(folder: Path, run: dict | None) -> str:
    """The sha256 of a job's psnr.parquet: as its run.json records it when the size agrees, else hashed now."""
    path = folder / PSNR_FILE
    recorded = ((run or {}).get("files") or {}).get(PSNR_FILE)
    if isinstance(recorded, dict) and recorded.get("sha256") and recorded.get("bytes") == path.stat().st_size:
        return str(recorded["sha256"])
    return file_record(path)["sha256"]


def difference(a: Path, b: Path, runs: Mapping[Path, dict | None]) -> str:
    """How two copies of a cell differ ("" when they do not): in their studies, or in their results."""
    studies = [(runs.get(folder) or {}).get("study") for folder in (a, b)]
    if [isinstance(s, Mapping) for s in studies].count(True) == 1:
        return "another study (one run.json records none)"
    both = [study_of(dict(s)) for s in studies if isinstance(s, Mapping)]
    keys = config_diff(*both) if both else []
    if keys:
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        return f"another study ({shown} differ)"
    if results_digest(a, runs.get(a)) != results_digest(b, runs.get(b)):
        return f"other results (the sha256 of {PSNR_FILE} differs)"
    return ""


Runs = Mapping[Path, dict | None]  # each job folder's run.json


def drop_copies(jobs: Sequence[Job], frames: Sequence[pd.DataFrame], runs: Runs) -> dict[int, int]:
    """{index of a job left out: index of its copy that is used} over `jobs` (with their fit rows `frames`): a
    cell found in an earlier folder too, of the same study and results (one info line on stderr each). AnalysisError,
    naming both folders, for copies that differ. Two jobs of one cell within one folder are left to load_sweep,
    which stops on a job run twice."""
    keys = swept_keys(jobs, runs)
    first: dict[tuple, int] = {}
    copies: dict[int, int] = {}
    for i, ((root, path), frame) in enumerate(zip(jobs, frames)):
        key = identity(frame, runs.get(path.parent), keys)
        j = first.setdefault(key, i)
        if j == i or jobs[j][0] == root:
            continue
        used, name = jobs[j][1].parent, cell_name(frame, key[1], keys)
        why = difference(used, path.parent, runs)
        if why:
            raise AnalysisError(f"{path.parent}: {name} is also in {used}, with {why}; a study holds each cell once")
        print(f"info: {path.parent}: {name} is also in {used}, the same study and results: read once", file=sys.stderr)
        copies[i] = j
    return copies


def cell_name(frame: pd.DataFrame, values: Sequence[str], keys: Sequence[str]) -> str:
    """A job's cell in messages: `cell 2x32 (independent)`, then its swept keys' values (`train.lr=0.0002`)."""
    hls, hfs, protocol = frame[CELL_COLUMNS].iloc[0]
    shown = [f"{k}={text(json.loads(v))}" for k, v in zip(keys, values) if v != "null"]
    return " ".join([f"cell {cell_label(int(hls), int(hfs))} ({protocol})", *shown])


def command(roots: Sequence[Path]) -> str:
    """The command that analyses these folders, for messages."""
    return "python -m prefit.analyze " + " ".join(str(root) for root in roots)


def placed(jobs: pd.DataFrame, out: Path, roots: Sequence[Path] | None) -> pd.DataFrame:
    """A jobs table read back with its `sweep` and `folder` as paths: the sweep folders `roots` where given (matched
    by their place relative to `out`), else as jobs.parquet records them; without a `sweep` column (an analysis of
    one folder by an earlier version) the folder above `out`."""
    if "sweep" not in jobs.columns:
        jobs = jobs.assign(sweep=".." if not roots else relative(roots[0], out))
    given = {relative(root, out): root for root in roots or []}
    sweeps = [given.get(s) or Path(os.path.normpath(out / s)) for s in jobs["sweep"]]
    return jobs.assign(sweep=sweeps, folder=[s / f for s, f in zip(sweeps, jobs["folder"])])
