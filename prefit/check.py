"""The first command on a new machine: `python -m prefit.check` (or `make check`).

It says what a sweep would run here and whether to trust it: the device, the probe's verdict on the fast step
(`prefit.probe`), the step `train.kernels=auto` will use, the jobs per device, and a short timing of two cells
(2x32 and 3x128) with the batched engine against the sequential reference, with their agreement in dB. From those
rates it estimates the wall time of `make run` and of one protocol's full grid here. Exit status 1 when the engines
disagree beyond the tests' tolerance, 2 on bad input, else 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from prefit.bench.workload import make_members, smooth_targets
from prefit.choices import CIFAR_SIDE
from prefit.data.tensors import coordinate_grid
from prefit.devices import JOBS_PER_GPU, compute_modes, cuda_devices, exclusive_devices, launcher_jobs
from prefit.engine import fit_batched, fit_sequential, flops_per_member_epoch, psnr_from_loss, resolve_device
from prefit.engine.options import FitOptions
from prefit.errors import ConfigError, OneLineParser, fail
from prefit.model import SIREN
from prefit.probe import TOLERANCE_DB, choose_step, device_facts, software_versions

# The study's cell: 20 triples, each 5 fits (random; same_class and other_class: a pre-fit and the fit of A),
# 2000 epochs on 32 x 32 pixels.
MEMBER_EPOCHS_PER_CELL = 20 * 5 * 2000
RUN_CELLS = [(hls, hfs) for hls in (2, 3) for hfs in (32, 64)]  # make run
GRID_CELLS = [(hls, hfs) for hls in range(2, 9) for hfs in (32, 64, 128, 256, 512, 1024)]  # one protocol's grid
# What each timed cell fits: (members, epochs) for the batched engine and for the sequential one, per device type.
SIZES = {
    "cpu": {(2, 32): ((8, 60), (2, 30)), (3, 128): ((4, 12), (2, 6))},
    "cuda": {(2, 32): ((64, 200), (2, 40)), (3, 128): ((32, 100), (2, 20))},
}


@dataclass
class CellTiming:
    hls: int
    hfs: int
    batched_ms: float  # per member-epoch
    sequential_ms: float
    gap_db: float  # the largest PSNR gap between the engines over the members both fit


def _timed(fit, *args) -> tuple[object, float]:
    start = time.perf_counter()
    result = fit(*args)
    return result, time.perf_counter() - start


def time_cell(hls: int, hfs: int, step: str, device: torch.device) -> CellTiming:
    """Both engines on the same members and targets of one cell, each after an untimed two-epoch warm-up."""
    (members, epochs), (seq_members, seq_epochs) = SIZES[device.type][(hls, hfs)]
    coords = coordinate_grid(CIFAR_SIDE)
    params, targets = make_members(hls, hfs, members), smooth_targets(members)
    train = FitOptions(epochs=epochs, kernels=step, progress=False, snapshot_epochs=[])
    fit_batched(params, targets, coords, replace(train, epochs=2), SIREN, device)
    batched, seconds = _timed(fit_batched, params, targets, coords, train, SIREN, device)
    few = [(w[:seq_members], b[:seq_members]) for w, b in params]
    short = FitOptions(epochs=seq_epochs, progress=False, snapshot_epochs=[])
    fit_sequential(few, targets[:seq_members], coords, replace(short, epochs=2), SIREN, device)
    sequential, seq_seconds = _timed(fit_sequential, few, targets[:seq_members], coords, short, SIREN, device)
    gap = psnr_from_loss(batched.loss[:seq_members, :seq_epochs].double()) - psnr_from_loss(sequential.loss.double())
    return CellTiming(
        hls,
        hfs,
        1e3 * seconds / (members * epochs),
        1e3 * seq_seconds / (seq_members * seq_epochs),
        gap.abs().max().item(),
    )


def member_epoch_ms(timings: Sequence[CellTiming]) -> Callable[[int, int], float]:
    """ms per member-epoch of any cell, from the two timed ones: a fixed cost plus its flops at one rate (a narrow
    cell's time is overhead, a wide one's products); where the two points do not fit that, flops at the wider's rate."""
    (a, b) = sorted(timings, key=lambda t: flops_per_member_epoch(t.hls, t.hfs))[:2]
    fa, fb = flops_per_member_epoch(a.hls, a.hfs), flops_per_member_epoch(b.hls, b.hfs)
    per_flop = (b.batched_ms - a.batched_ms) / (fb - fa)
    fixed = a.batched_ms - fa * per_flop
    if per_flop <= 0 or fixed < 0:
        per_flop, fixed = b.batched_ms / fb, 0.0
    return lambda hls, hfs: fixed + per_flop * flops_per_member_epoch(hls, hfs)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m prefit.check", description=__doc__.split("\n\n")[1])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        choice = choose_step("auto", device)
    except ConfigError as error:
        return fail(error)
    facts, versions = device_facts(device), software_versions()
    cores = os.cpu_count() or 1
    gpus = cuda_devices() if device.type == "cuda" else {}
    exclusive = exclusive_devices(gpus, compute_modes()) if gpus else set()
    jobs = launcher_jobs(-1, cores, len(gpus), len(exclusive))
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    print(f"prefit check: {facts['device_name']} ({device}), {shown}\n")
    v = choice.verdict
    if v is None:
        probe = f"none ({choice.warning})" if choice.warning else "none"
    else:
        how = f"ran now in {v.seconds:.1f} s" if not v.cached else "from the cache"
        how += f"; {v.file}" if v.file else ""
        gap = f"PSNR gap {v.gap_db:.1e} dB against the torch step; " if v.gap_db is not None else ""
        probe = f"{v.step} step {'trusted' if v.ok else 'NOT trusted: ' + str(v.cause)} ({gap}{how})"
    per = f"up to {JOBS_PER_GPU} per GPU on {len(gpus)} GPU(s), 1 on exclusive-process ones" if gpus else "one per core"
    rows = [
        ("device", f"{facts['device_name']}" + (f" (UUID {facts['device_uuid']})" if facts["device_uuid"] else "")),
        ("probe", probe),
        ("auto runs", f"the {choice.step} step"),
        ("jobs", f"{jobs} side by side ({per}; hydra.launcher.n_jobs=N to change)"),
    ]
    for name, text in rows:
        print(f"{name:<11}{text}")
    print(f"\n{'cell':<7}{'batched':>16}{'sequential':>16}{'speed-up':>10}{'agreement':>14}")
    threads = torch.get_num_threads()
    if device.type == "cpu":  # as a sweep's jobs run on a CPU: one thread each, `jobs` of them side by side
        torch.set_num_threads(1)
    try:
        timings = [time_cell(hls, hfs, choice.step, device) for hls, hfs in ((2, 32), (3, 128))]
    finally:
        torch.set_num_threads(threads)
    for t in timings:
        speedup = t.sequential_ms / t.batched_ms
        print(
            f"{t.hls}x{t.hfs:<5}{t.batched_ms:>10.3f} ms/me{t.sequential_ms:>10.3f} ms/me{speedup:>9.1f}x"
            f"{t.gap_db:>11.1e} dB"
        )
    how = "one thread, as each job of a CPU sweep" if device.type == "cpu" else "one job alone"
    print(f"(ms/me: milliseconds per member-epoch, one full-batch step of one SIREN on 32 x 32 pixels; {how})")
    ms = member_epoch_ms(timings)
    # On a CPU the jobs run side by side, a core each, as timed; on a GPU the timings are of one job alone, and jobs
    # side by side overlap narrow cells, so there the estimate is an upper bound.
    bound, side_by_side = ("at most ", 1) if device.type == "cuda" else ("about ", jobs)
    for name, cells in (("make run (4 cells)", RUN_CELLS), ("one protocol's grid (42 cells)", GRID_CELLS)):
        seconds = sum(ms(*cell) for cell in cells) * MEMBER_EPOCHS_PER_CELL / 1e3 / side_by_side
        print(f"estimated wall time of {name}: {bound}{duration(seconds)}")
    print("(20 triples x 5 fits x 2000 epochs a cell; cells scaled from the two above by their flops: rough)")
    worst = max(t.gap_db for t in timings)
    if not worst < TOLERANCE_DB:
        print(f"FAIL: the engines disagree by {worst:.2g} dB (the tests accept {TOLERANCE_DB:g} dB)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
