"""A ledger of GPU memory shared by the jobs of one machine, so that jobs side by side never run a device out:

    with acquire(need_bytes, min_bytes, {"3a4b5c6d-…": 72e9, "9c0d1e2f-…": 72e9}) as lease:
        run on the CUDA device whose UUID is lease.device, with chunks fitting lease.granted_bytes

Devices are keyed by an opaque id, the GPU's UUID: the same for every job on the machine, whatever index
CUDA_VISIBLE_DEVICES gives it in each. A JSON file in a folder of the user's own (`ledger_dir`), rewritten atomically
under a `flock`, whose entries of dead processes are dropped (a crashed job never blocks a device). Besides the ledger:
the compute modes of the GPUs (an exclusive-process GPU takes one process at a time), whether a SLURM job owns its
GPUs alone, and how many jobs a local sweep runs at once. Only `cuda_devices` and `cuda_capacities` touch CUDA.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefit.errors import ConfigError
from prefit.io import atomic_path, holder_alive, process_start

log = logging.getLogger("prefit.devices")

LEDGER_ENV = "PREFIT_DEVICE_LEDGER"
OWN_FOLDER = f"; set ${LEDGER_ENV} to a folder of your own"  # the way out of every ledger folder error
FRACTION_ENV = "PREFIT_GPU_FRACTION"
DEFAULT_FRACTION = 0.9  # of each device's memory, for the jobs' leases
LEDGER_FILE = "ledger.json"
LOCK_FILE = "ledger.lock"
POLL_S = 2.0
GIB = 2**30
# Jobs a local sweep runs at once per GPU when hydra.launcher.n_jobs is left at -1. Narrow cells are bound by kernel
# launches and overlap well on one GPU; wide ones saturate it alone, and the ledger makes them wait rather than share.
# A choice, not yet measured on a GPU.
JOBS_PER_GPU = 3
EXCLUSIVE_MODES = ("exclusive_process", "exclusive_thread")  # compute modes that allow one process per GPU
NVML_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}


class LedgerError(ConfigError):
    """The ledger's folder cannot be used by this user; reported as one line."""


def ledger_dir(folder: str | os.PathLike | None = None) -> Path:
    """The ledger's folder: `folder`, else $PREFIT_DEVICE_LEDGER, else `default_ledger_dir()`."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get(LEDGER_ENV) or default_ledger_dir())


def default_ledger_dir() -> Path:
    """<tempdir>/prefit-devices-<uid>: a folder of the user's own, so that two users never share (nor lock each other
    out of) one ledger. Not $XDG_RUNTIME_DIR: it goes at the user's last logout (a sweep left running would lose its
    leases), and jobs started without it (cron, sudo, containers) would keep another ledger."""
    return Path(tempfile.gettempdir()) / f"prefit-devices-{os.getuid()}"


@dataclass
class Lease:
    """Bytes of one device (by id) granted to this process until `release()` (or the end of a `with` block)."""

    device: str
    granted_bytes: int
    id: str
    folder: Path
    waited_s: float = 0.0
    exclusive: bool = False  # on release the entry stays as this process's context on the device, until it exits
    released: bool = field(default=False, compare=False)

    def release(self) -> None:
        """Give the bytes back; releasing twice is harmless, and so is a ledger folder removed meanwhile."""
        if self.released or not self.folder.is_dir():
            self.released = True
            return
        with _locked(self.folder) as leases:
            if self.exclusive:
                leases[:] = [dict(e, bytes=0, context=True) if e["id"] == self.id else e for e in leases]
            else:
                leases[:] = [e for e in leases if e["id"] != self.id]
        self.released = True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    need_bytes: int,
    min_bytes: int,
    capacities: Mapping[str, int],
    *,
    exclusive: Collection[str] = (),
    folder: str | os.PathLike | None = None,
    label: str = "",
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
) -> Lease:
    """Lease `min(need_bytes, room)` bytes of the device with the most room, waiting until that is >= `min_bytes`.
    `capacities`: device id -> bytes jobs may use, in order of preference on a tie; a request beyond every device is
    cut to the largest, so none waits forever. A device in `exclusive` (exclusive-process compute mode) is leased whole
    to one process at a time, and stays with it while it lives (its CUDA context does): a process holds at most one
    such device. TimeoutError after `timeout_s` seconds of waiting (None: no limit)."""
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
    order = {d: i for i, d in enumerate(capacities)}
    started = time.monotonic()
    said = False
    me = {"pid": os.getpid(), "start": process_start(os.getpid()), "host": socket.gethostname()}
    while True:
        with _locked(folder) as leases:
            room = rooms(capacities, leases)
            held = {e["device"] for e in leases if _same_process(e, me) and (e.get("exclusive") or e.get("context"))}
            others = {e["device"] for e in leases if not _same_process(e, me)}
            fitting = [  # an exclusive device: unleased, no other process's context on it, none on another
                d
                for d in capacities
                if (
                    room[d] >= capacities[d] and d not in others and held <= {d}
                    if d in exclusive
                    else room[d] >= min_bytes
                )
            ]
            if fitting:
                device = max(fitting, key=lambda d: (room[d], -order[d]))
                whole = device in exclusive
                granted = int(capacities[device] if whole else min(need_bytes, room[device]))
                if whole:  # the lease takes over this process's context entry
                    leases[:] = [e for e in leases if not (e["device"] == device and _same_process(e, me))]
                entry = dict(id=uuid.uuid4().hex, device=device, bytes=granted, label=label, exclusive=whole, **me)
                entry["since"] = time.time()
                leases.append(entry)
                waited = round(time.monotonic() - started, 3)
                return Lease(device, granted, entry["id"], folder, waited_s=waited, exclusive=whole)
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{who}: no device had {min_bytes} bytes free within {timeout_s} s")
        if not said:
            best = max(room, key=lambda d: (room[d], -order[d]))
            log.info(
                f"{who}: waiting for {min_bytes / GIB:.2f} GiB of GPU memory (most room now "
                f"{room[best] / GIB:.2f} GiB on device {best}; ledger {folder})"
            )
            said = True
        time.sleep(poll_s)


def rooms(capacities: Mapping[str, int], leases: list[dict[str, Any]]) -> dict[str, int]:
    """Bytes left on each device: its capacity less the leases on it."""
    return {d: bytes_ - sum(e["bytes"] for e in leases if e["device"] == d) for d, bytes_ in capacities.items()}


def entries(folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The live leases in the ledger (dead processes' entries are dropped on the way)."""
    with _locked(ledger_dir(folder)) as leases:
        return [dict(e) for e in leases]


