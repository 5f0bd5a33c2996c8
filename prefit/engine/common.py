"""What both engines share: the frame around their loops (`engine`), the result record, devices and chunk sizes,
snapshots, FLOP count."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prefit.engine.options import FitOptions
from prefit.engine.state import Saver
from prefit.errors import ConfigError
from prefit.model import Field, Params, n_weights


@dataclass
class FitResult:
    """What a stage of fits leaves behind (all on the CPU)."""

    loss: torch.Tensor  # float32 [M, epochs]
    lr: torch.Tensor  # float64 [M, epochs]
    snapshots: torch.Tensor  # float32 [M, len(snapshot_epochs), pixels, 3]
    params: Params  # stacked final parameters
    # CUDA's steady epochs (after compilation and capture), summed over chunks: held against prefit.bench's
    steady_s: float = 0.0
    steady_member_epochs: int = 0


def psnr_from_loss(loss: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of an image in [0, 1] (data range 1) from the MSE in the [-1, 1] scale: 10 log10(4 / loss)."""
    return 10.0 * torch.log10(4.0 / loss)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu. Asking for cuda without one is an error, not a silent cpu run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but torch sees no CUDA device (use train.device=auto or cpu)")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's or the CPU's model name, for records and reports (`NVIDIA H100 80GB HBM3`, `AMD EPYC 9B14`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mark(device: torch.device) -> float | torch.cuda.Event:
    """A point in the device's time: a recorded CUDA event (nothing waits for it), or the host's clock."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def seconds_between(start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
    """Seconds from one `mark` to a later one (on CUDA, after waiting for the second)."""
    if isinstance(start, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def cuda_bytes_per_member(hls: int, hfs: int, pixels: int = 1024, fit: FitOptions | None = None) -> int:
    """Bytes one member of a chunk holds on CUDA with `fit` (None: the defaults), a quarter more for the allocator."""
    fit = fit or FitOptions()
    split = fit.matmul_precision == "3xtf32"
    copies = 5 + (2 if split else 0)
    activations = (2 * (hls + 1) + 2 + (hls + 1 + 3 if split else 0)) * pixels * hfs
    images = (2 + 3 * 3 + 3 * len(fit.snapshot_epochs) + (10 if split else 0)) * pixels
    return int(1.25 * (4 * (copies * n_weights(hls, hfs) + activations + images) + 12 * fit.epochs))


def auto_max_members(
    hls: int,
    hfs: int,
    device: torch.device,
    pixels: int = 1024,
    budget_bytes: int | None = None,
    fit: FitOptions | None = None,
) -> int:
    """How many members to fit at once when train.max_members is null (`fit` None: the default options): on a CPU
    about 64 MB a chunk (the step works member after member); on CUDA `budget_bytes` (else half the free memory) over
    `cuda_bytes_per_member`."""
    if device.type == "cuda":
        if budget_bytes is None:
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 2
        return max(1, int(budget_bytes // cuda_bytes_per_member(hls, hfs, pixels, fit)))
    return max(1, int(64 * 2**20 // (16 * n_weights(hls, hfs) + 2 * 12 * pixels)))


def snapshot_index(epochs: int, snapshot_epochs: Sequence[int]) -> dict[int, int]:
    """Snapshot epoch -> its slot; -1 means the last epoch; out-of-range epochs are dropped."""
    resolved = sorted({epochs - 1 if e == -1 else e for e in snapshot_epochs if -1 <= e < epochs})
    return {e: k for k, e in enumerate(resolved)}


def snapshot_epochs_resolved(epochs: int, snapshot_epochs: Sequence[int]) -> list[int]:
    return list(snapshot_index(epochs, snapshot_epochs))


def flops_per_member_epoch(hls: int, hfs: int, pixels: int = 1024, inputs: int = 2) -> float:
    """The study's work unit: 6 x pixels x weights (forward 2, backward 4 flops per weight and pixel); `inputs`: the
    width the first layer reads (2 coordinates, or a Fourier-feature network's features)."""
    return 6.0 * pixels * n_weights(hls, hfs, inputs)


# loop(params, targets, inputs, train, field, device, max_members, slots, result, bar, saver, resume)
#   -> each chunk's final parameters
Loop = Callable[..., list[Params]]


def engine(loop: Loop) -> Callable[..., FitResult]:
    """An engine, `fit(params, targets, coords, train, field, device, max_members, desc, saver, resume)`: `loop` in
    the frame both share (the result, whose losses, rates and snapshots `loop` writes, snapshot slots, progress bar;
    the coordinates encoded once as `field` says, into the inputs its first layer reads).
    `saver` (`prefit.engine.state.Saver`) is given the fit's state when it says a save is due; `resume`, a state it
    was given, starts the fit from there."""

    def fit(
        params: Params,
        targets: torch.Tensor,
        coords: torch.Tensor,
        train: FitOptions,
        field: Field,
        device: torch.device,
        max_members: int | None = None,
        desc: str = "fit",
        saver: Saver | None = None,
        resume: dict[str, Any] | None = None,
    ) -> FitResult:
        members, pixels = targets.shape[0], targets.shape[1]
        slots = snapshot_index(train.epochs, train.snapshot_epochs)
        result = FitResult(
            loss=torch.empty(members, train.epochs, dtype=torch.float32),
            lr=torch.empty(members, train.epochs, dtype=torch.float64),
            snapshots=torch.empty(members, len(slots), pixels, targets.shape[2], dtype=torch.float32),
            params=[],
        )
        style = dict(unit="member-epoch", unit_scale=True, dynamic_ncols=True, leave=False, mininterval=0.5)
        with tqdm(total=members * train.epochs, desc=desc, disable=not train.progress, **style) as bar:
            args = (field.encode(coords).to(device), train, field, device, max_members or members, slots, result, bar)
            final = loop(params, targets, *args, saver, resume)
        result.params = [tuple(torch.cat([p[k][i] for p in final]) for i in (0, 1)) for k in range(len(params))]
        return result

    fit.__module__, fit.__doc__ = loop.__module__, loop.__doc__
    return fit
