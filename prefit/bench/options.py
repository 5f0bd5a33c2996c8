"""Time the engines on the same members in one run: `python -m prefit.bench` (or `make bench ARGS='...'`).

The engines: `batched` (`prefit.engine.fit_batched`, `max_members` at a time), `sequential`
(`prefit.engine.fit_sequential`, a module and optimiser per member) and `original` (`workload.fit_original`, the
original study's loop, its PSNR on the host each epoch). Figures are per *member-epoch* (one full-batch step of one
SIREN on `--resolution`^2 pixels). Each engine is warmed up (calibrating the members and epochs that fit in
`--budget`), then the engines take `--repeats` turns; medians count. `ceiling_fraction`: the share of the machine's
fp32 `torch.mm` rate (`ceiling_gflops`) the batched engine reaches.

Output: a table on stdout, progress on stderr, and `bench.json` (`--out`), written atomically:

    {"machine": {"device", "threads", "torch", "ceiling_gflops", "bandwidth_gbs",
                 "matmul_error": {"highest", "3xtf32", "high"}, ...},
     "cells": [{"hls", "hfs", "resolution", "members", "epochs",
                "ms_per_member_epoch": {"batched", "sequential", "original"},
                "speedup_vs_sequential", "speedup_vs_original", "gflops", "ceiling_fraction", "peak_mem_mb",
                "speedup_vs_sequential_best", "max_members", "members_timed": {...},
                "ms_per_member_epoch_range": {...}, "batched_timing", "steady_state": {...} | null, ...}, ...], ...}

On CUDA (or with `--steady`) `steady_state` (`prefit.bench.steady`) holds per form (`fused_graph`, `fused_eager`,
`torch_graph`, `torch_eager`, ...) one chunk's warm epochs: `ms_per_epoch`, `ms_per_member_epoch`, `ms_range`, `gflops`,
`fraction_fp32`, `fraction_tf32` (of `ceiling_tf32_gflops`), and for fused forms `floor_ms` and `fraction_floor`
(the products at the `torch.mm` rate, the other passes at `bandwidth_gbs`); on CUDA the batched figure is
`fused_graph`'s (`batched_timing: "steady_state"`). `matmul_error`: each `train.matmul_precision`'s relative error
against float64 over products of side min(1024, `--ceiling-size`) (fp32 products on a CPU). Engines left out with
`--engines` have null figures. Bad input: one line `error: ...`, exit 2.

This module parses the command line into `Options` (bad input raises `BenchError`), each option declared once as a
field of `Options` with its default, parser and help (`_option`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prefit.data import SIDE
from prefit.errors import OneLineParser

ENGINES = ("batched", "sequential", "original")
DEFAULT_CELLS = ((2, 32), (3, 128), (3, 512), (8, 1024))


class BenchError(ValueError):
    """Unusable input; reported as one line `error: ...` with exit status 2."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    convert.__name__ = f"positive {kind.__name__}"
    return convert


INT, FLOAT = _positive(int), _positive(float)


def _option(default: Any, kind: Callable[[str], Any], text: str) -> Any:
    """A field that is also the option `--name`, read by `kind`; its help says the default unless `text` does."""
    shown = "" if "default" in text else f" (default {default})"
    return field(default=default, metadata={"kind": kind, "help": text + shown})


@dataclass
class Options:
    """The resolved command line (`--quick` changes only the defaults), and what `run_bench` measures first."""

    device: str = "auto"
    threads: int | None = _option(None, INT, "torch intra-op threads (default: torch's)")
    cells: tuple[tuple[int, int], ...] = _option(
        DEFAULT_CELLS, str, f"HLSxHFS,... (default: {','.join(f'{h}x{f}' for h, f in DEFAULT_CELLS)})"
    )
    resolution: int = _option(SIDE, INT, "pixels a side of the fitted images, as CIFAR's")
    engines: tuple[str, ...] = _option(ENGINES, str, "subset of batched,sequential,original (default: all)")
    members: int = _option(100, INT, "members of a cell, 20 triples x 5 fits")
    subset: int = _option(4, INT, "members timed by sequential and original, at most")
    max_members: int | None = _option(None, INT, "batched chunk (default: the engine's choice)")
    epochs: int = _option(30, INT, "timed epochs per run; the budget may cut")
    min_epochs: int = 5  # the budget may cut epochs down to this, never below
    repeats: int = _option(5, INT, "timed runs per engine; the median counts")
    warmup: int = _option(3, INT, "untimed epochs before timing")
    budget: float = _option(25.0, FLOAT, "seconds of timed runs per engine and cell")
    ceiling_size: int | None = _option(
        None, INT, "side of the torch.mm that measures the ceiling (default 2048 on a CPU, 4096 on a GPU)"
    )
    bandwidth_mib: int | None = _option(
        None, INT, "MiB copied to measure the memory's rate (default 256 on a CPU, 1024 on a GPU)"
    )
    out: Path = _option(Path("bench.json"), Path, "where to write the JSON")
    steady: bool | None = None  # steady-state epoch times of one chunk (None: on CUDA only)
    ceilings: dict[str, float] = field(default_factory=dict)  # measured by run_bench: fp32 (and tf32 on CUDA)
    bandwidth_gbs: float | None = None  # measured by run_bench: the memory's copy rate


QUICK = dict(  # --quick: a tiny run
    members=4, subset=1, epochs=3, min_epochs=1, repeats=1, warmup=1, budget=5.0, ceiling_size=256, bandwidth_mib=16
)


def parse_cells(text: str) -> tuple[tuple[int, int], ...]:
    """'2x32,3x128' -> ((2, 32), (3, 128)): hidden layers x hidden features, both >= 1."""
    cells = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise BenchError(f"--cells: {item.strip()!r} is not HLSxHFS (e.g. 2x32,3x128)")
        hls, hfs = int(parts[0]), int(parts[1])
        if hls < 1 or hfs < 1:
            raise BenchError(f"--cells: {item.strip()!r} needs hls >= 1 and hfs >= 1")
        cells.append((hls, hfs))
    return tuple(cells)


def parse_engines(text: str) -> tuple[str, ...]:
    """'batched,original' -> the engines to time, in the table's order."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names - set(ENGINES) or not names:
        raise BenchError(f"--engines: expected a subset of {','.join(ENGINES)}, got {text!r}")
    return tuple(e for e in ENGINES if e in names)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Command line -> Options (raises BenchError on bad input)."""
    description = __doc__.split("\n\n")[0]
    p = OneLineParser(
        prog="python -m prefit.bench", description=description, argument_default=argparse.SUPPRESS, raises=BenchError
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="(default: auto)")
    for f in fields(Options):
        if f.metadata:
            p.add_argument("--" + f.name.replace("_", "-"), type=f.metadata["kind"], help=f.metadata["help"])
    p.add_argument("--quick", action="store_true", help="a tiny run (tests, smoke checks)")
    steady = "also time one chunk's steady-state epochs (prefit.bench.steady; default: on CUDA only)"
    p.add_argument("--steady", action=argparse.BooleanOptionalAction, help=steady)
    values = vars(p.parse_args(argv))  # the options given, and nothing else
    if values.pop("quick", False):
        values = {**QUICK, **values}
    if "cells" in values:
        values["cells"] = parse_cells(values["cells"])
    if "engines" in values:
        values["engines"] = parse_engines(values["engines"])
    opts = Options(**values)
    opts.min_epochs = min(opts.min_epochs, opts.epochs)
    return opts
