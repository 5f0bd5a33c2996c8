"""What a curve, an AUC and a statistic belong to: its *group*, a cell and the sweep's study keys.

The dotted keys whose values differ between a sweep's jobs (their run.json studies compared by
`prefit.keys.config_diff`: null and absent are one), `train.lr` or `dataset.resolution` say, are its *study keys*:
each is a column of every table after `protocol`, named by its key and typed by its values. The group columns of a
table are `hls, hfs, protocol` and its study keys; a sweep whose jobs differ in nothing else has no study key.
Scheme and protocol are ordered categoricals (`categorize`), so that a sorted table follows the study's order.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pandas as pd

from prefit.config import CELL_KEYS, Config, study_of
from prefit.keys import config_diff, flatten
from prefit.schema import PROTOCOL_ORDER, SCHEME_ORDER, cell_label, cell_stem, ordered

CELL_COLUMNS = list(CELL_KEYS.values())  # hls, hfs, protocol
TOP_LEVEL_KEYS = {f.name for f in fields(Config) if f.default is not MISSING}  # study keys without a dot: seed
STEM_CHARS = 60  # longer study-key suffixes are cut in file names and told apart by a hash


def study_columns(frame: pd.DataFrame | Iterable[str]) -> list[str]:
    """The study-key columns (`train.lr`, `seed`) of a frame or a list of column names, in their order."""
    return [c for c in (frame.columns if isinstance(frame, pd.DataFrame) else frame) if "." in c or c in TOP_LEVEL_KEYS]


def group_keys(frame: pd.DataFrame | Iterable[str]) -> list[str]:
    """The group columns: hls, hfs, protocol, then the study keys."""
    return [*CELL_COLUMNS, *study_columns(frame)]


def member_keys(frame: pd.DataFrame | Iterable[str]) -> list[str]:
    """The keys of one fit of A: its group, scheme and triple."""
    return [*group_keys(frame), "scheme", "triple"]


def varying_keys(studies: Iterable[Mapping[str, object]]) -> list[str]:
    """The dotted keys whose values differ between studies (prefit.keys.config_diff), the cell's own left out."""
    studies = list(studies)
    return sorted({key for study in studies[1:] for key in config_diff(studies[0], study)} - set(CELL_KEYS))


def job_keys(studies: Mapping[Path, Mapping[str, object] | None]) -> pd.DataFrame:
    """Per job folder (the index) its values of the sweep's study keys, a typed column per key. Studies are read as
    prefit.records reads them (`study_of`: `dataset.path` resolved); a job without a recorded study has NA."""
    recorded = {folder: study_of(dict(s)) for folder, s in studies.items() if isinstance(s, Mapping)}
    flat = {folder: flatten(study) for folder, study in recorded.items()}
    keys = varying_keys(recorded.values())
    return pd.DataFrame({k: typed(key_values(k, flat, studies)) for k in keys}, index=list(studies))


def key_values(key: str, flat: Mapping[Path, Mapping[str, object]], folders: Iterable[Path]) -> list[object]:
    """A study key's value per job. Where some recorded studies set it and others leave it null (a key of one model
    family, say), every recorded value is its text and null is `null`, a value like any other, so that groups and
    lookups never meet a missing key; a job without a recorded study stays missing (None)."""
    values = [flat[f].get(key) if f in flat else None for f in folders]
    sections = all(v == {} for v in values if v is not None)  # a scheme without options: selected or not (`typed`)
    if not sections and any(key not in study for study in flat.values()):
        values = [text(flat[f].get(key)) if f in flat else None for f in folders]
    return values


def typed(values: Sequence[object]) -> pd.api.extensions.ExtensionArray:
    """A study key's values as one column: numbers, booleans or text (lists as Hydra spells them, `[a,b]`); a section
    without keys of its own (a scheme without options) is true where selected, false where not; missing is NA."""
    present = [v for v in values if v is not None]
    if present and all(v == {} for v in present):
        return pd.array([v is not None for v in values], dtype="boolean")
    if any(isinstance(v, (list, tuple, dict)) for v in present):
        values = [None if v is None else text(v) for v in values]
    return pd.array(list(values))


