"""What a cell folder holds, verifiably: its study, its files' sizes and hashes, and whether a job may use it.

A job writes `run.json` twice: first a claim (`status: running`, the study it is computing), then, after
`psnr.parquet` and `recon.npz` have landed, the record (`status: complete`, each file's size and sha256). So:

- a folder whose record matches the study and whose files match the record is complete: the job is skipped;
- a folder claimed or recorded for the same study but with missing, truncated or changed files is resumed
  (the job runs again; what it writes replaces what was there);
- a folder that holds another study is never overwritten silently: the job stops with one line naming the
  keys that differ, unless `train.overwrite=true`.

`study_config` is the part of the config that decides the results: everything but the fields marked
`runtime` in `prefit.config` (device, threads, chunking, progress, cache locations, ...), with `dataset.path`
resolved so that two spellings of one folder are one study.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from prefit.errors import ConfigError
from prefit.io import write_json
from prefit.schema import PSNR_FILE, RECON_FILE, RUN_FILE

RECORDED_FILES = (PSNR_FILE, RECON_FILE)


def runtime_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of the dataclass fields marked `metadata={"runtime": True}`: how a job runs, not what it
    computes. The one list that both `study_config` and the sweep's folder names (`prefit.config`) use."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("runtime"):
            keys.append(key)
            continue
        for kind in (hints[f.name], *typing.get_args(hints[f.name])):  # X, or the X of `X | None`
            if isinstance(kind, type) and is_dataclass(kind):
                keys += runtime_keys(kind, key + ".")
                break
    return keys


def study_config(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict, less what does not change results (see the module's doc)."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    return comparable(data, runtime_keys(type(cfg)))


def comparable(study: dict[str, Any], runtime: list[str]) -> dict[str, Any]:
    """A study as compared: no preset name, no runtime keys, `dataset.path` resolved. Applied to recorded
    studies too, so that run.json files of earlier versions (which kept cache locations) compare."""
    study = json.loads(json.dumps(study))  # a deep copy of plain data
    study.pop("experiment", None)
    for key in runtime:
        *parents, leaf = key.split(".")
        node: Any = study
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    dataset = study.get("dataset")
    if isinstance(dataset, dict) and dataset.get("path"):
        dataset["path"] = str(Path(dataset["path"]).expanduser().resolve())
    return study


def file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def files_match(out: Path, recorded: dict[str, Any]) -> bool:
    """Whether every file the record vouches for is there with the recorded size and hash."""
    if set(recorded) != set(RECORDED_FILES):
        return False
    for name, expected in recorded.items():
        path = out / name
        if not path.is_file() or path.stat().st_size != expected.get("bytes"):
            return False
        if file_record(path)["sha256"] != expected.get("sha256"):
            return False
    return True


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (a key missing on one side differs from any value
    but null: a field added to the schema with a null default leaves earlier records comparable)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            keys += differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return keys
    return [] if a == b else [prefix.rstrip(".")]


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


def decide(out: Path, study: dict[str, Any], overwrite: bool, runtime: list[str] = ()) -> str:
    """`skip` (a complete, intact result of this study) or `run`; raises ConfigError for another study's folder.

    Leftover temporary files of killed writes are removed either way.
    """
    for leftover in out.glob(".*.tmp") if out.is_dir() else ():
        leftover.unlink(missing_ok=True)
    record = None if overwrite else read_record(out)
    if record is None:
        return "run"
    recorded = comparable(record.get("study") or {}, list(runtime))
    keys = differing_keys(recorded, study)  # a key added since (dataset.resolution) is absent there, null here: same
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
