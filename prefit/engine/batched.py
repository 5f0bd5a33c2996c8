"""The batched engine: a chunk's members as one model, chunks side by side on a CPU's cores, one learning rate per
member (`prefit.optim`), nothing read back in the epoch loop. On CUDA (and under Triton's interpreter) a chunk runs
through `prefit.engine.cuda`'s fused, captured loop, or with the torch step through `DeviceChunk`'s captured one;
elsewhere through `HostChunk` and `prefit.engine.steps`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from prefit import fused
from prefit.engine import state
from prefit.engine.capture import GraphChunk, epochs_per_graph
from prefit.engine.common import engine, psnr_from_loss
from prefit.engine.cuda import FusedChunk
from prefit.engine.options import FitOptions
from prefit.engine.steps import CpuStep, GenericStep, SirenStep
from prefit.errors import ConfigError
from prefit.model import Field, Params
from prefit.optim import BatchedAdam, BatchedPlateau


def resolve_kernels(name: str, device: torch.device, field: Field | None = None) -> str:
    """train.kernels -> the step that runs: for a SIREN of one head, auto is `compiled` on a CPU, `fused` on CUDA
    (where Triton is); another family runs the `generic` step, and so does a SIREN with several heads (the
    shared-encoder pre-fit), whatever step its cell's other fits run."""
    if field is not None and not is_plain_siren(field):
        if name not in ("auto", "generic") and field.family != "siren":
            raise ConfigError(f"train.kernels={name} runs SIRENs only; model={field.family} runs the generic step")
        return "generic"
    if name == "auto":
        if device.type == "cpu":
            return "compiled"
        return "fused" if fused.available(device) else "torch"
    if name == "compiled" and device.type != "cpu":
        raise ConfigError(f"train.kernels=compiled runs on a CPU only, not on {device.type}")
    if name == "fused" and (why := fused.unavailable(device)):
        raise ConfigError(f"train.kernels=fused cannot run here: {why}")
    return name


def _fit(params, targets, inputs, train, field, device, max_members, slots, result, bar, saver, resume) -> list[Params]:
    """Fit stacked members to targets [M, pixels, 3], `max_members` at a time (results do not depend on it). With a
    `saver`, the chunks running stop between epochs when a save is due, their states and the finished chunks' results
    are saved together, and the fit goes on; `resume` (a saved fit state) starts the chunks where they were."""
    kernels = resolve_kernels(train.kernels, device, field)
    if train.matmul_precision == "3xtf32" and kernels != "fused":
        raise ConfigError(f"train.matmul_precision=3xtf32 needs train.kernels=fused (the step is {kernels})")
    threads = torch.get_num_threads()
    side_by_side = device.type == "cpu" and kernels == "compiled"
    if resume is None:
        chunks, saved = _chunks(targets.shape[0], max_members, threads if side_by_side else 1), {}
    else:
        chunks, saved = state.resumed_chunks(resume, targets.shape[0], max_members)
    fit = _Chunks(params, targets, chunks, saved, (inputs, train, field, device, slots, kernels), result, bar, saver)
    while todo := fit.unfinished():
        fit.lead = todo[0]  # started in every round, so that every round makes progress
        if side_by_side and threads > 1 and len(todo) > 1:
            _on_cores(fit.run, todo, threads)
        else:
            with threadpool_limits(threads, user_api="blas"):
                for index in todo:
                    fit.run(index)
        if fit.unfinished():  # a chunk stops only when a save is due
            saver.save(fit.state())
    return fit.finals()


fit_batched = engine(_fit)


def is_plain_siren(field: Field) -> bool:
    """Whether the SIREN's hand-written steps (torch, compiled, fused) can run it: a SIREN with one head."""
    return field.family == "siren" and field.heads == 1


