"""The machine the benchmark runs on: which device, its fp32 matrix-product ceiling, its memory's copy rate,
its products' errors, its name, and how much memory a run takes (`PeakMemory`)."""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from prefit.bench.options import BenchError
from prefit.bench.workload import SEED
from prefit.choices import MatmulPrecision
from prefit.engine import resolve_device
from prefit.engine.common import mark, seconds_between
from prefit.errors import ConfigError
from prefit.precision import product


def pick_device(name: str) -> torch.device:
    """auto -> cuda when torch sees one, else cpu (`prefit.engine.resolve_device`); cuda without one is an error."""
    try:
        return resolve_device(name)
    except ConfigError:
        raise BenchError("--device cuda, but torch sees no CUDA device (use --device auto or cpu)") from None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock reads the work done, not the work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds one call of `work` takes after the device's queued work: CUDA events around it, else the host's clock."""
    synchronize(device)
    start = mark(device)
    work()
    return seconds_between(start, mark(device))


def best_seconds(device: torch.device, work: Callable[[], object], repeats: int = 5) -> float:
    """The shortest of `repeats` calls of `work` after an untimed one: a ceiling is what the hardware can do."""
    work()
    return min(seconds(device, work) for _ in range(repeats))


def measure_ceiling(device: torch.device, n: int, repeats: int = 5) -> float:
    """The machine's matrix-product rate in GFLOP/s: the best of a few n x n `torch.mm` (2 n^3 flops)."""
    g = torch.Generator().manual_seed(SEED)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    out = torch.empty(n, n, device=device)
    return 2.0 * n**3 / best_seconds(device, lambda: torch.mm(a, b, out=out), repeats) / 1e9


def measure_bandwidth(device: torch.device, mib: int, repeats: int = 5) -> float:
    """GB/s (bytes read plus written) of the best of a few large copies: the most the fused passes can reach."""
    src = torch.ones(mib * 2**18, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(device, lambda: dst.copy_(src), repeats) / 1e9


def matmul_errors(device: torch.device, side: int, batch: int = 4) -> dict[str, float]:
    """Each `train.matmul_precision`'s max relative error against float64 here, over `batch` side x side products."""
    g = torch.Generator().manual_seed(SEED)
    a, b = (torch.randn(batch, side, side, generator=g, dtype=torch.float64) for _ in range(2))
    exact = torch.bmm(a, b)
    scale = exact.abs().max().item()
    a32, b32 = a.float().to(device), b.float().to(device)
    errors = {}
    for precision in (m.value for m in MatmulPrecision):
        out = product(torch.empty(batch, side, side, device=device), a32, b32, 1.0, precision)
        errors[precision] = (out.cpu().double() - exact).abs().max().item() / scale
    return errors


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
    """Peak MB while the block runs (CUDA: allocated; CPU: resident set sampled every `interval` s), and `before_mb`."""

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
