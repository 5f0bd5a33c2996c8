"""Time the engines on the same members in one run: `python -m prefit.bench` (or `make bench ARGS='...'`).

Three ways of fitting a study cell's members are timed, on the same start weights and targets: `batched`
(`prefit.engine.fit_batched`, the study's engine, `max_members` at a time), `sequential`
(`prefit.engine.fit_sequential`, one `nn.Module` and torch optimiser per member) and `original` (`fit_original`
in `prefit.bench.workload`: one fit at a time as the original study ran it, its PSNR computed on the host each
epoch).

Every figure is per *member-epoch* (one full-batch step of one SIREN on its 32 x 32 pixels, or `--resolution`
squared), so the slow engines time a few members and, on a big cell, the batched engine a subset (at least one
full chunk), to keep the run within minutes. Each engine is first warmed up (untimed epochs, outside the one-time
costs), which also calibrates the members and epochs that fit in `--budget` seconds; then each runs `--repeats`
times, the engines taking turns, and the median counts. The machine's fp32 matrix-product rate
(`ceiling_gflops`), measured in the same run, says how much of the hardware the batched engine uses
(`ceiling_fraction`).

Output: a table on stdout, progress on stderr, and `bench.json` (`--out`), written atomically:

    {"machine": {"device", "threads", "torch", "ceiling_gflops", "bandwidth_gbs",
                 "matmul_error": {"highest", "3xtf32", "high"}, ...},
     "cells": [{"hls", "hfs", "resolution", "members", "epochs",
                "ms_per_member_epoch": {"batched", "sequential", "original"},
                "speedup_vs_sequential", "speedup_vs_original", "gflops", "ceiling_fraction", "peak_mem_mb",
                "speedup_vs_sequential_best", "max_members", "members_timed": {...},
                "ms_per_member_epoch_range": {...}, "batched_timing", "steady_state": {...} | null, ...}, ...], ...}

On CUDA (or with `--steady`) each cell also gets `steady_state` (`prefit.bench.steady`): one chunk's epochs timed
after a warm-up, per form (`fused_graph`, `fused_eager`, `torch_eager`, ...): `ms_per_epoch`,
`ms_per_member_epoch`, `ms_range`, `gflops`, `fraction_fp32` and `fraction_tf32` (of `ceiling_tf32_gflops`, CUDA
only), and for the fused forms `floor_ms` and `fraction_floor`: the least the epoch can take here, its products
at the measured `torch.mm` rate and its other passes' bytes at the measured copy rate (`bandwidth_gbs`). On CUDA
the batched figure is `fused_graph`'s (`batched_timing: "steady_state"`): transfers and set-up are not an epoch's.

`matmul_error`: each `train.matmul_precision`'s relative error against float64 (max |error| / max |exact|) over
square products of side min(1024, `--ceiling-size`), taken as the engine takes them; on a CPU all three are fp32
products. An engine left out with `--engines` has null figures. Bad input: one line `error: ...`, exit 2.

The modules, read top to bottom: `options` (the command line), `workload` (what is fitted, the engines as runs),
`machine` (device, ceiling, memory), `steady` (steady-state epochs), `cells` (one cell timed), `report` (the whole
run, the table, `main`); `compare` holds a benchmark against training runs.
"""

from prefit.bench.options import BenchError, Options, parse_args
from prefit.bench.report import main, run_bench

__all__ = ["BenchError", "Options", "main", "parse_args", "run_bench"]
