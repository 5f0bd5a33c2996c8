"""What a cell folder holds, verifiably: its study, its files' sizes and hashes, and whether a job may use it.

run.json is first a claim (`status: running`, the study), then, after `psnr.parquet` and `recon.npz`, the record
(`status: complete`, each file's size and sha256). A folder whose record and files match the study is skipped; one
of the same study with missing or changed files is run again; one of another study (`prefit.keys.config_diff` on
`prefit.config.study_of`) stops the job with the keys that differ, unless `train.overwrite=true`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from prefit.config import study_of
from prefit.errors import ConfigError
from prefit.io import write_json
from prefit.keys import config_diff
from prefit.schema import PSNR_FILE, RECON_FILE, RUN_FILE

RECORDED_FILES = (PSNR_FILE, RECON_FILE)


def file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def files_match(out: Path, recorded: dict[str, Any]) -> bool:
    """Whether every file the record vouches for is there with the recorded size and then hash."""
    return set(recorded) == set(RECORDED_FILES) and all(
        (out / name).is_file()
        and (out / name).stat().st_size == expected.get("bytes")
        and file_record(out / name)["sha256"] == expected.get("sha256")
        for name, expected in recorded.items()
    )


def read_record(out: Path) -> dict[str, Any] | None:
    """The folder's run.json, None if it has none. An unreadable one is an error: it cannot say what it holds."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc.__class__.__name__}), so what {out} holds is unknown: "
            "use another hydra.sweep.dir, or train.overwrite=true to replace it"
        ) from None
    return record if isinstance(record, dict) else {}


def job_action(out: Path, study: dict[str, Any], overwrite: bool) -> str:
    """`skip` (an intact result of this study) or `run`; ConfigError for another study's folder."""
    for leftover in out.glob(".*.tmp") if out.is_dir() else ():
        leftover.unlink(missing_ok=True)
    record = None if overwrite else read_record(out)
    if record is None:
        return "run"
    keys = config_diff(study_of(record.get("study") or {}), study)
    if keys:
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        raise ConfigError(
            f"{out} holds the result of another study ({shown} differ): use another hydra.sweep.dir, "
            "or train.overwrite=true to replace it"
        )
    if record.get("status") == "complete" and files_match(out, record.get("files") or {}):
        return "skip"
    return "run"


def claim(out: Path, study: dict[str, Any], started: str) -> None:
    """Mark the folder as being computed for `study` before anything else is written into it."""
    write_json(out / RUN_FILE, {"status": "running", "study": study, "started": started})


def complete(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write the final record, vouching for the files now in the folder: run.json is written last."""
    record = {**record, "status": "complete", "files": {name: file_record(out / name) for name in RECORDED_FILES}}
    write_json(out / RUN_FILE, record)
    return record


def interval(record: dict[str, Any]) -> tuple[datetime, datetime]:
    """When a job ran: its record's `started` and `finished` (KeyError, TypeError or ValueError if unusable)."""
    return datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["finished"])


def span_s(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    """Seconds from the first job's start to the last one's finish (jobs may run side by side)."""
    starts, ends = zip(*intervals)
    return (max(ends) - min(starts)).total_seconds()