def _chunks(members: int, max_members: int, cores: int) -> list[slice]:
    """Equal chunks of at most max_members, a multiple of the cores where members allow: no straggler."""
    count = -(-members // max_members)
    if count > 1 or members >= cores:
        count = min(members, -(-count // cores) * cores)
    bounds = [round(i * members / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _on_cores(run: Callable[[int], None], chunks: list[int], threads: int) -> None:
    """Independent chunks side by side, a core and single-threaded ops each: no syncs, caches kept, the same numbers."""
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(min(threads, len(chunks))) as pool:
            list(pool.map(run, chunks))
    finally:
        torch.set_num_threads(threads)


class HostChunk:
    """A chunk's fit through the host-driven loop (`prefit.engine.steps`, `prefit.optim`), as `FusedChunk` runs one."""

    device_step = False  # Adam's step count on the device (`DeviceChunk`)

    def __init__(
        self, params: Params, inputs: Tensor, target: Tensor, train: FitOptions, field: Field, slots: dict, kernels: str
    ):
        members, device = target.shape[0], target.device
        self.train, self.slots = train, slots
        if kernels == "generic":
            compile = train.compile_generic and device.type == "cpu"
            self.step = GenericStep(params, inputs, target, field, compile)
        else:
            kind = CpuStep if kernels == "compiled" and device.type == "cpu" else SirenStep
            self.step = kind(params, inputs, target, field.w0)
        self.lr = torch.full((members,), train.lr, dtype=torch.float64, device=device)
        flat = [t for pair in self.step.params for t in pair]
        betas = tuple(train.betas)
        self.adam = BatchedAdam(flat, self.lr, betas=betas, eps=train.eps, device_step=self.device_step)
        self.plateau = BatchedPlateau(self.lr, train.plateau_factor, train.plateau_patience, train.plateau_threshold)
        self.losses = torch.empty(train.epochs, members, device=device)
        self.lrs = torch.empty(train.epochs, members, dtype=torch.float64, device=device)
        self.snaps = torch.empty(members, len(slots), *target.shape[1:], device=device)
        self.position = 0  # epochs of the fit done when a run paused (or a state was loaded)

    def run(
        self,
        capture: bool = False,
        progress: Callable[[int, Tensor], None] | None = None,
        pause: Callable[[], bool] | None = None,
    ) -> bool:
        """The fit's epochs from `position` (nothing to capture); `progress(epochs, loss)` every twentieth of them, at
        the end and when pausing. `pause()` is asked after each epoch but the first; when it says so, the run stops
        there, `position` keeping the epoch. Whether all epochs ran."""
        epochs, every = self.train.epochs, max(1, self.train.epochs // 20)
        done = reported = self.position
        loss = None
        while done < epochs and not (done > self.position and pause is not None and pause()):
            loss, pred, grads = self.step()
            self.losses[done] = loss
            self.lrs[done] = self.lr
            if (slot := self.slots.get(done)) is not None:
                self.snaps[:, slot] = pred
            self.adam.step([g for pair in grads for g in pair])
            self.plateau.step(loss)
            done += 1
            if progress is not None and (done - reported >= every or done == epochs):
                progress(done - reported, loss)
                reported = done
        if progress is not None and done > reported:
            progress(done - reported, loss)
        self.position = 0 if done >= epochs else done
        return done >= epochs

    def steady_seconds(self) -> tuple[float, int]:
        return 0.0, 0  # only the CUDA engine times its steady epochs

    def buffers(self) -> dict[str, Any]:
        """The chunk's own state tensors, named as in a chunk state (`prefit.engine.state`)."""
        return {
            "params": [t for pair in self.step.params for t in pair],
            "exp_avg": self.adam.exp_avg,
            "exp_avg_sq": self.adam.exp_avg_sq,
            "lr": self.lr,
            "best": self.plateau.best,
            "bad_epochs": self.plateau.bad_epochs,
            "snaps": self.snaps,
            "losses": self.losses,
            "lrs": self.lrs,
        }

    def save_state(self) -> dict[str, Any]:
        """A chunk state of the fit so far (CPU copies)."""
        return state.capture(self.buffers(), self.position, self.adam.step_count)

    def load_state(self, saved: dict[str, Any]) -> None:
        """Go on from a chunk state: copied into the chunk's own buffers, in place."""
        state.restore(self.buffers(), saved)
        self.adam.step_count = int(saved["adam_steps"])
        self.position = int(saved["epoch"])


class DeviceChunk(GraphChunk, HostChunk):
    """`HostChunk`'s torch step with every per-epoch state on the device, so that its epochs can be captured as
    `FusedChunk`'s are (`GraphChunk`): the epoch counter, Adam's step count, the records written at the counter's
    row, the snapshot slot looked up in a device table. A plain torch epoch is dozens of small launches; captured,
    a 2 x 32 epoch of 100 members took 0.54 ms instead of 1.80 (H100). The numbers are `HostChunk`'s with the
    multi-tensor Adam."""

    device_step = True

    def __init__(
        self, params: Params, coords: Tensor, target: Tensor, train: FitOptions, field: Field, slots: dict[int, int]
    ):
        HostChunk.__init__(self, params, coords, target, train, field, slots, "torch")
        GraphChunk.__init__(self, epochs_per_graph(params, target))
        device = target.device
        self.counter = torch.zeros(1, dtype=torch.int64, device=device)
        self.row = torch.zeros(1, dtype=torch.int64, device=device)  # where the latest epoch's records went
        table = torch.full((train.epochs + 1,), -1, dtype=torch.int64)  # epoch -> slot, -1: none (and past the end)
        for epoch, slot in slots.items():
            table[epoch] = slot
        self.table = table.to(device)

    def epoch(self) -> None:
        """HostChunk's epoch at the device counter's row; nothing is read back. A run past `epochs` epochs (without
        `rewind`) writes the last row again and no snapshot, as `FusedChunk` does."""
        loss, pred, grads = self.step()
        torch.clamp(self.counter, max=self.train.epochs - 1, out=self.row)
        self.losses.index_copy_(0, self.row, loss.unsqueeze(0))
        self.lrs.index_copy_(0, self.row, self.lr.unsqueeze(0))
        if self.slots:
            slot = self.table.index_select(0, self.counter.clamp(max=self.train.epochs))
            at = slot.clamp(min=0)
            kept = self.snaps.index_select(1, at)
            self.snaps.index_copy_(1, at, torch.where(slot >= 0, pred.unsqueeze(1), kept))
        self.adam.step([g for pair in grads for g in pair])
        self.plateau.step(loss)
        self.counter.add_(1)

    def latest_loss(self) -> Tensor:
        return self.losses.index_select(0, self.row)[0]

    def save_state(self) -> dict[str, Any]:
        return state.capture(self.buffers(), self.position, int(self.adam.steps.item()))

    def load_state(self, saved: dict[str, Any]) -> None:
        """Go on from a chunk state, in place: a captured graph replays on the same buffers."""
        state.restore(self.buffers(), saved)
        epoch = int(saved["epoch"])
        self.adam.steps.fill_(float(saved["adam_steps"]))
        self.counter.fill_(epoch)
        self.row.fill_(max(0, epoch - 1))
        self.position = epoch


class _Chunks:
    """The chunks of one fit: each made when it starts (from its saved state on a resume), run until it ends or a save
    is due, and kept while it pauses; a finished chunk's records go into `result` and its runner away. A chunk not
    started yet waits while a save is due, unless it leads the round. On CUDA `FusedChunk` or, with the torch step,
    `DeviceChunk` (both captured with train.cuda_graphs); elsewhere `HostChunk`."""

    def __init__(self, params, targets, chunks, saved, setup, result, bar, saver: state.Saver | None):
        self.params, self.targets, self.chunks, self.saved = params, targets, chunks, saved
        self.inputs, self.train, self.field, self.device, self.slots, self.kernels = setup
        self.result, self.bar = result, bar
        self.due = saver.due if saver is not None else None
        self.live: dict[int, HostChunk | FusedChunk] = {}
        self.final: dict[int, Params] = {}
        self.lead = 0
        for index, saved_state in list(saved.items()):
            chunk = chunks[index]
            self.bar.update(int(saved_state["epoch"]) * (chunk.stop - chunk.start))
            if saved_state["epoch"] in (0, self.train.epochs):  # not started: nothing to load; finished: no runner
                del saved[index]
            if saved_state["epoch"] == self.train.epochs:
                params = saved_state["params"]
                pairs = [(params[k], params[k + 1]) for k in range(0, len(params), 2)]
                self._finish(index, pairs, saved_state["losses"], saved_state["lrs"], saved_state["snaps"])

    def unfinished(self) -> list[int]:
        return [index for index in range(len(self.chunks)) if index not in self.final]

    def run(self, index: int) -> None:
        runner = self.live.get(index)
        if runner is None:
            if index != self.lead and self.due is not None and self.due():
                return
            runner = self._start(index)
        members = self.chunks[index].stop - self.chunks[index].start

        def progress(epochs: int, loss: Tensor) -> None:
            self.bar.update(epochs * members)
            if self.bar.disable is False:
                self.bar.set_postfix(members=members, psnr=f"{psnr_from_loss(loss).nanmean().item():.1f}")

        capture = self.device.type == "cuda" and self.train.cuda_graphs
        finished = runner.run(capture=capture, progress=progress, pause=self.due)
        seconds, epochs = runner.steady_seconds()
        self.result.steady_s += seconds
        self.result.steady_member_epochs += epochs * members
        if finished:
            self.live.pop(index, None)
            self._finish(index, runner.step.params, runner.losses, runner.lrs, runner.snaps)
        else:
            self.live[index] = runner

    def _start(self, index: int) -> HostChunk | FusedChunk:
        chunk, device = self.chunks[index], self.device
        target = self.targets[chunk].to(device)
        start = [(w[chunk].to(device), b[chunk].to(device)) for w, b in self.params]
        if self.kernels == "fused":
            runner = FusedChunk(start, self.inputs, target, self.train, self.field.w0, self.slots)
        elif self.kernels == "torch" and device.type == "cuda":
            runner = DeviceChunk(start, self.inputs, target, self.train, self.field, self.slots)
        else:
            runner = HostChunk(start, self.inputs, target, self.train, self.field, self.slots, self.kernels)
        del start  # copied into the runner's own buffers
        if index in self.saved:
            runner.load_state(self.saved.pop(index))
        return runner

    def _finish(self, index: int, params: Params, losses: Tensor, lrs: Tensor, snaps: Tensor) -> None:
        chunk = self.chunks[index]
        self.result.loss[chunk] = losses.T.cpu()
        self.result.lr[chunk] = lrs.T.cpu()
        if self.slots:
            self.result.snapshots[chunk] = snaps[:, : len(self.slots)].cpu()
        self.final[index] = [(w.cpu().clone(), b.cpu().clone()) for w, b in params]

    def state(self) -> dict[str, Any]:
        """The fit state (`prefit.engine.state`): every chunk's, finished, paused, loaded but not started, or none."""
        states = []
        for index, chunk in enumerate(self.chunks):
            if index in self.final:
                params = [t for pair in self.final[index] for t in pair]
                rows = (self.result.loss[chunk].T, self.result.lr[chunk].T, self.result.snapshots[chunk])
                states.append(state.finished(params, *rows))
            elif index in self.live:
                states.append(self.live[index].save_state())
            else:
                states.append(self.saved.get(index, {"epoch": 0}))
        done = sum(s["epoch"] * (c.stop - c.start) for s, c in zip(states, self.chunks))
        return {"member_epochs": done, "chunks": [[c.start, c.stop] for c in self.chunks], "states": states}

    def finals(self) -> list[Params]:
        return [self.final[index] for index in range(len(self.chunks))]
