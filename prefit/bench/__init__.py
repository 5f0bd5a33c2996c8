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
"""

from prefit.bench.options import BenchError, Options, parse_args
from prefit.bench.report import main, run_bench

__all__ = ["BenchError", "Options", "main", "parse_args", "run_bench"]
