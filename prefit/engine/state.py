"""A fit's state as plain CPU tensors, so that a cut job resumes where it stopped, bit for bit.

A *chunk state* is what `HostChunk`, `DeviceChunk` and `FusedChunk` save between epochs and load back into their own
buffers, in place (a captured CUDA graph stays valid): `epoch` (epochs done), `params`, `exp_avg`, `exp_avg_sq` (flat
lists, W then b per layer, each [m, ...]), `adam_steps`, `powers` (the fused step's running beta1^t, beta2^t and
sqrt(1 - beta2^t), float64 [3]; absent for the other steps, which count steps), `lr`, `best` (float64 [m]),
`bad_epochs` (int64 [m]), and the records so far: `losses` (float32 [epoch, m]), `lrs` (float64 [epoch, m]),
`snaps` ([m, slots, pixels, 3]). A finished chunk keeps `epoch`, `params` and the records; one not started, `epoch` 0.

A *fit state* (what a `Saver` is given) is `{"member_epochs": done, "chunks": [[start, stop], ..], "states": [chunk
state, ..]}` for the batched engine, `{"member_epochs": .., "members_done": k, "loss", "lr", "snapshots", "params"}`
for the sequential one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

# the buffers a chunk lends to `capture` and `restore`: lists of tensors, then tensors with members first, then
# the records with epochs first
LISTS = ("params", "exp_avg", "exp_avg_sq")
PER_MEMBER = ("lr", "best", "bad_epochs", "snaps")
RECORDS = ("losses", "lrs")


class Saver(Protocol):
    """Where a fit's state goes between epochs: `due()` says when, cheaply (no device sync, called between epochs
    from every chunk's thread); `save(state)` keeps a fit state, and may end the job by raising."""

    def due(self) -> bool: ...

    def save(self, state: dict[str, Any]) -> None: ...


def host_copy(t: Tensor) -> Tensor:
    """A contiguous CPU copy of `t` that later epochs cannot change, holding no more than its own elements."""
    t = t.detach()
    return t.cpu().contiguous() if t.device.type != "cpu" else t.clone(memory_format=torch.contiguous_format)


def capture(buffers: Mapping[str, Any], epoch: int, adam_steps: int, powers: Tensor | None = None) -> dict[str, Any]:
    """A chunk state: copies of a chunk's `buffers` (named as above) after `epoch` epochs."""
    state: dict[str, Any] = {"epoch": epoch, "adam_steps": adam_steps}
    state.update({key: [host_copy(t) for t in buffers[key]] for key in LISTS})
    state.update({key: host_copy(buffers[key]) for key in PER_MEMBER})
    state.update({key: host_copy(buffers[key][:epoch]) for key in RECORDS})
    if powers is not None:
        state["powers"] = host_copy(powers)
    return state


def restore(buffers: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Copy a chunk state into a chunk's own `buffers`, in place."""
    for key in LISTS:
        copy_into(buffers[key], state[key])
    for key in PER_MEMBER:
        buffers[key].copy_(state[key])
    for key in RECORDS:
        buffers[key][: state["epoch"]].copy_(state[key])


def copy_into(targets: Iterable[Tensor], sources: Iterable[Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)


def finished(params: Iterable[Tensor], losses: Tensor, lrs: Tensor, snaps: Tensor) -> dict[str, Any]:
    """The state of a chunk whose fit is over: its final parameters and records (epochs first)."""
    return {
        "epoch": losses.shape[0],
        "params": [host_copy(t) for t in params],
        "losses": host_copy(losses),
        "lrs": host_copy(lrs),
        "snaps": host_copy(snaps),
    }


def member_slice(state: Mapping[str, Any], members: slice) -> dict[str, Any]:
    """The state of some of a chunk's members: the same epoch, their rows of everything."""
    part = dict(state)
    for key in LISTS:
        if key in state:
            part[key] = [t[members] for t in state[key]]
    for key in PER_MEMBER:
        if key in state:
            part[key] = state[key][members]
    for key in RECORDS:
        if key in state:
            part[key] = state[key][:, members]
    return part


def resumed_chunks(
    fit_state: Mapping[str, Any], members: int, max_members: int
) -> tuple[list[slice], dict[int, dict[str, Any]]]:
    """The chunks a resumed fit runs, the saved ones (a chunk larger than `max_members` now, a smaller GPU lease say,
    split into pieces), and each one's state by its position."""
    chunks, states = [], {}
    bounds = [(int(a), int(b)) for a, b in fit_state["chunks"]]
    if [a for a, _ in bounds] != [0, *(b for _, b in bounds[:-1])] or bounds[-1][1] != members:
        raise ValueError(f"a saved fit's chunks {bounds} do not cover its {members} members")
    for (a, b), state in zip(bounds, fit_state["states"], strict=True):
        step = max(1, max_members)
        for start in range(a, b, step):
            stop = min(b, start + step)
            piece = state if (start, stop) == (a, b) else member_slice(state, slice(start - a, stop - a))
            states[len(chunks)] = piece
            chunks.append(slice(start, stop))
    return chunks, states
