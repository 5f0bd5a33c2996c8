"""The whole run and its output: `run_bench` measures the machine and every cell, `format_table` prints them,
and `main` is the command (`python -m prefit.bench`, `prefit-bench`)."""

from __future__ import annotations

import os
import platform
import sys
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
from prefit.io import write_json
from prefit.precision import tf32


def format_table(result: dict[str, Any]) -> str:
    """The cells as a plain text table, then the ceiling line."""

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    header = (
        "cell",
        "members",
        "timed b/s/o",
        "epochs",
        "batched ms",
        "sequential ms",
        "original ms",
        "x seq",
        "x seq best",
        "x orig",
        "GFLOP/s",
        "% ceiling",
        "peak MB",
    )
    rows = [header]
    for c in result["cells"]:
        ms, timed_ = c["ms_per_member_epoch"], c["members_timed"]
        frac = c["ceiling_fraction"]
        rows.append(
            (
                f"{c['hls']}x{c['hfs']}",
                str(c["members"]),
                "/".join("-" if timed_[e] is None else str(timed_[e]) for e in ENGINES),
                str(c["epochs"]),
                num(ms["batched"], ".4g"),
                num(ms["sequential"], ".4g"),
                num(ms["original"], ".4g"),
                num(c["speedup_vs_sequential"], ".3g"),
                num(c["speedup_vs_sequential_best"], ".3g"),
                num(c["speedup_vs_original"], ".3g"),
                num(c["gflops"], ".3g"),
                num(None if frac is None else 100 * frac, ".1f"),
                num(c["peak_mem_mb"], ".0f"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
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
    errors = m.get("matmul_error") or {}
    if errors:
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
    return {
        "machine": machine,
        "cells": cells,
        "settings": {
            "epochs": opts.epochs,
            "min_epochs": opts.min_epochs,
            "repeats": opts.repeats,
            "resolution": opts.resolution,
            "warmup": opts.warmup,
            "budget_s": opts.budget,
            "members": opts.members,
            "subset": opts.subset,
            "max_members": opts.max_members,
            "engines": list(opts.engines),
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: run, print the table, write the JSON; bad input -> `error: ...` on stderr and exit 2."""
    try:
        opts = parse_args(argv)
        result = run_bench(opts)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(opts.out, result)
    print(format_table(result))
    log(f"bench: {result['wall_s']:.0f} s; wrote {opts.out}")
    return 0
