"""The one place that names what runs write and analyses read (files, parquet columns, orders, cell names), so that
writers, readers and tests never spell them again; docs/formats.md describes the same in words."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefit.choices import Protocol

# Files of a cell's folder.
PSNR_FILE = "psnr.parquet"
RECON_FILE = "recon.npz"
RUN_FILE = "run.json"

# Known schemes and protocols, in the order tables, legends and configs list them.
SCHEME_ORDER = ("random", "same_class", "other_class", "class_mean", "multi_same", "meta", "shared_encoder")
PROTOCOL_ORDER = tuple(p.value for p in Protocol)  # the study as stated, then the original's defect
BASELINE = "random"  # what every other scheme is compared with

# psnr.parquet: each column and its kind ("Int64": a nullable integer); written compact (`write_psnr`), read by
# kind only, so float64 or plain strings read the same.
PSNR_COLUMNS: dict[str, str] = {
    "hls": "int64",
    "hfs": "int64",
    "protocol": "string",
    "scheme": "string",
    "phase": "string",
    "stage": "int64",
    "triple": "int64",
    "epoch": "int64",
    "psnr": "float",
    "loss": "float",
    "lr": "float",
    "target_index": "int64",
    "target_label": "int64",
    "prefit_index": "Int64",
    "prefit_label": "Int64",
    "seed": "int64",
    "engine": "string",
}
_ARROW_TYPES = {
    "int64": pa.int64(),
    "Int64": pa.int64(),
    "string": pa.dictionary(pa.int32(), pa.string()),
    "float": pa.float32(),
}
PSNR_SCHEMA = pa.schema(
    [pa.field(name, _ARROW_TYPES[kind], nullable=kind == "Int64") for name, kind in PSNR_COLUMNS.items()]
)
PARQUET_COMPRESSION = "zstd"

CELL_KEYS = ["hls", "hfs", "protocol"]
MEMBER_KEYS = [*CELL_KEYS, "scheme", "triple"]


def cell_dirname(hls: int, hfs: int, overrides: str = "") -> str:
    """A sweep job's folder: `2hls_32hfs` (as the original named its plots), then the job's other overrides that
    name a cell (`,protocol=chained`; chosen by `prefit.config.cell_folder`), so that folders never collide."""
    others = [item for item in overrides.split(",") if item and item.split("=", 1)[0] not in ("model.hls", "model.hfs")]
    name = ",".join([cell_stem(hls, hfs), *others])
    return name.replace("/", "_").replace(os.sep, "_")


def cell_stem(hls: int, hfs: int) -> str:
    """A cell in file names: `2hls_32hfs` (psnr_2hls_32hfs.png)."""
    return f"{hls}hls_{hfs}hfs"


def cell_label(hls: int, hfs: int) -> str:
    """A cell in tables and figures: `2x32` (hidden layers x hidden features)."""
    return f"{hls}x{hfs}"


def ordered(values, order: tuple[str, ...]) -> pd.Categorical:
    """Values as an ordered categorical: the known ones in `order`, then any others alphabetically."""
    present = list(dict.fromkeys(values))
    categories = [v for v in order if v in present] + sorted(v for v in present if v not in order)
    return pd.Categorical(values, categories=categories, ordered=True)


def write_psnr(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write psnr.parquet rows in PSNR_SCHEMA: float32, dictionary strings, zstd (a third of float64's size)."""
    table = pa.Table.from_pandas(frame[list(PSNR_COLUMNS)], preserve_index=False)
    table = table.cast(PSNR_SCHEMA)
    noisy = ["psnr", "loss"]  # a new value every row: byte-stream split lets zstd halve them; the rest repeat
    pq.write_table(
        table,
        Path(path),
        compression=PARQUET_COMPRESSION,
        use_byte_stream_split=noisy,
        use_dictionary=[name for name in PSNR_COLUMNS if name not in noisy],
    )


# The full grid of conf/experiment/grid.yaml (hidden layers x hidden features), whose coverage reports state.
GRID_HLS = (2, 3, 4, 5, 6, 7, 8)
GRID_HFS = (32, 64, 128, 256, 512, 1024)

# Files of an analysis folder (`python -m prefit.analyze SWEEP` -> SWEEP/ANALYSIS_DIR), docs/formats.md.
ANALYSIS_DIR = "analysis"
CURVES_FILE = "curves.parquet"
AUC_FILE = "auc.parquet"
AUC_CSV_FILE = "auc.csv"
STATS_FILE = "stats.parquet"
JOBS_FILE = "jobs.parquet"  # one row per job: its sweep and folder, group columns, machine, step, times, used
SUMMARY_FILE = "summary.md"
FIGURES_DIR = "figures"