def cuda_devices(only: Sequence[int] | None = None) -> dict[str, int]:
    """UUID -> CUDA index of this process's devices (or those `only` names): the index is local to the process
    (CUDA_VISIBLE_DEVICES renumbers), the UUID is the device's name in the ledger."""
    import torch

    indices = range(torch.cuda.device_count()) if only is None else only
    return {str(torch.cuda.get_device_properties(i).uuid) or f"cuda{i}": int(i) for i in indices}


def cuda_capacities(
    fraction: float | None = None, reserve_bytes: int = 0, only: Sequence[int] | None = None
) -> dict[str, int]:
    """Bytes leases may take per CUDA device by UUID (or those `only` names): `fraction` less `reserve_bytes`, at least
    half."""
    import torch

    if fraction is None:
        text = os.environ.get(FRACTION_ENV) or str(DEFAULT_FRACTION)
        try:
            fraction = float(text)
        except ValueError:
            raise ValueError(f"${FRACTION_ENV} must be a number in (0, 1], got {text!r}") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"the GPU memory fraction must be in (0, 1], got {fraction}")
    capacities = {}
    for device, index in cuda_devices(only).items():
        usable = fraction * torch.cuda.get_device_properties(index).total_memory
        capacities[device] = int(max(usable - reserve_bytes, usable / 2))
    return capacities


def normal_uuid(text: str) -> str:
    """A GPU UUID as torch and nvidia-smi both name it: nvidia-smi's `GPU-` prefix dropped, lower case."""
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def parse_gpu_query(text: str) -> dict[str, str]:
    """{uuid: value} from `nvidia-smi --query-gpu=uuid,FIELD --format=csv,noheader` (uuids by `normal_uuid`)."""
    values = {}
    for line in text.splitlines():
        device, _, value = line.partition(",")
        if device.strip() and value.strip():
            values[normal_uuid(device)] = value.strip()
    return values


