"""A ledger of GPU memory shared by the jobs of one machine, so that jobs side by side never run a device out:

    with acquire(need_bytes, min_bytes, {0: 72e9, 1: 72e9}) as lease:
        run on torch.device("cuda", lease.device) with chunks fitting lease.granted_bytes

A JSON file (in `<tempdir>/prefit-devices` or `$PREFIT_DEVICE_LEDGER`) rewritten atomically under a `flock`, whose
entries of dead processes are dropped (a crashed job never blocks a device). It knows nothing of CUDA.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefit.io import write_json

log = logging.getLogger("prefit.devices")

LEDGER_ENV = "PREFIT_DEVICE_LEDGER"
FRACTION_ENV = "PREFIT_GPU_FRACTION"
DEFAULT_FRACTION = 0.9  # of each device's memory, for the jobs' leases
LEDGER_FILE = "ledger.json"
LOCK_FILE = "ledger.lock"
POLL_S = 2.0
GIB = 2**30


def ledger_dir(folder: str | os.PathLike | None = None) -> Path:
    """The ledger's folder: `folder`, else $PREFIT_DEVICE_LEDGER, else `<tempdir>/prefit-devices` (per machine)."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get(LEDGER_ENV) or Path(tempfile.gettempdir()) / "prefit-devices")


@dataclass
class Lease:
    """Bytes of one device granted to this process until `release()` (or the end of a `with` block)."""

    device: int
    granted_bytes: int
    id: str
    folder: Path
    waited_s: float = 0.0
    released: bool = field(default=False, compare=False)

    def release(self) -> None:
        """Give the bytes back; releasing twice is harmless."""
        if self.released:
            return
        with _locked(self.folder) as leases:
            leases[:] = [e for e in leases if e["id"] != self.id]
        self.released = True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    need_bytes: int,
    min_bytes: int,
    capacities: Mapping[int, int],
    *,
    folder: str | os.PathLike | None = None,
    label: str = "",
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
) -> Lease:
    """Lease `min(need_bytes, room)` bytes of the device with the most room, waiting until that is >= `min_bytes`.
    `capacities`: device -> bytes jobs may use; a request beyond every device is cut to the largest, so none waits
    forever. TimeoutError after `timeout_s` seconds of waiting (None: no limit)."""
    if not capacities:
        raise ValueError("no devices to lease from")
    largest = max(capacities.values())
    who = label or "job"
    if min_bytes > largest:
        log.warning(
            f"{who}: needs {min_bytes / GIB:.1f} GiB at least, more than any device offers "
            f"({largest / GIB:.1f} GiB); waits for a whole device"
        )
    min_bytes = max(0, min(min_bytes, largest))
    need_bytes = max(min_bytes, min(need_bytes, largest))
    folder = ledger_dir(folder)
    started = time.monotonic()
    said = False
    me = {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}
    while True:
        with _locked(folder) as leases:
            room = rooms(capacities, leases)
            device = max(room, key=lambda d: (room[d], -d))  # the most room; the lowest index on a tie
            if room[device] >= min_bytes:
                granted = int(min(need_bytes, room[device]))
                entry = dict(id=uuid.uuid4().hex, device=device, bytes=granted, label=label, since=time.time(), **me)
                leases.append(entry)
                return Lease(device, granted, entry["id"], folder, waited_s=round(time.monotonic() - started, 3))
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{who}: no device had {min_bytes} bytes free within {timeout_s} s")
        if not said:
            log.info(
                f"{who}: waiting for {min_bytes / GIB:.2f} GiB of GPU memory (most room now "
                f"{room[device] / GIB:.2f} GiB on device {device}; ledger {folder})"
            )
            said = True
        time.sleep(poll_s)


def cuda_capacities(
    fraction: float | None = None, reserve_bytes: int = 0, only: Sequence[int] | None = None
) -> dict[int, int]:
    """Bytes leases may take per CUDA device (or those `only` names): `fraction` less `reserve_bytes`, at least half."""
    import torch

    if fraction is None:
        text = os.environ.get(FRACTION_ENV) or str(DEFAULT_FRACTION)
        try:
            fraction = float(text)
        except ValueError:
            raise ValueError(f"${FRACTION_ENV} must be a number in (0, 1], got {text!r}") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"the GPU memory fraction must be in (0, 1], got {fraction}")
    indices = range(torch.cuda.device_count()) if only is None else only
    capacities = {}
    for index in indices:
        usable = fraction * torch.cuda.get_device_properties(index).total_memory
        capacities[int(index)] = int(max(usable - reserve_bytes, usable / 2))
    return capacities


def rooms(capacities: Mapping[int, int], leases: list[dict[str, Any]]) -> dict[int, int]:
    """Bytes left on each device: its capacity less the leases on it."""
    return {d: bytes_ - sum(e["bytes"] for e in leases if e["device"] == d) for d, bytes_ in capacities.items()}


def entries(folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The live leases in the ledger (dead processes' entries are dropped on the way)."""
    with _locked(ledger_dir(folder)) as leases:
        return [dict(e) for e in leases]


@contextmanager
def _locked(folder: Path) -> Iterator[list[dict[str, Any]]]:
    """Hold the ledger's lock; yield its live leases as a list to edit in place; write it back if it changed."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        stored = _read(folder / LEDGER_FILE)
        leases = [e for e in stored if _alive(e)]
        yield leases
        if leases != stored:
            write_json(folder / LEDGER_FILE, {"leases": leases})
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:  # writes are atomic, so this is someone else's file: start afresh
        log.warning("device ledger %s unreadable (%s); starting an empty one", path, error)
        return []
    leases = data.get("leases", []) if isinstance(data, dict) else []
    return [e for e in leases if isinstance(e, dict) and {"id", "device", "bytes", "pid"} <= e.keys()]


def _alive(entry: dict[str, Any]) -> bool:
    """Whether the process that took a lease still runs (entries of other hosts are trusted)."""
    if entry.get("host") not in (None, socket.gethostname()):
        return True
    pid = entry["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    start = entry.get("start")
    return start is None or _start_time(pid) in (None, start)  # a reused pid has another start time


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux); None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None
