"""The whole run and its output: `run_bench` measures the machine and every cell, `format_table` prints them,
and `main` is the command (`python -m prefit.bench`, `prefit-bench`)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch

import prefit
from prefit.bench.cells import bench_cell, log, rounded, warm_process
from prefit.bench.machine import matmul_errors, measure_bandwidth, measure_ceiling, memory_measure, pick_device
from prefit.bench.options import ENGINES, BenchError, Options, parse_args
from prefit.bench.steady import format_steady
from prefit.engine import device_name
from prefit.errors import fail
from prefit.io import write_json
from prefit.precision import tf32


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


# the table's columns: header and how a cell's record reads in it
COLUMNS = (
    ("cell", lambda c: f"{c['hls']}x{c['hfs']}"),
    ("members", lambda c: str(c["members"])),
    ("timed b/s/o", lambda c: "/".join(_num(c["members_timed"][e], "d") for e in ENGINES)),
    ("epochs", lambda c: str(c["epochs"])),
    *((f"{e} ms", lambda c, e=e: _num(c["ms_per_member_epoch"][e], ".4g")) for e in ENGINES),
    ("x seq", lambda c: _num(c["speedup_vs_sequential"], ".3g")),
    ("x seq best", lambda c: _num(c["speedup_vs_sequential_best"], ".3g")),
    ("x orig", lambda c: _num(c["speedup_vs_original"], ".3g")),
    ("GFLOP/s", lambda c: _num(c["gflops"], ".3g")),
    ("% ceiling", lambda c: _num(None if c["ceiling_fraction"] is None else 100 * c["ceiling_fraction"], ".1f")),
    ("peak MB", lambda c: _num(c["peak_mem_mb"], ".0f")),
)


def format_table(result: dict[str, Any]) -> str:
    """The cells as a plain text table, then the ceiling line."""
    rows = [[name for name, _ in COLUMNS], *([read(c) for _, read in COLUMNS] for c in result["cells"])]
    widths = [max(map(len, column)) for column in zip(*rows)]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    m = result["machine"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(
        f"ceiling: {m['ceiling_gflops']:.4g} GFLOP/s fp32 ({m['ceiling_size']}^2 torch.mm), memory"
        f" {m['bandwidth_gbs']:.4g} GB/s ({m['bandwidth_mib']} MiB copied) on {m['device']}"
        f" ({m['device_name']}), {m['threads']} threads, torch {m['torch']}; ms per member-epoch, medians of"
        f" {result['settings']['repeats']} turns; x seq best: the sequential engine's fastest turn over the batched"
        " median"
    )
    if errors := m.get("matmul_error"):
        lines.append(
            "products against float64 (relative error, train.matmul_precision): "
            + ", ".join(f"{k} {v:.2g}" for k, v in errors.items())
            + ("" if m["device"] == "cuda" else " (on a CPU all three are fp32 products)")
        )
    return "\n".join(lines + format_steady(result["cells"]))


def run_bench(opts: Options) -> dict[str, Any]:
    """The whole benchmark: the ceiling, then every cell; returns what bench.json holds."""
    started = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = pick_device(opts.device)
    opts.ceiling_size = opts.ceiling_size or (4096 if device.type == "cuda" else 2048)
    log(f"bench: measuring the fp32 ceiling ({opts.ceiling_size}^2 torch.mm) on {device}")
    ceiling = measure_ceiling(device, opts.ceiling_size)
    opts.ceilings = {"fp32": ceiling}
    if device.type == "cuda":
        with tf32(True):
            opts.ceilings["tf32"] = measure_ceiling(device, opts.ceiling_size)
    opts.bandwidth_mib = opts.bandwidth_mib or (1024 if device.type == "cuda" else 256)
    opts.bandwidth_gbs = measure_bandwidth(device, opts.bandwidth_mib)
    machine = {
        "device": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ceiling_gflops": rounded(ceiling),
        "ceiling_tf32_gflops": rounded(opts.ceilings.get("tf32")),
        # extra fields
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "ceiling_size": opts.ceiling_size,
        "bandwidth_gbs": rounded(opts.bandwidth_gbs),
        "bandwidth_mib": opts.bandwidth_mib,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "peak_mem": memory_measure(device),
        "matmul_error": {k: rounded(v, 3) for k, v in matmul_errors(device, min(1024, opts.ceiling_size)).items()},
        "python": platform.python_version(),
        "prefit": prefit.__version__,
    }
    warm_process(device, opts.engines)
    cells = [bench_cell(hls, hfs, opts, device, ceiling) for hls, hfs in opts.cells]
    kept = ("epochs", "min_epochs", "repeats", "resolution", "warmup", "members", "subset", "max_members")
    settings = {k: getattr(opts, k) for k in kept}
    return {
        "machine": machine,
        "cells": cells,
        "settings": {**settings, "budget_s": opts.budget, "engines": list(opts.engines)},
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: run, print the table, write the JSON; bad input -> `error: ...` on stderr and exit 2."""
    try:
        opts = parse_args(argv)
        result = run_bench(opts)
    except BenchError as e:
        return fail(e)
    write_json(opts.out, result)
    print(format_table(result))
    log(f"bench: {result['wall_s']:.0f} s; wrote {opts.out}")
    return 0
