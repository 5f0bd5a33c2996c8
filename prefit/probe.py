"""Probe, then trust: before a job runs a fast step (`fused`: Triton kernels and CUDA graphs; `compiled`: numba on a
CPU) it fits a tiny cell with it and with the plain torch step on the same device, and trusts it only if the two
agree as the tests demand (`TOLERANCE_DB`, equal learning rates). A compile error (Triton builds its launcher with
the host's C compiler at run time), a launch error or a mismatch makes `train.kernels=auto` fall back to the torch
step with one warning line, and an explicit `train.kernels=fused|compiled` fail with one line.

The verdict is cached per device (GPU UUID or CPU model), torch, Triton, numba and prefit version in the user cache
folder (`$PREFIT_CACHE/probe`), so a sweep's later jobs skip the probe; delete the file to probe again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import prefit
from prefit.bench.workload import make_members, smooth_targets
from prefit.data.tensors import coordinate_grid
from prefit.devices import gpu_query, normal_uuid
from prefit.engine import device_name, fit_batched, psnr_from_loss
from prefit.engine.batched import resolve_kernels
from prefit.engine.options import FitOptions
from prefit.errors import ConfigError, one_line
from prefit.io import user_cache, write_json
from prefit.model import SIREN, Field

log = logging.getLogger("prefit.probe")

# Injected failures, for tests and for drills on a new machine: `compile` makes the fast step raise before it
# runs, `mismatch` moves its PSNR by 1 dB. A verdict under an injected failure is never cached.
FAULT_ENV = "PREFIT_PROBE_FAULT"
FAULTS = ("compile", "mismatch")
# The largest PSNR gap (dB, any member and epoch) between two engines that the tests accept.
TOLERANCE_DB = 1e-3
# The tiny cell: 4 members of 2 x 32 on 16 x 16 pixels for 60 epochs. On CUDA the first epoch runs eagerly, the
# next 50 as one captured graph, the rest eagerly again; with a 0.5 threshold the plateau schedule halves the
# learning rate after every 21 epochs, twice. At the default lr the two steps agree to about 1e-6 dB.
MEMBERS, HLS, HFS, SIDE, EPOCHS = 4, 2, 32, 16, 60
PROBE_FIT = FitOptions(
    epochs=EPOCHS, plateau_patience=20, plateau_threshold=0.5, snapshot_epochs=[0, -1], progress=False
)


@dataclass
class Verdict:
    """What a probe of a fast step on a device found."""

    step: str  # the fast step probed
    ok: bool
    cause: str | None  # why it is not trusted: the error, or the mismatch
    gap_db: float | None  # the largest PSNR gap against the torch step
    seconds: float  # the probe's own time (when it ran)
    key: dict[str, Any]  # device and versions it holds for
    file: str | None = None  # the cache file
    cached: bool = False  # read from the cache, not run now


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """The versions a result depends on, for run.json and the probe's cache key."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _package_version("triton"),
        "numba": _package_version("numba"),
        "prefit": prefit.__version__,
    }


def device_facts(device: torch.device) -> dict[str, Any]:
    """Name, UUID and driver of `device` (UUID and driver None on a CPU), for run.json and the probe's key."""
    if device.type != "cuda":
        return {"device_name": device_name(device), "device_uuid": None, "driver": None}
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    driver = (gpu_query("driver_version") or {}).get(normal_uuid(uuid))
    return {"device_name": device_name(device), "device_uuid": uuid, "driver": driver}


def probe_key(step: str, device: torch.device) -> dict[str, Any]:
    return {"step": step, "device": device.type, **device_facts(device), "versions": software_versions()}


def cache_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return user_cache("probe") / f"{key['step']}-{digest}.json"


