"""Time the engines on the same members in one run: `python -m prefit.bench` (or `make bench ARGS='...'`).

Three ways of fitting the members of a study cell are timed, all on the same start weights and targets:

- `batched`: `prefit.engine.fit_batched`, the study's engine (all members, `max_members` at a time);
- `sequential`: `prefit.engine.fit_sequential`, one `nn.Module` and torch optimiser per member;
- `original`: `fit_original` (`prefit.bench.workload`), one fit at a time as the original study ran it, with its
  per-epoch PSNR computed on the host.

Every figure is per *member-epoch* (one full-batch step of one SIREN on its 32 x 32 pixels, or `--resolution`
squared), so engines may time different numbers of members: the slow ones time a few members, and on a big
cell even the batched engine times a subset (at least one full chunk), to keep the default run within minutes.
Each engine is first warmed up
(a few untimed epochs, so that one-time costs such as lazy kernel set-up and allocator growth are excluded);
that warm-up also calibrates how many members and epochs fit in `--budget` seconds. Then each engine runs
`--repeats` times, the engines taking turns, and the median counts. The machine's fp32 matrix-product rate
(`ceiling_gflops`) is measured in the same run, so `ceiling_fraction` says how much of the hardware the batched
engine uses.

Output: a table on stdout, progress on stderr, and `bench.json` (`--out`), written atomically:

    {"machine": {"device", "threads", "torch", "ceiling_gflops", "bandwidth_gbs",
                 "matmul_error": {"highest", "3xtf32", "high"}, ...},
     "cells": [{"hls", "hfs", "resolution", "members", "epochs",
                "ms_per_member_epoch": {"batched", "sequential", "original"},
                "speedup_vs_sequential", "speedup_vs_original", "gflops", "ceiling_fraction", "peak_mem_mb",
                "speedup_vs_sequential_best", "max_members", "members_timed": {...},
                "ms_per_member_epoch_range": {...}, "batched_timing", "steady_state": {...} | null, ...}, ...], ...}

On CUDA (or with `--steady`) each cell also gets `steady_state` (`prefit.bench.steady`): one chunk's epochs timed
after a warm-up, per form (`fused_graph`, `fused_eager`, `torch_eager`): `ms_per_epoch`, `ms_per_member_epoch`,
`ms_range`, `gflops`, `fraction_fp32` and `fraction_tf32` (the machine's `ceiling_tf32_gflops`, CUDA only),
and for the fused forms `floor_ms` and `fraction_floor`: the least the epoch can take here, its products at
the measured `torch.mm` rate and its other passes' bytes at the measured copy rate (`bandwidth_gbs`). On
CUDA the batched figure is `fused_graph`'s (`batched_timing: "steady_state"`): transfers and set-up are not an
epoch's cost.

`matmul_error`: each `train.matmul_precision`'s relative error against float64 (max |error| / max |exact|)
over a few square products of side min(1024, `--ceiling-size`), taken as the engine takes them; on a CPU all
three are fp32 products. An engine left out with `--engines` has null figures. Bad input: one line
`error: ...` on stderr, exit 2.

The package, read top to bottom: `options` (the command line), `workload` (what is fitted, the engines as runs),
`machine` (device, ceiling, memory), `steady` (steady-state epochs), `cells` (one cell timed), `report` (the
whole run, the table, `main`).
"""

from prefit.bench.cells import bench_cell, interleaved, log, plan, rounded, timed, warm_process
from prefit.bench.machine import SAMPLE_S, PeakMemory, measure_ceiling, memory_measure, pick_device, synchronize
from prefit.bench.options import (
    DEFAULT_CELLS,
    ENGINES,
    QUICK,
    BenchError,
    Options,
    parse_args,
    parse_cells,
    parse_engines,
)
from prefit.bench.report import format_table, main, run_bench
from prefit.bench.steady import epoch_times, format_steady, steady_state_cell
from prefit.bench.workload import SEED, W0, Run, fit_original, make_members, runner, smooth_targets
from prefit.engine import device_name

__all__ = [
    "DEFAULT_CELLS",
    "ENGINES",
    "QUICK",
    "SAMPLE_S",
    "SEED",
    "W0",
    "BenchError",
    "Options",
    "PeakMemory",
    "Run",
    "bench_cell",
    "device_name",
    "epoch_times",
    "fit_original",
    "format_steady",
    "format_table",
    "interleaved",
    "log",
    "main",
    "make_members",
    "measure_ceiling",
    "memory_measure",
    "parse_args",
    "parse_cells",
    "parse_engines",
    "pick_device",
    "plan",
    "rounded",
    "run_bench",
    "runner",
    "smooth_targets",
    "steady_state_cell",
    "synchronize",
    "timed",
    "warm_process",
]
