"""One cell of the benchmark (`bench_cell`): warm every engine up, plan members and epochs to the budget (`plan`),
time the engines in turns (`interleaved`), and record the cell's figures for bench.json."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch

from prefit.bench.machine import PeakMemory, seconds
from prefit.bench.options import ENGINES, Options
from prefit.bench.steady import format_steady, steady_state_cell
from prefit.bench.workload import Run, make_members, runner, smooth_targets
from prefit.data import SIDE, coordinate_grid
from prefit.engine import auto_max_members, flops_per_member_epoch
from prefit.model import SIREN


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interleaved(
    runs: dict[str, Run], members: dict[str, int], epochs: int, device: torch.device, opts: Options
) -> tuple[dict[str, list[float]], list[PeakMemory]]:
    """`opts.repeats` timings per engine taken in turns (a machine changing speed slows all alike), with peak memory."""
    times: dict[str, list[float]] = {engine: [] for engine in runs}
    memories: list[PeakMemory] = []
    for _ in range(opts.repeats):
        for engine, run in runs.items():
            if sum(times[engine]) > 2 * opts.budget:
                continue
            with PeakMemory(device) if engine == "batched" else nullcontext() as memory:
                times[engine].append(seconds(device, partial(run, members[engine], epochs)))
            memories += [memory] if memory else []
    return times, memories


def warm_process(device: torch.device, engines: Sequence[str]) -> None:
    """Run every engine once on a tiny SIREN, untimed, so that one-time costs do not skew the first cell's plan."""
    params, targets = make_members(1, 8, 1), smooth_targets(1)
    for engine in engines:
        runner(engine, params, targets, coordinate_grid(SIDE), device, 1)(1, 2)


def plan(
    rates: dict[str, float], wanted: dict[str, int], least: dict[str, int], opts: Options
) -> tuple[int, dict[str, int]]:
    """Epochs and members per engine so that each engine's timed runs take about `opts.budget` seconds, from the
    warm-up's seconds per member-epoch (`rates`). Members are cut first (the batched engine's to whole multiples of
    `least`, a chunk per core), then epochs, never below `opts.min_epochs`: a cell too big overruns the budget."""
    per_epoch = {e: opts.repeats * least[e] * rates[e] for e in rates}
    epochs = opts.epochs
    if per_epoch:
        fit = math.floor(opts.budget / max(max(per_epoch.values()), 1e-12))
        epochs = max(opts.min_epochs, min(opts.epochs, fit))
    members = {}
    for e, rate in rates.items():
        n = math.floor(opts.budget / max(opts.repeats * epochs * rate, 1e-12))
        n = max(least[e], min(wanted[e], n))
        if e == "batched" and n < wanted[e]:  # whole rounds of chunks: one chunk per core, none idle
            n = max(least[e], n // least[e] * least[e])
        members[e] = n
    return epochs, members


def bench_cell(hls: int, hfs: int, opts: Options, device: torch.device, ceiling: float) -> dict[str, Any]:
    """Warm up and calibrate every engine on this cell, then time each `opts.repeats` times."""
    name, side = f"{hls}x{hfs}", opts.resolution
    chunk = min(opts.max_members or auto_max_members(hls, hfs, device, side**2), opts.members)
    subset = min(opts.subset, opts.members)
    wanted = {"batched": opts.members, "sequential": subset, "original": subset}
    # on a CPU the engine runs chunks side by side, one per core: time at least one chunk per core
    cores = torch.get_num_threads() if device.type == "cpu" else 1
    least = {"batched": min(opts.members, chunk * cores), "sequential": 1, "original": 1}
    coords = coordinate_grid(side)

    def runs(n: int) -> dict[str, Run]:
        """Every engine, ready to fit any of n members."""
        params, targets = make_members(hls, hfs, n), smooth_targets(n, side=side)
        return {engine: runner(engine, params, targets, coords, device, chunk) for engine in opts.engines}

    rates: dict[str, float] = {}
    for engine, run in runs(least["batched"]).items():
        rates[engine] = seconds(device, partial(run, least[engine], opts.warmup)) / (least[engine] * opts.warmup)
        log(f"[{name}] {engine}: warm-up {least[engine]} x {opts.warmup} epochs, {rates[engine] * 1e3:.3g} ms each")
    epochs, members = plan(rates, wanted, least, opts)
    timing = ", ".join(f"{engine} {n} members" for engine, n in members.items())
    log(f"[{name}] timing {timing}, {epochs} epochs, {opts.repeats} turns")
    times, memories = interleaved(runs(max([least["batched"], *members.values()])), members, epochs, device, opts)
    ms, spread, repeats = dict.fromkeys(ENGINES), dict.fromkeys(ENGINES), dict.fromkeys(ENGINES)
    for engine, turns in times.items():
        per = 1e3 / (members[engine] * epochs)
        ms[engine] = statistics.median(turns) * per
        spread[engine] = [rounded(min(turns) * per), rounded(max(turns) * per)]
        repeats[engine] = len(turns)
    memory = max(memories, key=lambda m: m.peak_mb if not math.isnan(m.peak_mb) else -1.0, default=None)

    steady = None
    if opts.steady if opts.steady is not None else device.type == "cuda":
        start = [(w.to(device), b.to(device)) for w, b in make_members(hls, hfs, chunk)]
        target = smooth_targets(chunk, side=side).to(device)
        steady = steady_state_cell(start, coords.to(device), target, SIREN, opts)
        log(f"[{name}] steady state: " + format_steady([{"hls": hls, "hfs": hfs, "steady_state": steady}])[0])
        if device.type == "cuda":  # the figure a study sees: captured epochs, transfers and set-up outside
            ms["batched"] = steady["fused_graph"]["ms_per_member_epoch"]

    flops = flops_per_member_epoch(hls, hfs, side**2)
    gflops = flops / (ms["batched"] * 1e-3) / 1e9 if ms["batched"] else None
    fastest_sequential = (spread["sequential"] or [None])[0]

    def ratio(a: float | None, b: float | None) -> float | None:
        return rounded(a / b) if a and b else None

    return {
        "hls": hls,
        "hfs": hfs,
        "resolution": side,
        "members": opts.members,
        "epochs": epochs,
        "ms_per_member_epoch": {e: rounded(v) for e, v in ms.items()},
        "speedup_vs_sequential": ratio(ms["sequential"], ms["batched"]),
        "speedup_vs_original": ratio(ms["original"], ms["batched"]),
        # the baseline's fastest turn against the batched median: a shared machine's hiccups not counted
        "speedup_vs_sequential_best": ratio(fastest_sequential, ms["batched"]),
        "gflops": rounded(gflops),
        "ceiling_fraction": ratio(gflops, ceiling),
        "peak_mem_mb": rounded(memory.peak_mb) if memory else None,
        # extra fields
        "max_members": chunk,
        "members_timed": {e: members.get(e) for e in ENGINES},
        "repeats": repeats,
        "ms_per_member_epoch_range": spread,  # fastest and slowest turn: how noisy the medians are
        "warmup_epochs": opts.warmup,
        "mem_before_mb": rounded(memories[0].before_mb) if memories else None,
        "flops_per_member_epoch": flops,
        "batched_timing": "steady_state" if steady and device.type == "cuda" else "whole_fits",
        "steady_state": steady,
    }


def rounded(x: float | None, digits: int = 4) -> float | None:
    """Four significant digits: the figures are timings, not exact numbers."""
    return None if x is None or not math.isfinite(x) else float(f"{x:.{digits}g}")
