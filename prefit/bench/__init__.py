"""Time the engines on the same members in one run: `python -m prefit.bench` (or `make bench ARGS='...'`).

The engines: `batched` (`prefit.engine.fit_batched`, the study's, `max_members` at a time), `sequential`
(`prefit.engine.fit_sequential`, a module and torch optimiser per member) and `original` (`workload.fit_original`,
one fit at a time as the original study ran it, its PSNR computed on the host each epoch). Figures are per
*member-epoch* (one full-batch step of one SIREN on `--resolution`^2 pixels), so the slow engines time a few members
and the batched engine, on a big cell, whole chunks of them. Each engine is warmed up first (which calibrates the
members and epochs that fit in `--budget`), then the engines take `--repeats` turns; medians count. The machine's
fp32 `torch.mm` rate (`ceiling_gflops`) says how much of it the batched engine uses (`ceiling_fraction`).

Output: a table on stdout, progress on stderr, and `bench.json` (`--out`), written atomically:

    {"machine": {"device", "threads", "torch", "ceiling_gflops", "bandwidth_gbs",
                 "matmul_error": {"highest", "3xtf32", "high"}, ...},
     "cells": [{"hls", "hfs", "resolution", "members", "epochs",
                "ms_per_member_epoch": {"batched", "sequential", "original"},
                "speedup_vs_sequential", "speedup_vs_original", "gflops", "ceiling_fraction", "peak_mem_mb",
                "speedup_vs_sequential_best", "max_members", "members_timed": {...},
                "ms_per_member_epoch_range": {...}, "batched_timing", "steady_state": {...} | null, ...}, ...], ...}

On CUDA (or with `--steady`) a cell's `steady_state` (`prefit.bench.steady`) holds one chunk's epochs timed after
a warm-up, per form (`fused_graph`, `fused_eager`, `torch_eager`, ...): `ms_per_epoch`, `ms_per_member_epoch`,
`ms_range`, `gflops`, `fraction_fp32`, `fraction_tf32` (of `ceiling_tf32_gflops`, CUDA), and for fused forms
`floor_ms` and `fraction_floor`: the least the epoch can take here (its products at the `torch.mm` rate, its other
passes at the copy rate `bandwidth_gbs`). On CUDA the batched figure is `fused_graph`'s (`batched_timing:
"steady_state"`). `matmul_error`: each `train.matmul_precision`'s relative error against float64 over square
products of side min(1024, `--ceiling-size`) (on a CPU all three are fp32 products). An engine left out with
`--engines` has null figures. Bad input: one line `error: ...`, exit 2.

Modules: `options` (the command line), `workload` (what is fitted), `machine` (device, ceiling, memory), `steady`,
`cells` (one cell timed), `report` (the whole run, the table, `main`), `compare` (a benchmark against training).
"""

from prefit.bench.options import BenchError, Options, parse_args
from prefit.bench.report import main, run_bench

__all__ = ["BenchError", "Options", "main", "parse_args", "run_bench"]
