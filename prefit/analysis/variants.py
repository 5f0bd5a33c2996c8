"""Variants: what sets apart jobs of one sweep beyond their cell, so that each gets its own curves and statistics.

A sweep may vary keys other than `model.hls`, `model.hfs` and `protocol` (`train.lr=1e-4,2e-4`, `seed=1,2`), or
a folder may hold several runs of one cell. Every job's run.json records the config that decides its results
(`study`, prefit.records); the keys whose values differ between the jobs of a sweep name each job's *variant*,
`train.lr=0.0002` or `seed=1,train.lr=0.0002` (keys in alphabetical order). A curve, an AUC and a statistic belong
to a cell *and* a variant: the group keys are CELL_KEYS plus `variant`.

A sweep whose jobs differ in nothing else has no variants, and then no `variant` column at all: its frames, files
and figures are exactly those of a sweep analysed before variants existed (and analysis files written before
read alike). So the group keys are taken from a frame (`group_keys`) rather than fixed.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from prefit.config import CELL_KEYS as CELL_CONFIG_KEYS
from prefit.config import study_of
from prefit.schema import CELL_KEYS, cell_label, cell_stem

VARIANT = "variant"
# Study entries that select sections (a section is a dict, or null when not selected): `scheme`. They are
# flattened to the list of what is selected (`scheme=[random,same_class]`) plus the selected sections' keys, so
# that a sweep over the selection reads as one key.
SELECTIONS = ("scheme",)
_ABSENT = object()
SUFFIX_CHARS = 60  # longer variants are cut in file names and told apart by a hash


def group_keys(frame: pd.DataFrame | Iterable[str]) -> list[str]:
    """The keys a curve, an AUC or a statistic belongs to: the cell (CELL_KEYS), and `variant` when there is one."""
    columns = frame.columns if isinstance(frame, pd.DataFrame) else list(frame)
    return [*CELL_KEYS, VARIANT] if VARIANT in columns else list(CELL_KEYS)


def member_keys(frame: pd.DataFrame | Iterable[str]) -> list[str]:
    """The keys of one fit of A: its group, scheme and triple."""
    return [*group_keys(frame), "scheme", "triple"]


def with_variant(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `variant` column ("" where it had none), for code that labels groups uniformly."""
    return frame if VARIANT in frame.columns else frame.assign(**{VARIANT: ""})


def has_variants(frame: pd.DataFrame) -> bool:
    """Whether any row names a variant (what decides if tables and titles show one)."""
    return VARIANT in frame.columns and bool((frame[VARIANT].astype(str) != "").any())


def text(value: object) -> str:
    """A study value as a variant shows it: Hydra's spelling (`true`, `null`, `[a,b]`), numbers as Python's."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(text(v) for v in value) + "]"
    return str(value)


def flatten(study: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """A nested study as {dotted key: leaf value}; selections (SELECTIONS) as described there."""
    flat: dict[str, object] = {}
    for key, value in study.items():
        name = f"{prefix}{key}"
        if name in SELECTIONS and isinstance(value, Mapping):
            flat[name] = [k for k, v in value.items() if v is not None]
            value = {k: v for k, v in value.items() if v is not None}
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def varying_keys(studies: Iterable[Mapping[str, object]]) -> list[str]:
    """The dotted keys whose values differ between studies, in alphabetical order; the cell's own keys, and keys
    absent from some studies where every present value agrees (a run.json of an earlier version), left out."""
    values: dict[str, set[str]] = {}
    for study in studies:
        for key, value in flatten(study).items():
            values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return sorted(k for k, seen in values.items() if len(seen) > 1 and k not in CELL_CONFIG_KEYS)


def study_variants(studies: Mapping[Path, Mapping[str, object] | None]) -> dict[Path, str]:
    """Per job folder its variant: `key=value` of every varying key it holds, comma-separated; "" for a job
    without a recorded study (no run.json, or one written before studies were recorded). Studies are compared
    as prefit.records compares them (dataset.path resolved: a relative and an absolute spelling are one)."""
    recorded = {folder: study_of(dict(study)) for folder, study in studies.items() if isinstance(study, Mapping)}
    known = {folder: flatten(study) for folder, study in recorded.items()}
    keys = varying_keys(recorded.values())
    variants = {}
    for folder in studies:
        flat = known.get(folder, {})
        variants[folder] = ",".join(f"{k}={text(flat[k])}" for k in keys if flat.get(k, _ABSENT) is not _ABSENT)
    return variants


def _number(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def variant_sort_key(variant: str) -> tuple:
    """Variants in a natural order: key by key, numbers by value (`train.lr=5e-05` before `train.lr=0.0001`)."""
    parts = re.split(r",(?=[A-Za-z_+~][\w.]*=)", variant) if variant else []
    return tuple((key, _number(value)) for key, _, value in (p.partition("=") for p in parts))


def variant_order(variants: Iterable[str]) -> list[str]:
    """The distinct variants in `variant_sort_key` order ("" first)."""
    return sorted({str(v) for v in variants}, key=variant_sort_key)


def variant_suffix(variant: str) -> str:
    """A variant in a file name, safe on every file system: `_train.lr=0.0002` ("" for no variant)."""
    if not variant:
        return ""
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", variant.replace(",", "_")).strip("_.")
    if len(safe) > SUFFIX_CHARS:
        safe = f"{safe[:SUFFIX_CHARS].rstrip('_.')}_{zlib.crc32(variant.encode()):08x}"
    return f"_{safe}"


def group_label(hls: int, hfs: int, variant: str = "") -> str:
    """A cell and its variant in tables and figures: `2x32`, `2x32 train.lr=0.0002`."""
    return cell_label(hls, hfs) + (f" {variant}" if variant else "")


def group_stem(hls: int, hfs: int, protocol: str = "", variant: str = "") -> str:
    """A cell in file names (`2hls_32hfs`), then `_<protocol>` when given, then the variant (`variant_suffix`)."""
    return cell_stem(hls, hfs) + (f"_{protocol}" if protocol else "") + variant_suffix(variant)
