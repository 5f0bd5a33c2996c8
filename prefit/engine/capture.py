"""Epochs captured as CUDA graphs and replayed, for any chunk whose epoch launches work without reading anything back:
the fused step's (`prefit.engine.cuda.FusedChunk`) and the plain torch step's (`prefit.engine.batched.DeviceChunk`).

A narrow cell's epoch is dozens of small kernels, so on a GPU launching them is its cost; a graph of several epochs
is launched at once. `GraphChunk.run` gives the same numbers captured or eager (`capture=False`, also on a CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from prefit.engine.common import flops_per_member_epoch, mark, seconds_between
from prefit.engine.options import FitOptions
from prefit.model import Params

# A captured graph holds enough epochs that one replay is about this many flops of work (a narrow cell's
# epoch is tens of microseconds), and never more than MAX_EPOCHS_PER_GRAPH epochs.
FLOPS_PER_REPLAY = 2e10
MAX_EPOCHS_PER_GRAPH = 50
# Progress (a read-back of the loss) at most every this many epochs.
PROGRESS_EVERY = 250

_STREAMS: dict[int, torch.cuda.Stream] = {}


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one stream this process captures on for `device` (index None: the current device), made on first use:
    torch keeps a cuBLAS workspace per stream, which `torch.cuda.empty_cache` does not free, so a stream per chunk
    would leave a workspace behind for every chunk of a job."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _STREAMS:
        _STREAMS[index] = torch.cuda.Stream(device=index)
    return _STREAMS[index]


def epochs_per_graph(params: Params, target: Tensor) -> int:
    """How many epochs of a chunk of `target.shape[0]` members one graph holds: about FLOPS_PER_REPLAY of work."""
    hls, hfs = len(params) - 2, params[0][0].shape[2]
    work = flops_per_member_epoch(hls, hfs, target.shape[1]) * target.shape[0]
    return int(max(1, min(MAX_EPOCHS_PER_GRAPH, FLOPS_PER_REPLAY // work)))


class GraphChunk:
    """A chunk's fit whose `epoch` reads nothing back and keeps nothing it allocates, its records (`losses`, `lrs`)
    written at the row of a device counter (`counter`, int64 [1]): run eagerly, or as replays of a graph of
    `epochs_per_graph` epochs with the same numbers. Subclasses set `train`, `losses`, `counter` and define `epoch`
    and `latest_loss`."""

    train: FitOptions
    losses: Tensor  # float32 [epochs, M]
    counter: Tensor  # int64 [1]: epochs done, the row of the next records

    def __init__(self, epochs_per_graph: int) -> None:
        self.epochs_per_graph = epochs_per_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_epochs = 0
        self.warm = False  # the first epoch has run (and the graph is captured)
        self.steady: tuple[object, object, int] | None = None  # (start, end, epochs) of the last run's steady epochs
        self.position = 0  # epochs of the fit done when a run paused (or a state was loaded); 0: the next run starts

    def epoch(self) -> None:
        """One epoch's launches; nothing is read back."""
        raise NotImplementedError

    def latest_loss(self) -> Tensor:
        """The losses [M] recorded by the latest epoch (for progress)."""
        raise NotImplementedError

    def rewind(self) -> None:
        """Records from row 0 again, the fit going on from where it is (a benchmark's next timed run)."""
        self.counter.zero_()

    def run(
        self,
        capture: bool,
        progress: Callable[[int, Tensor], None] | None = None,
        pause: Callable[[], bool] | None = None,
    ) -> bool:
        """The fit's epochs from `position`: graphs of `epochs_per_graph` epochs replayed, the rest eagerly. The first
        call begins with an eager epoch (compiling, making workspaces) and, with `capture`, captures the graph; the
        epochs after it are the steady ones (`steady_seconds`). `progress(epochs, loss)`: every PROGRESS_EVERY epochs,
        at the end and when pausing. `pause()` is asked after each replay or eager epoch but the first (a host call,
        no device sync); when it says so, the run stops there, `position` keeping the epoch. Whether all epochs ran."""
        epochs, done = self.train.epochs, self.position
        reported = done

        def advance(n: int) -> None:
            nonlocal done, reported
            done += n
            if progress is not None and (done - reported >= PROGRESS_EVERY or done == epochs):
                progress(done - reported, self.latest_loss())
                reported = done

        device = self.losses.device
        # Triton launches on the current device, and torch.cuda.graph's default capture stream belongs to the
        # device of a process's first capture: on a machine of several GPUs, this chunk's device must be current
        # and its capture stream its own
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            if not self.warm and epochs - done > 1:
                self._warm_up(capture)
                advance(1)
            start, first = mark(device), done
            while done < epochs and not (done > first and pause is not None and pause()):
                if capture and self.graph is not None and epochs - done >= self.graph_epochs:
                    self.graph.replay()
                    advance(self.graph_epochs)
                else:
                    self.epoch()
                    advance(1)
            # a one-epoch fit has no warm-up: its only epoch compiles, and is not a steady one
            self.steady = (start, mark(device), done - first) if self.warm else None
        if progress is not None and done > reported:
            progress(done - reported, self.latest_loss())
        self.position = 0 if done >= epochs else done
        return done >= epochs

    def _warm_up(self, capture: bool) -> None:
        """The first epoch; then, with `capture`, the graph of `epochs_per_graph` epochs (recorded, not run)."""
        self.warm = True
        if not capture:
            self.epoch()
            return
        device = self.losses.device
        current = torch.cuda.current_stream(device)
        side = capture_stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self.epoch()
        current.wait_stream(side)
        self.graph_epochs = min(self.epochs_per_graph, self.train.epochs - 1)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=side):
            for _ in range(self.graph_epochs):
                self.epoch()

    def steady_seconds(self) -> tuple[float, int]:
        """Seconds and epochs of the last run's steady epochs (0, 0 without any); waits for the device."""
        if self.steady is None or not self.steady[2]:
            return 0.0, 0
        start, end, epochs = self.steady
        return seconds_between(start, end), epochs