def run_probe(step: str, device: torch.device, key: dict[str, Any] | None = None) -> Verdict:
    """Fit the tiny cell with `step` and with the torch step on `device`; the verdict (not cached)."""
    fault = os.environ.get(FAULT_ENV) or None
    if fault not in (None, *FAULTS):
        raise ConfigError(f"${FAULT_ENV} must be one of {', '.join(FAULTS)} (or unset), not {fault!r}")
    key = key or probe_key(step, device)
    coords = coordinate_grid(SIDE)
    params, targets = make_members(HLS, HFS, MEMBERS), smooth_targets(MEMBERS, side=SIDE)
    started = time.perf_counter()

    def fit(kernels: str):
        return fit_batched(params, targets, coords, replace(PROBE_FIT, kernels=kernels), SIREN, device)

    def verdict(ok: bool, cause: str | None, gap: float | None = None) -> Verdict:
        return Verdict(step, ok, cause, gap, round(time.perf_counter() - started, 3), key)

    try:
        if fault == "compile":
            raise RuntimeError(f"injected compile failure (${FAULT_ENV}=compile)")
        fast = fit(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # an asynchronous launch error surfaces here, not in the next job
    except Exception as error:  # a compile or launch error of any kind is the verdict, not a crash
        return verdict(False, f"the {step} step failed: {one_line(error, limit=400)}")
    plain = fit("torch")
    fast_psnr = psnr_from_loss(fast.loss.double()) + (1.0 if fault == "mismatch" else 0.0)
    gap = (fast_psnr - psnr_from_loss(plain.loss.double())).abs().max().item()
    if not gap < TOLERANCE_DB:  # a NaN gap fails too
        return verdict(False, f"the {step} step's PSNR differs from the torch step's by {gap:.2g} dB", gap)
    if not torch.equal(fast.lr, plain.lr):
        return verdict(False, f"the {step} step's plateau schedule differs from the torch step's", gap)
    return verdict(True, None, gap)


def probe(step: str, device: torch.device, *, use_cache: bool = True) -> Verdict:
    """The verdict on `step` for `device`: from the cache where one holds for this device and these versions, else
    run now and cached (an injected failure neither reads nor writes the cache)."""
    key = probe_key(step, device)
    path = cache_file(key)
    use_cache = use_cache and not os.environ.get(FAULT_ENV)
    if use_cache and (stored := _read(path, key)) is not None:
        return stored
    verdict = run_probe(step, device, key)
    if use_cache:
        try:
            write_json(path, asdict(verdict))
        except OSError as error:  # a read-only cache costs a probe per job, not the job
            log.warning("probe verdict not cached (%s): %s", path, error)
            return verdict
        verdict.file = str(path)
    return verdict


def _read(path: Path, key: dict[str, Any]) -> Verdict | None:
    try:
        stored = json.loads(path.read_text())
        verdict = Verdict(**{**stored, "file": str(path), "cached": True})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as error:  # damaged: probe again and rewrite it
        log.warning("probe cache %s unreadable (%s); probing again", path, error)
        return None
    return verdict if verdict.key == key else None


@dataclass
class StepChoice:
    """The step a job runs: what was asked, what runs, the probe's verdict and the fallback's warning (if any)."""

    requested: str
    step: str
    verdict: Verdict | None = None
    warning: str | None = None

    def record(self) -> dict[str, Any]:
        """run.json's `probe`: the verdict's gist, or None where no probe ran."""
        v = self.verdict
        if v is None:
            return {"requested": self.requested, "ran": False, "fallback": self.warning}
        return {
            "requested": self.requested,
            "ran": not v.cached,
            "step": v.step,
            "ok": v.ok,
            "cause": v.cause,
            "gap_db": v.gap_db,
            "file": v.file,
            "fallback": self.warning,
        }


def choose_step(requested: str, device: torch.device, field: Field = SIREN) -> StepChoice:
    """train.kernels -> the step a job runs. `auto` runs the device's fast step if it can run here and passed its
    probe, else the torch step, saying why in one warning line; an explicit fast step that fails its probe is a
    ConfigError (one line, exit 2). `torch` and `generic` run as asked, and other families than SIREN run `generic`."""
    if resolve_kernels(requested, device, field) == "generic":  # refuses a SIREN-only step for another family
        return StepChoice(requested, "generic")
    if requested == "torch":
        return StepChoice(requested, "torch")
    step = resolve_kernels(requested, device)  # refuses steps that cannot run on this device at all
    if step == "torch":  # auto on CUDA without Triton
        from prefit import fused

        return StepChoice(requested, "torch", warning=f"the fused step cannot run: {fused.unavailable(device)}")
    verdict = probe(step, device)
    if verdict.ok:
        return StepChoice(requested, step, verdict)
    where = device_name(device)
    cached = f"; verdict cached in {verdict.file}, delete it to probe again" if verdict.file else ""
    if requested != "auto":
        raise ConfigError(
            f"train.kernels={requested} failed its probe on {where}: {verdict.cause}{cached} "
            "(train.kernels=torch runs the plain torch step)"
        )
    warning = f"the {step} step failed its probe on {where}: {verdict.cause}{cached}"
    return StepChoice(requested, "torch", verdict, warning)
