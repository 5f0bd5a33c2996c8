"""The Hydra app: one job fits one (hls, hfs) cell and writes its trajectories.

    python -m prefit.train                                   # one cell (conf/config.yaml defaults)
    python -m prefit.train -m model.hls=2,3 model.hfs=32,64  # a sweep, one job per cell (joblib launcher)

A job builds the plan of fits (`prefit.schemes`), runs it (`prefit.cell`) and writes `psnr.parquet`, `recon.npz` and
`run.json` atomically (docs/formats.md); one whose results exist for the same study is skipped, so a rerun resumes a
sweep, and a cell cut midway resumes from its checkpoint (`prefit.checkpoint`). Bad input ends in one line on stderr
(`error: ...`) and exit status 2; a job stopped by SIGTERM, SIGUSR1 or SIGUSR2 saves its cell's progress, says so in
one line and exits with 128 + the signal's number.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefit import records
from prefit.cell import run_plan
from prefit.checkpoint import CHECKPOINT_FILE, CellCheckpoint, Interrupted
from prefit.config import Config, ConfigError, register, study_config, validate
from prefit.data import DataError, draw_triples, load_images
from prefit.devices import (
    JOBS_PER_GPU,
    acquire,
    compute_modes,
    cuda_capacities,
    cuda_devices,
    exclusive_devices,
    is_exclusive,
    launcher_jobs,
    owns_devices,
)
from prefit.engine import auto_max_members, cuda_bytes_per_member, resolve_device
from prefit.errors import one_line
from prefit.io import atomic_path
from prefit.model import n_weights
from prefit.probe import StepChoice, choose_step, device_facts, software_versions
from prefit.schema import PSNR_FILE, RECON_FILE, write_psnr
from prefit.schemes import build_plan

log = logging.getLogger("prefit.train")
register()

# What a job holds on a CUDA device besides its members (context, cuBLAS workspace), leased or not: reserved on
# every device for every job of the sweep, since a worker keeps its context between jobs.
CUDA_CONTEXT_BYTES = 512 * 2**20
# A job sharing a device starts once this many of its members (or all, if fewer) fit beside the others.
MIN_CHUNK = 8


def run(cfg: Config, out: Path, parallel_jobs: int = 1) -> dict[str, Any]:
    """Run one cell into folder `out`; return what run.json records."""
    validate(cfg)
    cell = {"hls": cfg.model.hls, "hfs": cfg.model.hfs}
    study = study_config(cfg)
    if records.job_action(out, study, cfg.train.overwrite) == "skip":
        log.info("%s: complete result already in %s, skipped (train.overwrite=true reruns it)", cell, out)
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # left by a job stopped after its record: of no more use
        return {"status": "skipped", "cell": cell}
    with records.hold_cell(out, study, overwrite=cfg.train.overwrite) as claim:
        if not claim.held:  # another job computes the cell, or completed it meanwhile: hold_cell said so
            return {"status": "skipped", "cell": cell, "reason": claim.reason}
        return _run_held(cfg, out, parallel_jobs, cell, study)


def _run_held(cfg: Config, out: Path, parallel_jobs: int, cell: dict[str, int], study: dict[str, Any]) -> dict:
    """Fit the cell whose folder this job holds (`records.hold_cell`) and write its files, run.json last."""
    started = time.time()
    started_at = datetime.fromtimestamp(started, timezone.utc).isoformat()
    # the cores divided among the jobs running side by side, unless train.threads says otherwise
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // max(1, parallel_jobs))
    torch.set_num_threads(threads)
    device = resolve_device(cfg.train.device)
    # torch knows highest and high; 3xtf32 is the engine's own products (prefit.precision), fp32 everywhere else
    torch.set_float32_matmul_precision("high" if cfg.train.matmul_precision == "high" else "highest")
    check_memory(cfg, device)
    data = load_images(cfg.dataset)
    triples = draw_triples(data.labels, cfg.dataset.n_triples, cfg.seed)
    plan = build_plan(cfg, data, triples)
    checkpoint = CellCheckpoint(out / CHECKPOINT_FILE, study, cfg.train.checkpoint_minutes)
    with device_share(cfg, device, len(plan.members), parallel_jobs) as (device, max_members, lease):
        choice = _choose_step(cfg, device)
        log.info(
            f"{cell}: {len(plan.members)} members, {len(triples)} triples, schemes {cfg.scheme.selected()}, protocol "
            f"{cfg.protocol.name}, engine {cfg.train.engine} ({choice.step} step) on {device} ({threads} threads, "
            f"{max_members} at once)"
        )
        run_cfg = replace(cfg, train=replace(cfg.train, kernels=choice.step))
        with stop_on_signals(checkpoint, cfg.train.checkpoint_minutes > 0):
            result = run_plan(run_cfg, plan, device, max_members, checkpoint)

    out.mkdir(parents=True, exist_ok=True)
    records.claim(out, study, started_at)  # from here on, the folder is this study's
    with atomic_path(out / PSNR_FILE) as tmp:
        write_psnr(result.rows, tmp)
    with atomic_path(out / RECON_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **result.recon)
    record = {
        "cell": cell,
        "members": result.members,
        "fits": result.fits,
        "triples": len(triples),
        "resolution": plan.side,
        "wall_s": round(time.time() - started, 3),
        "device": str(device),
        **device_facts(device),
        "step": choice.step,
        "matmul_precision": str(cfg.train.matmul_precision),
        "cuda_graphs": device.type == "cuda" and cfg.train.cuda_graphs,
        "probe": choice.record(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "max_members": max_members,
        "lease": lease,
        "data": data.source,
        **result.info,
        "versions": software_versions(),
        "started": started_at,
        "finished": datetime.now(timezone.utc).isoformat(),
        "study": study,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
    }
    record = records.complete(out, record)  # run.json last: it vouches for the files above
    checkpoint.remove()
    log.info("%s: done in %.1f s -> %s", cell, record["wall_s"], out)
    return record


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@contextmanager
def stop_on_signals(checkpoint: CellCheckpoint, enabled: bool = True) -> Iterator[None]:
    """While the block runs, SIGTERM, SIGUSR1 and SIGUSR2 (what SLURM and submitit send before a time limit or a
    preemption) only mark `checkpoint` as stopping: the fits save the cell's progress at their next safe point and
    raise `Interrupted`, whose `chain` then calls the handler that was there before (submitit's requeues the job).
    A signal after the last fit changes nothing: the cell completes. Outside the main thread, where Python takes no
    handlers, and unless `enabled`, the signals keep their handlers."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, checkpoint.request_stop) for signum in STOP_SIGNALS}
    checkpoint.previous = previous
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _choose_step(cfg: Config, device: torch.device) -> StepChoice:
    """The batched engine's step on `device` after `auto` and the probe (`prefit.probe`), with its one warning line
    where it falls back; the sequential engine has no step to choose."""
    if cfg.train.engine == "sequential":
        return StepChoice(str(cfg.train.kernels), "sequential")
    choice = choose_step(str(cfg.train.kernels), device, cfg.model.field(cfg.seed))
    if choice.warning:
        if cfg.train.matmul_precision == "3xtf32":
            raise ConfigError(f"train.matmul_precision=3xtf32 needs the fused step, and {choice.warning}")
        log.warning("train.kernels=%s: %s; the torch step runs instead", cfg.train.kernels, choice.warning)
    return choice


def check_memory(cfg: Config, device: torch.device) -> None:
    """Refuse (with the numbers, before allocating) a cell too big for the host, or one member too big for the GPU."""
    hls, hfs = cfg.model.hls, cfg.model.hfs
    pixels = cfg.dataset.side**2
    members = cfg.dataset.n_triples * len(cfg.scheme.selected())
    weight_bytes = 4 * n_weights(hls, hfs, cfg.model.field(cfg.seed).inputs)
    image_bytes = 4 * 3 * pixels * (len(cfg.train.snapshot_epochs) + 1)
    need = weight_bytes * (2 * members + 4) + image_bytes * members
    available = _available_memory()
    cell = f"model.hls={hls} model.hfs={hfs}"
    if available is not None and need > available:
        raise ConfigError(
            f"{cell}: {members} members need at least {need / 2**30:.1f} GiB of memory "
            f"({weight_bytes / 2**30:.2f} GiB of weights each), this machine has {available / 2**30:.1f} GiB free"
        )
    if device.type == "cuda":
        per_member = cuda_bytes_per_member(hls, hfs, pixels, cfg.train)
        total = torch.cuda.get_device_properties(device.index or 0).total_memory
        if per_member > total:
            raise ConfigError(
                f"{cell}: one member needs {per_member / 2**30:.1f} GiB on the GPU, which has {total / 2**30:.1f} GiB"
            )


def _available_memory() -> int | None:
    """Bytes of host memory available now (Linux: MemAvailable), None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextmanager
def device_share(
    cfg: Config, device: torch.device, members: int, parallel_jobs: int = 1
) -> Iterator[tuple[torch.device, int, dict[str, Any] | None]]:
    """The device, chunk size and lease record (None on a CPU) a cell runs with while the block runs. On CUDA a job
    leases its members' memory (or `train.max_members` of them) from `prefit.devices`, starts once MIN_CHUNK of them
    fit and sizes its chunks for what it got: narrow cells run side by side, a wide one waits, none runs a device out.
    An exclusive-process GPU is leased whole, one job at a time; a SLURM job alone on its own GPUs takes a whole one
    without the ledger (`prefit.devices.owns_devices`)."""
    hls, hfs, pixels = cfg.model.hls, cfg.model.hfs, cfg.dataset.side**2
    if device.type != "cuda":
        yield device, cfg.train.max_members or auto_max_members(hls, hfs, device, pixels, fit=cfg.train), None
        return
    per_member = cuda_bytes_per_member(hls, hfs, pixels, cfg.train)
    at_once = min(members, cfg.train.max_members or members)
    need = at_once * per_member
    least = need if cfg.train.max_members else min(at_once, MIN_CHUNK) * per_member
    only = None if device.index is None else [device.index]
    indices = cuda_devices(only)  # the ledger names devices by UUID; CUDA, in this process, by index
    capacities = cuda_capacities(reserve_bytes=parallel_jobs * CUDA_CONTEXT_BYTES, only=only)
    if owns_devices(os.environ, parallel_jobs):
        uuid = next(iter(capacities))
        lease, ledger, exclusive = nullcontext(), None, False
        granted, waited = capacities[uuid], 0.0
    else:
        exclusive_ids = exclusive_devices(capacities, compute_modes())
        lease = acquire(need, least, capacities, exclusive=exclusive_ids, label=f"{hls}x{hfs}")
        uuid, granted, waited = lease.device, lease.granted_bytes, lease.waited_s
        ledger, exclusive = str(lease.folder), lease.exclusive
    with lease:
        device = torch.device("cuda", indices[uuid])
        torch.cuda.set_device(device)  # work that names no device (streams, caches) lands there too
        max_members = cfg.train.max_members or auto_max_members(
            hls, hfs, device, pixels, budget_bytes=granted, fit=cfg.train
        )
        record = {
            "device": uuid,
            "index": indices[uuid],
            "granted_bytes": granted,
            "need_bytes": need,
            "capacity_bytes": capacities[uuid],
            "waited_s": waited,
            "ledger": ledger,  # None: the job owns its GPU and leased nothing
            "exclusive": exclusive,
        }
        try:
            yield device, max_members, record
        finally:
            torch.cuda.empty_cache()  # hand the allocator's cached blocks back before the lease, for the next job


def _parallel_jobs() -> int:
    """Jobs of the sweep running at once, this one included, as the launcher reads n_jobs (joblib: -1 one per core;
    cli() has already replaced a CUDA sweep's -1 by `launcher_jobs`' number); 1 for a single run or submitit's jobs."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return 1
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=1) or 1
    return launcher_jobs(n_jobs, os.cpu_count() or 1)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    hc = HydraConfig.get()
    try:
        return run(OmegaConf.to_object(cfg), Path(hc.runtime.output_dir), _parallel_jobs())
    except Interrupted as stop:
        if hc.mode == RunMode.MULTIRUN:  # as a user error: the sweep reports the job, cli() the line and status
            log.error("%s", stop)
            stop.chain()
            raise
        print(str(stop), file=sys.stderr, flush=True)
        stop.chain()  # the handler before ours (submitit's requeues the job, and exits)
        raise SystemExit(stop.status) from None
    except USER_ERRORS as error:
        if hc.mode == RunMode.MULTIRUN:  # the sweep reports which job failed; cli() prints one line
            log.error("%s", one_line(error))
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None