def gpu_query(field: str) -> dict[str, str] | None:
    """Each GPU's `field` (compute_mode, driver_version, ...) by UUID, as nvidia-smi reports it; None where it does
    not answer. Never raises."""
    try:
        query = ["nvidia-smi", f"--query-gpu=uuid,{field}", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (parse_gpu_query(done.stdout) or None) if done.returncode == 0 else None


def compute_modes() -> dict[str, str] | None:
    """Each GPU's compute mode by UUID (`normal_uuid`), from NVML (pynvml) or else nvidia-smi; None where neither
    answers. Never raises: a machine without either shares its GPUs as before."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            modes = {}
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetUUID(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                modes[normal_uuid(name)] = NVML_MODES.get(pynvml.nvmlDeviceGetComputeMode(handle), "Unknown")
            return modes
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, no driver, an old library: ask nvidia-smi
        return gpu_query("compute_mode")


def is_exclusive(mode: str | None) -> bool:
    """Whether a compute mode allows one process on the GPU at a time (a second one fails at context creation)."""
    return mode is not None and mode.strip().lower().replace(" ", "_") in EXCLUSIVE_MODES


def exclusive_devices(devices: Collection[str], modes: Mapping[str, str] | None) -> set[str]:
    """The devices (by UUID, in any spelling) whose compute mode is exclusive; none where the modes are unknown."""
    return {d for d in devices if is_exclusive((modes or {}).get(normal_uuid(d)))}


def owns_devices(env: Mapping[str, str], parallel_jobs: int) -> bool:
    """Whether this job has its GPUs to itself, so that the ledger steps aside: a SLURM job given its own GPUs
    (CUDA_VISIBLE_DEVICES set by the scheduler, not shared as shards or through MPS) running no job beside this one."""
    shared = env.get("SLURM_SHARDS_ON_NODE") or env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    return bool(env.get("SLURM_JOB_ID")) and bool(env.get("CUDA_VISIBLE_DEVICES")) and not shared and parallel_jobs == 1


def launcher_jobs(requested: int, cores: int, gpus: int = 0, exclusive: int = 0) -> int:
    """Jobs a local (joblib) sweep runs at once for `hydra.launcher.n_jobs=requested`. -1 means one per core without
    a GPU; with GPUs, JOBS_PER_GPU per GPU (1 per exclusive-process GPU), at most one per core, since one job per core
    would queue dozens of jobs on each GPU. Other values as joblib reads them (-2: all cores but one)."""
    if requested == 0:
        raise ValueError("n_jobs must be >= 1 or negative, not 0")
    cores = max(1, cores)
    if requested > 0:
        return requested
    if requested < -1 or gpus <= 0:
        return max(1, cores + 1 + requested)
    exclusive = min(max(0, exclusive), gpus)
    return max(1, min(cores, JOBS_PER_GPU * (gpus - exclusive) + exclusive))


@contextmanager
def _locked(folder: Path) -> Iterator[list[dict[str, Any]]]:
    """Hold the ledger's lock; yield its live leases as a list to edit in place; write it back if it changed."""
    _prepare(folder)
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError as error:
        raise LedgerError(f"device ledger {folder}: {error.strerror}{OWN_FOLDER}") from None
    try:
        with suppress(PermissionError):  # exactly 0600 whatever the umask; a lock file of another user's stays
            os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        stored = _read(folder / LEDGER_FILE)
        leases = [e for e in stored if holder_alive(e)]
        yield leases
        if leases != stored:
            _write(folder / LEDGER_FILE, {"leases": leases})
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def _prepare(folder: Path) -> None:
    """Make the folder (mode 0700: only its user reads the ledger) unless it exists; refuse another user's folder.
    The default folder is made private again if someone widened it; a folder named by the user is left as it is."""
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(folder, 0o700)
            os.chmod(folder, 0o700)  # exactly, whatever the umask
        except FileExistsError:  # made by another job meanwhile, or not a folder: the checks below tell
            pass
    default = folder == default_ledger_dir()
    if default and os.path.islink(folder):
        raise LedgerError(f"device ledger folder {folder} is a symbolic link{OWN_FOLDER}")
    info = os.stat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise LedgerError(f"device ledger folder {folder} is not a folder{OWN_FOLDER}")
    if info.st_uid != os.getuid():
        raise LedgerError(f"device ledger folder {folder} belongs to another user (uid {info.st_uid}){OWN_FOLDER}")
    if default and info.st_mode & 0o077:
        os.chmod(folder, 0o700)


def _write(path: Path, data: Any) -> None:
    """Replace the ledger atomically with a file of mode 0600."""
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


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


def _same_process(entry: Mapping[str, Any], me: Mapping[str, Any]) -> bool:
    return all(entry.get(k) == me[k] for k in ("pid", "start", "host"))
