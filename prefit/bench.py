"""Time the engines on the same members in one run: `python -m prefit.bench` (or `make bench ARGS='...'`).

Three ways of fitting the members of a study cell are timed, all on the same start weights and targets:

- `batched`: `prefit.engine.fit_batched`, the study's engine (all members, `max_members` at a time);
- `sequential`: `prefit.engine.fit_sequential`, one `nn.Module` and torch optimiser per member;
- `original`: `fit_original` below, one fit at a time as the original study ran it, with its per-epoch PSNR
  computed on the host.

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

    {"machine": {"device", "threads", "torch", "ceiling_gflops", ...},
     "cells": [{"hls", "hfs", "resolution", "members", "epochs",
                "ms_per_member_epoch": {"batched", "sequential", "original"},
                "speedup_vs_sequential", "speedup_vs_original", "gflops", "ceiling_fraction", "peak_mem_mb",
                "speedup_vs_sequential_best", "max_members", "members_timed": {...},
                "ms_per_member_epoch_range": {...}, "batched_timing", "steady_state": {...} | null, ...}, ...], ...}

On CUDA (or with `--steady`) each cell also gets `steady_state` (`prefit.bench_epoch`): one chunk's epochs timed
after a warm-up, per form (`fused_graph`, `fused_eager`, `torch_eager`): `ms_per_epoch`, `ms_per_member_epoch`,
`ms_range`, `gflops`, `fraction_fp32` and `fraction_tf32` (the machine's `ceiling_tf32_gflops`, CUDA only). On
CUDA the batched figure is `fused_graph`'s (`batched_timing: "steady_state"`): transfers and set-up are not an
epoch's cost.

An engine left out with `--engines` has null figures. Bad input: one line `error: ...` on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import prefit
from prefit.bench_epoch import format_steady, steady_state_cell
from prefit.data import SIDE, coordinate_grid
from prefit.engine import auto_max_members, fit_batched, fit_sequential, flops_per_member_epoch
from prefit.engine.options import FitOptions
from prefit.io import write_json
from prefit.model import Params, Siren, init_params, member_params, stack_params, triple_generator
from prefit.precision import tf32

ENGINES = ("batched", "sequential", "original")
DEFAULT_CELLS = ((2, 32), (3, 128), (3, 512), (8, 1024))
W0 = 30.0
SEED = 0


class BenchError(ValueError):
    """Unusable input; reported as one line `error: ...` with exit status 2."""


# ------------------------------------------------------------------------------------------------ options


@dataclass
class Options:
    """The resolved command line. `--quick` only changes the defaults; explicit options still win."""

    device: str = "auto"
    threads: int | None = None
    cells: tuple[tuple[int, int], ...] = DEFAULT_CELLS
    resolution: int = SIDE  # pixels a side of the fitted images (the study's CIFAR: 32)
    engines: tuple[str, ...] = ENGINES
    members: int = 100  # a study cell: 20 triples x 5 fits
    subset: int = 4  # members timed by the sequential and original loops (at most)
    max_members: int | None = None  # batched chunk; None: the engine's automatic choice
    epochs: int = 30
    min_epochs: int = 5  # the budget may cut epochs down to this, never below
    repeats: int = 5
    warmup: int = 3
    budget: float = 25.0  # seconds of timed runs per engine and cell, estimated from the warm-up
    ceiling_size: int | None = None  # None: 2048 on a CPU, 4096 on a GPU
    ceilings: dict[str, float] = field(default_factory=dict)  # measured by run_bench: fp32 (and tf32 on CUDA)
    out: Path = Path("bench.json")
    steady: bool | None = None  # steady-state epoch times of one chunk (None: on CUDA only)


QUICK = {
    "members": 4,
    "subset": 1,
    "epochs": 3,
    "min_epochs": 1,
    "repeats": 1,
    "warmup": 1,
    "budget": 5.0,
    "ceiling_size": 256,
}


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
    unknown = sorted(names - set(ENGINES))
    if unknown or not names:
        raise BenchError(f"--engines: expected a subset of {','.join(ENGINES)}, got {text!r}")
    return tuple(e for e in ENGINES if e in names)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage-plus-message becomes our one line
        raise BenchError(message)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    convert.__name__ = f"positive {kind.__name__}"
    return convert


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Command line -> Options (raises BenchError on bad input)."""
    p = _Parser(prog="python -m prefit.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=_positive(int), help="torch intra-op threads (default: torch's)")
    p.add_argument("--cells", type=str, help="HLSxHFS,... (default: 2x32,3x128,3x512,8x1024)")
    p.add_argument(
        "--resolution", type=_positive(int), help="pixels a side of the fitted images (default 32, as CIFAR)"
    )
    p.add_argument("--engines", type=str, help="subset of batched,sequential,original (default: all)")
    p.add_argument("--members", type=_positive(int), help="members of a cell (default 100: 20 triples x 5 fits)")
    p.add_argument("--subset", type=_positive(int), help="members timed by sequential and original (default 4)")
    p.add_argument("--max-members", type=_positive(int), help="batched chunk (default: the engine's choice)")
    p.add_argument("--epochs", type=_positive(int), help="timed epochs per run (default 30; the budget may cut)")
    p.add_argument("--repeats", type=_positive(int), help="timed runs per engine; the median counts (default 5)")
    p.add_argument("--warmup", type=_positive(int), help="untimed epochs before timing (default 3)")
    p.add_argument("--budget", type=_positive(float), help="seconds of timed runs per engine and cell (default 25)")
    p.add_argument("--out", type=Path, help="where to write the JSON (default: ./bench.json)")
    p.add_argument("--quick", action="store_true", help="a tiny run (tests, smoke checks)")
    p.add_argument(
        "--steady",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time one chunk's steady-state epochs (prefit.bench_epoch; default: on CUDA only)",
    )
    args = p.parse_args(argv)

    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    keys = ("device", "threads", "members", "subset", "max_members", "epochs", "repeats", "warmup", "budget")
    for key in (*keys, "resolution"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.cells is not None:
        values["cells"] = parse_cells(args.cells)
    if args.engines is not None:
        values["engines"] = parse_engines(args.engines)
    if args.out is not None:
        values["out"] = args.out
    if args.steady is not None:
        values["steady"] = args.steady
    opts = Options(**values)
    opts.min_epochs = min(opts.min_epochs, opts.epochs)
    return opts


# ------------------------------------------------------------------------------------------------ machine


def pick_device(name: str) -> torch.device:
    """auto -> cuda when torch sees one, else cpu; asking for cuda without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda, but torch sees no CUDA device (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock reads the work done, not the work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_ceiling(device: torch.device, n: int, repeats: int = 5) -> float:
    """The machine's fp32 matrix-product rate in GFLOP/s: the best of a few n x n `torch.mm` (2 n^3 flops).

    The best, not the median: a ceiling is what the hardware can do; a shared machine's hiccups only lower it.
    """
    g = torch.Generator().manual_seed(SEED)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    out = torch.empty(n, n, device=device)
    torch.mm(a, b, out=out)  # warm-up: library set-up, thread pool start
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's model name, for the record."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    """The process's resident set size now (Linux /proc), or None where there is no /proc."""
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    """The process's peak RSS so far (monotonic over the whole process): the fallback without /proc."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def memory_measure(device: torch.device) -> str:
    """What `peak_mem_mb` means on this machine (recorded in bench.json)."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the timed batched runs (tensors only)"
    if _rss_bytes() is not None:
        return f"process peak RSS during the timed batched runs, sampled every {SAMPLE_S * 1e3:g} ms"
    return "process peak RSS so far (ru_maxrss) after the timed batched runs"


SAMPLE_S = 0.005


class PeakMemory:
    """Peak memory while the `with` block runs, in MB (2^20 bytes).

    CUDA: `torch.cuda.max_memory_allocated` after resetting the peak, i.e. the tensors the run held at most.
    CPU: the process's peak resident set size (all of it: Python, torch and the run's tensors), sampled every
    `interval` seconds from /proc/self/statm by a background thread (a spike shorter than that can be missed);
    `before_mb` is the RSS when the block started. Without /proc: ru_maxrss, the process's peak so far.
    """

    def __init__(self, device: torch.device, interval: float = SAMPLE_S):
        self.device, self.interval = device, interval
        self.peak_mb = self.before_mb = math.nan
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_mb = torch.cuda.memory_allocated(self.device) / 2**20
        elif (rss := _rss_bytes()) is not None:
            self.before_mb, self._peak = rss / 2**20, rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.before_mb = _max_rss_bytes() / 2**20
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, _rss_bytes() or 0) / 2**20
        else:
            self.peak_mb = _max_rss_bytes() / 2**20


# ---------------------------------------------------------------------------------------------- workload


def smooth_targets(n: int, seed: int = SEED, side: int = SIDE) -> torch.Tensor:
    """n random smooth colour images as [-1, 1] signals [n, side^2, 3] (a fixed seed; timing ignores content).

    Random 4x4 colour patches upsampled bicubically to side x side: image-like low frequencies, pixel k at grid
    point k of `coordinate_grid` (row-major).
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    images = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=True).clamp(-1, 1)
    return images.permute(0, 2, 3, 1).reshape(n, side * side, 3).contiguous()


def make_members(hls: int, hfs: int, n: int, seed: int = SEED) -> Params:
    """Start weights of n members, stacked, drawn as the study draws them (one generator per member)."""
    return stack_params([init_params(hls, hfs, W0, triple_generator(seed, i)) for i in range(n)])


def fit_original(
    params: Params, target: torch.Tensor, coords: torch.Tensor, train: FitOptions, device: torch.device
) -> list[float]:
    """One fit written the way the original study wrote it, the baseline the engines are measured against.

    An `nn.Module` SIREN, `torch.optim.Adam` and `ReduceLROnPlateau`; every epoch the prediction is copied to
    the host, mapped to [0, 1], and its PSNR (numpy MSE, 10 log10(1 / mse)) appended to a Python list. That
    per-epoch copy forces the device to finish the epoch before the next one is queued. Returns the PSNRs.
    """
    hls, hfs = len(params) - 2, params[0][0].shape[1]
    model = Siren(hls, hfs, W0).to(device).load_params(params)
    coords, target_dev = coords.to(device), target.to(device)
    truth = (target.cpu().numpy() + 1.0) / 2.0
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, betas=tuple(train.betas), eps=train.eps)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=train.plateau_factor, patience=train.plateau_patience
    )
    psnrs: list[float] = []
    for _ in range(train.epochs):
        pred = model(coords)
        loss = ((pred - target_dev) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(loss.item())  # the scheduler reads the loss on the host, as float(loss) would
        image = (pred.detach().cpu().numpy() + 1.0) / 2.0
        mse = np.mean((image - truth) ** 2)
        psnrs.append(float(10.0 * np.log10(1.0 / mse)))
    return psnrs


Run = Callable[[int, int], None]  # run(members, epochs): fit the first `members` members for `epochs` epochs


def _runner(
    engine: str, params: Params, targets: torch.Tensor, coords: torch.Tensor, device: torch.device, chunk: int
) -> Run:
    """A call `run(members, epochs)` that fits the first `members` members with `engine` for `epochs` epochs."""

    def run(members: int, epochs: int) -> None:
        train = FitOptions(epochs=epochs, progress=False)
        sub = [(w[:members], b[:members]) for w, b in params]
        if engine == "batched":
            fit_batched(sub, targets[:members], coords, train, W0, device, max_members=chunk)
        elif engine == "sequential":
            fit_sequential(sub, targets[:members], coords, train, W0, device)
        else:
            for i in range(members):
                fit_original(member_params(sub, i), targets[i], coords, train, device)

    return run


def timed(run: Run, members: int, epochs: int, device: torch.device) -> float:
    """Seconds of one call, the device synchronised before each reading of the clock."""
    synchronize(device)
    start = time.perf_counter()
    run(members, epochs)
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    runs: dict[str, Run], members: dict[str, int], epochs: int, device: torch.device, opts: Options
) -> tuple[dict[str, list[float]], list[PeakMemory]]:
    """`opts.repeats` timings of every engine, taken in turns (batched, sequential, original, batched, ...), so
    that a shared machine changing speed during the run (seen here: the same loop 1.1 or 2 ms for minutes at a
    time) slows every engine alike instead of skewing their ratios. An engine stops early once its timings took
    twice the budget, so that the whole run still ends in time. The batched runs also measure peak memory."""
    times: dict[str, list[float]] = {engine: [] for engine in runs}
    memories: list[PeakMemory] = []
    for _ in range(opts.repeats):
        for engine, run in runs.items():
            if sum(times[engine]) > 2 * opts.budget:
                continue
            if engine == "batched":
                with PeakMemory(device) as memory:
                    times[engine].append(timed(run, members[engine], epochs, device))
                memories.append(memory)
            else:
                times[engine].append(timed(run, members[engine], epochs, device))
    return times, memories


# ------------------------------------------------------------------------------------------------ a cell


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warm_process(device: torch.device, engines: Sequence[str]) -> None:
    """Run every engine once on a tiny SIREN, untimed: the process's one-time costs (autograd and optimiser
    set-up, lazy imports, thread pools) would otherwise land in the first cell's warm-up and skew its plan."""
    params, targets = make_members(1, 8, 1), smooth_targets(1)
    for engine in engines:
        _runner(engine, params, targets, coordinate_grid(SIDE), device, 1)(1, 2)


def plan(
    rates: dict[str, float], wanted: dict[str, int], least: dict[str, int], opts: Options
) -> tuple[int, dict[str, int]]:
    """Epochs and members per engine so that each engine's timed runs take about `opts.budget` seconds.

    `rates`: seconds per member-epoch seen in the warm-up (an overestimate: it holds the one-time costs).
    Members are cut first (the batched engine to whole multiples of `least`: a chunk per core), then epochs, never below
    `opts.min_epochs`; a cell too big for the budget even then overruns it rather than time nothing.
    """
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
    name = f"{hls}x{hfs}"
    side, pixels = opts.resolution, opts.resolution**2
    chunk = min(opts.max_members or auto_max_members(hls, hfs, device, pixels), opts.members)
    wanted = {"batched": opts.members, "sequential": min(opts.subset, opts.members)}
    wanted["original"] = wanted["sequential"]
    # on a CPU the engine runs chunks side by side, one per core: time at least one chunk per core
    cores = torch.get_num_threads() if device.type == "cpu" else 1
    least = {"batched": min(opts.members, chunk * cores), "sequential": 1, "original": 1}
    coords = coordinate_grid(side)
    params, targets = make_members(hls, hfs, least["batched"]), smooth_targets(least["batched"], side=side)

    rates: dict[str, float] = {}
    for engine in opts.engines:
        run = _runner(engine, params, targets, coords, device, chunk)
        seconds = timed(run, least[engine], opts.warmup, device)
        rates[engine] = seconds / (least[engine] * opts.warmup)
        log(f"[{name}] {engine}: warm-up {least[engine]} x {opts.warmup} epochs, {rates[engine] * 1e3:.3g} ms each")

    epochs, members_timed = plan(rates, wanted, least, opts)
    largest = max(members_timed.values(), default=0)
    if largest > least["batched"]:
        params, targets = make_members(hls, hfs, largest), smooth_targets(largest, side=side)

    ms: dict[str, float | None] = dict.fromkeys(ENGINES)
    repeats: dict[str, int | None] = dict.fromkeys(ENGINES)
    runs = {engine: _runner(engine, params, targets, coords, device, chunk) for engine in opts.engines}
    timing = ", ".join(f"{engine} {members_timed[engine]} members" for engine in runs)
    log(f"[{name}] timing {timing}, {epochs} epochs, {opts.repeats} turns")
    times, memories = interleaved(runs, members_timed, epochs, device, opts)
    spread: dict[str, list[float] | None] = dict.fromkeys(ENGINES)
    for engine, seconds in times.items():
        per = 1e3 / (members_timed[engine] * epochs)
        ms[engine] = statistics.median(seconds) * per
        spread[engine] = [_round(min(seconds) * per), _round(max(seconds) * per)]
        repeats[engine] = len(seconds)
    fastest = {engine: (s[0] if s else None) for engine, s in spread.items()}
    memory = max(memories, key=lambda m: m.peak_mb if not math.isnan(m.peak_mb) else -1.0, default=None)

    steady = None
    if opts.steady if opts.steady is not None else device.type == "cuda":
        n = min(chunk, opts.members)
        on_device = [(w[:n].to(device), b[:n].to(device)) for w, b in make_members(hls, hfs, n)]
        seconds = min(2.0, opts.budget / 10)
        steady = steady_state_cell(
            on_device,
            coords.to(device),
            smooth_targets(n, side=side).to(device),
            W0,
            opts.ceilings,
            seconds_per_repeat=seconds,
        )
        log(f"[{name}] steady state: " + format_steady([{"hls": hls, "hfs": hfs, "steady_state": steady}])[0])
        if device.type == "cuda":  # the figure a study sees: captured epochs, transfers and set-up outside
            ms["batched"] = steady["fused_graph"]["ms_per_member_epoch"]

    flops = flops_per_member_epoch(hls, hfs, pixels)
    gflops = flops / (ms["batched"] * 1e-3) / 1e9 if ms["batched"] else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    return {
        "hls": hls,
        "hfs": hfs,
        "resolution": side,
        "members": opts.members,
        "epochs": epochs,
        "ms_per_member_epoch": {e: _round(v) for e, v in ms.items()},
        "speedup_vs_sequential": _round(ratio(ms["sequential"], ms["batched"])),
        "speedup_vs_original": _round(ratio(ms["original"], ms["batched"])),
        # the baseline at its best: its fastest turn against the batched engine's median (a shared machine
        # slows the sequential engine's two threads now and then; this ratio does not count that in)
        "speedup_vs_sequential_best": _round(ratio(fastest["sequential"], ms["batched"])),
        "gflops": _round(gflops),
        "ceiling_fraction": _round(ratio(gflops, ceiling)),
        "peak_mem_mb": _round(memory.peak_mb) if memory else None,
        # extra fields
        "max_members": chunk,
        "members_timed": {e: members_timed.get(e) for e in ENGINES},
        "repeats": repeats,
        "ms_per_member_epoch_range": spread,  # fastest and slowest turn: how noisy the medians are
        "warmup_epochs": opts.warmup,
        "mem_before_mb": _round(memories[0].before_mb) if memories else None,
        "flops_per_member_epoch": flops,
        "batched_timing": "steady_state" if steady and device.type == "cuda" else "whole_fits",
        "steady_state": steady,
    }


def _round(x: float | None, digits: int = 4) -> float | None:
    """Four significant digits: the figures are timings, not exact numbers."""
    return None if x is None or not math.isfinite(x) else float(f"{x:.{digits}g}")


# ------------------------------------------------------------------------------------------------- report


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
        f"ceiling: {m['ceiling_gflops']:.4g} GFLOP/s fp32 ({m['ceiling_size']}^2 torch.mm) on {m['device']}"
        f" ({m['device_name']}), {m['threads']} threads, torch {m['torch']}; ms per member-epoch, medians of"
        f" {result['settings']['repeats']} turns; x seq best: the sequential engine's fastest turn over the batched"
        " median"
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
    machine = {
        "device": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ceiling_gflops": _round(ceiling),
        "ceiling_tf32_gflops": _round(opts.ceilings.get("tf32")),
        # extra fields
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "ceiling_size": opts.ceiling_size,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "peak_mem": memory_measure(device),
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


if __name__ == "__main__":
    sys.exit(main())