def text(value: object) -> str:
    """A study value as Hydra spells it (`true`, `null`, `[a,b]`), numbers as Python prints them."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(text(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, (bool, np.bool_)) else "null" if value is None else str(value)


def keys_text(row: Mapping[str, object], keys: Sequence[str]) -> str:
    """A group's study keys as text, `seed=1,train.lr=0.0002` (a missing or null value left out); "" without keys."""
    return ",".join(f"{k}={text(row[k])}" for k in keys if not pd.isna(row[k]) and row[k] != "null")


def study_texts(frame: pd.DataFrame) -> list[str]:
    """The distinct study-key values of a frame's rows as text (`train.lr=0.0001`), in order; [] without any."""
    study = study_columns(frame)
    rows = frame[study].drop_duplicates().sort_values(study, na_position="first").to_dict("records") if study else []
    return [keys_text(row, study) for row in rows]


def group_label(row: Mapping[str, object], keys: Sequence[str] = ()) -> str:
    """A group in tables and figures: `2x32`, `2x32 train.lr=0.0002`."""
    suffix = keys_text(row, keys)
    return cell_label(int(row["hls"]), int(row["hfs"])) + (f" {suffix}" if suffix else "")


def group_stem(row: Mapping[str, object], keys: Sequence[str] = (), protocol: bool = False) -> str:
    """A group in file names: `2hls_32hfs`, `_<protocol>` when asked, then its study keys made safe on every file
    system (`_train.lr=0.0002`; a long suffix cut and told apart by a hash)."""
    stem, suffix = cell_stem(int(row["hls"]), int(row["hfs"])) + f"_{row['protocol']}" * protocol, keys_text(row, keys)
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", suffix.replace(",", "_")).strip("_.")
    if len(safe) > STEM_CHARS:
        safe = f"{safe[:STEM_CHARS].rstrip('_.')}_{zlib.crc32(suffix.encode()):08x}"
    return f"{stem}_{safe}" if safe else stem


def categorize(frame: pd.DataFrame, protocols: Sequence[str] = PROTOCOL_ORDER) -> pd.DataFrame:
    """Scheme and protocol as ordered categoricals in the study's orders (prefit.schema; a report may present the
    protocols in another), for a table as it is read or made; returns the frame."""
    for column, order in (("scheme", SCHEME_ORDER), ("protocol", tuple(protocols))):
        if column in frame.columns:
            frame[column] = ordered(frame[column].astype(str).tolist(), order)
    return frame


def present(values: pd.Series) -> list:
    """The distinct values of a column in order (a categorical's own order, otherwise sorted)."""
    return values.drop_duplicates().sort_values().tolist()


def sort_table(frame: pd.DataFrame, then: Sequence[str] = ()) -> pd.DataFrame:
    """Rows in the order of every table: cells by size (hls x hfs, then hls), protocol, the study keys (numbers by
    value, missing first), scheme, then the columns `then`."""
    by = [c for c in (*group_keys(frame), "scheme", *then) if c in frame.columns]
    size = frame["hls"].astype("int64") * frame["hfs"].astype("int64")
    rows = frame.assign(_size=size).sort_values(["_size", *by], kind="stable", na_position="first")
    return rows.drop(columns="_size").reset_index(drop=True)


def group_key(values: Iterable[object]) -> tuple:
    """A group's values as a dictionary key: a missing study key (None, NA or NaN: a key another family has, say)
    is None however the table spelled it, so that keys from groupby and from rows match."""
    return tuple(None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v for v in values)


def groups(frame: pd.DataFrame, with_protocol: bool = True) -> list[dict[str, object]]:
    """The distinct groups of a frame's rows in table order, as {column: value}; without the protocol when asked."""
    keys = [k for k in group_keys(frame) if with_protocol or k != "protocol"]
    return sort_table(frame[keys].drop_duplicates()).to_dict("records")


def cell_order(cells: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Cells (hls, hfs) by model size hls*hfs ascending, ties by hls: the x order of the original AUC plot."""
    return sorted({(int(h), int(f)) for h, f in cells}, key=lambda c: (c[0] * c[1], c[0], c[1]))


def of_cell(frame: pd.DataFrame, cell: tuple[int, int]) -> pd.DataFrame:
    """A frame's rows of one cell (hls, hfs)."""
    return frame[(frame["hls"] == cell[0]) & (frame["hfs"] == cell[1])]


def cells_of(frame: pd.DataFrame) -> list[tuple[int, int]]:
    """The cells (hls, hfs) of a frame's rows, by size."""
    return cell_order(zip(frame["hls"], frame["hfs"]))