USER_ERRORS = (ConfigError, DataError, HydraException, OmegaConfBaseException)


def _check_launcher_overrides(args: list[str]) -> list[str]:
    """The command line to run: launcher values that would fail inside the launcher with a traceback are refused
    first in one line, and a local (joblib) sweep on CUDA that leaves n_jobs at -1 gets JOBS_PER_GPU jobs per GPU
    (`prefit.devices.launcher_jobs`) instead of one per core, which would queue dozens of jobs on each GPU."""
    multirun, launcher, n_jobs, device = False, "joblib", "-1", "auto"
    for arg in args:
        key, _, value = arg.partition("=")
        key, value = key.lstrip("+~"), value.strip()
        if key == "hydra.launcher.n_jobs":
            if value.lstrip("-").isdigit() and int(value) == 0:
                raise ConfigError(
                    "hydra.launcher.n_jobs must be a number of jobs (>= 1, or -1 for one per core), not 0"
                )
            n_jobs = value
        launcher = value if key == "hydra/launcher" else launcher
        device = value if key == "train.device" else device
        multirun = multirun or arg in ("-m", "--multirun") or (key == "hydra.mode" and value.upper() == "MULTIRUN")
    if not multirun or launcher != "joblib" or n_jobs != "-1" or device == "cpu" or not torch.cuda.is_available():
        return args
    gpus = 1 if device.startswith("cuda:") else torch.cuda.device_count()
    if gpus < 1:
        return args
    exclusive = min(gpus, sum(is_exclusive(mode) for mode in (compute_modes() or {}).values()))
    cores = os.cpu_count() or 1
    jobs = launcher_jobs(-1, cores, gpus, exclusive)
    how = f"{JOBS_PER_GPU} per GPU on {gpus} GPU(s)"
    how += f", 1 per exclusive-process GPU ({exclusive} of them)" if exclusive else ""
    how += f", at most one per core ({cores})" if jobs == cores else ""
    print(f"[prefit] {jobs} jobs at once: {how}; hydra.launcher.n_jobs=N to change", flush=True)
    kept = [arg for arg in args if arg.partition("=")[0].lstrip("+~") != "hydra.launcher.n_jobs"]
    return [*kept, f"hydra.launcher.n_jobs={jobs}"]


def cli() -> None:
    """Entry point: Hydra errors and bad input end in one line and exit status 2, not a traceback."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    # conf/hydra/launcher/submitit_*.yaml set defaults on the plugin's schema of the same name, on purpose
    warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema with the same name")
    try:
        sys.argv[1:] = _check_launcher_overrides(sys.argv[1:])
        main()
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(stop.status)
    except KeyboardInterrupt:
        print("interrupted: completed cells are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        if not _making_a_folder(error):
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(
            f"error: cannot create the output folder {where}{error.strerror or error} (choose another "
            "hydra.run.dir or hydra.sweep.dir)",
            file=sys.stderr,
        )
        sys.exit(2)


def _making_a_folder(error: OSError) -> bool:
    """Whether `error` came from creating a folder (Hydra's output folders, a cell's), not from reading input."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("mkdir", "makedirs"):
            return True
        tb = tb.tb_next
    return False


if __name__ == "__main__":
    cli()
