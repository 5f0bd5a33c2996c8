"""Steady-state epoch times of one chunk on a device: what `prefit.bench` reports on CUDA.

A chunk is built and warmed up (compilation, capture) outside the clock, then `repeats` runs of `epochs` epochs are
timed with CUDA events; the median counts. The forms are `FORMS`. A fused form's floor (`floor_ms`: its products at
the measured `torch.mm` rate, its other passes' bytes at the copy rate) says whether launches or the design bound it.
"""

from __future__ import annotations

import gc
import statistics

import torch

from prefit.bench.machine import seconds
from prefit.bench.options import Options
from prefit.engine.batched import DeviceChunk, HostChunk
from prefit.engine.capture import GraphChunk
from prefit.engine.common import flops_per_member_epoch
from prefit.engine.cuda import FusedChunk, fused_bytes_per_member_epoch
from prefit.engine.options import FitOptions
from prefit.model import Field, Params

GENERIC_WIDEST = 256  # the generic form is timed up to this hfs (the other families' study cells)
# form -> (kernels, captured, train.matmul_precision)
FORMS = {
    "fused_graph": ("fused", True, "highest"),
    "fused_eager": ("fused", False, "highest"),
    "torch_graph": ("torch", True, "highest"),  # what the engine runs on CUDA when the fused step cannot
    "torch_eager": ("torch", False, "highest"),
    "generic_eager": ("generic", False, "highest"),  # any family's step (torch.func), here on a SIREN
    "generic_compiled": ("generic", False, "highest"),  # the same, torch.compile'd (CPU only)
    "fused_graph_3xtf32": ("fused", True, "3xtf32"),
    "fused_graph_tf32": ("fused", True, "high"),
}


def epoch_times(
    params: Params,
    coords: torch.Tensor,
    target: torch.Tensor,
    field: Field,
    epochs: int = 200,
    repeats: int = 5,
    forms: tuple[str, ...] = tuple(FORMS),
) -> dict[str, dict[str, float]]:
    """Median and range of ms per chunk epoch, and GFLOP/s, per form (captured ones on CUDA), inputs on the device."""
    device, members = target.device, target.shape[0]
    hls, hfs = len(params) - 2, params[0][0].shape[2]
    flops = flops_per_member_epoch(hls, hfs, target.shape[1]) * members
    out: dict[str, dict[str, float]] = {}
    for form in forms:
        kernels, capture, precision = FORMS[form]
        if capture and device.type != "cuda":
            continue
        train = FitOptions(
            epochs=epochs,
            progress=False,
            snapshot_epochs=[],
            matmul_precision=precision,
            compile_generic=form == "generic_compiled",  # the one form that compiles the generic step
        )
        if kernels == "fused":
            chunk = FusedChunk(params, coords, target, train, field.w0, {})
        elif capture:
            chunk = DeviceChunk(params, coords, target, train, field, {})
        else:
            chunk = HostChunk(params, coords, target, train, field, {}, kernels)
        chunk.run(capture=capture)  # warm-up: compiles the kernels (and captures the graph), touches the memory

        def run(chunk: GraphChunk | HostChunk = chunk, capture: bool = capture) -> None:
            if isinstance(chunk, GraphChunk):
                chunk.rewind()  # the records are rewritten from row 0; the schedule goes on
            chunk.run(capture=capture)

        times = [seconds(device, run) for _ in range(repeats)]
        run = chunk = None  # this form's buffers and graph go before the next form makes its own
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        ms = [1e3 * s / epochs for s in times]
        median = statistics.median(ms)
        out[form] = {"ms_per_epoch": median, "ms_range": [min(ms), max(ms)], "gflops": flops / (median * 1e-3) / 1e9}
    return out


def floor_ms(
    form: str, hls: int, hfs: int, pixels: int, members: int, ceilings: dict[str, float], bandwidth_gbs: float
) -> float | None:
    """The least a fused form's epoch can take here: its products at the `torch.mm` rate, its bytes at the copy rate."""
    kernels, _, precision = FORMS[form]
    if kernels != "fused":
        return None
    flops = flops_per_member_epoch(hls, hfs, pixels) * (3 if precision == "3xtf32" else 1)
    rate = ceilings["fp32"] if precision == "highest" else ceilings.get("tf32") or ceilings["fp32"]
    moved = fused_bytes_per_member_epoch(hls, hfs, pixels, precision)
    return 1e3 * members * (flops / (rate * 1e9) + moved / (bandwidth_gbs * 1e9))


def steady_state_cell(params: Params, coords: torch.Tensor, target: torch.Tensor, field: Field, opts: Options) -> dict:
    """A cell's `steady_state`: `epoch_times` of its chunk and each form's share of the ceilings and of `floor_ms`."""
    ceilings, members, repeats = opts.ceilings, target.shape[0], 3
    hls, hfs = len(params) - 2, params[0][0].shape[2]
    per_member = flops_per_member_epoch(hls, hfs, target.shape[1])
    rate = 0.6 * ceilings["fp32"] * 1e9
    epochs = int(min(500, max(10, min(2.0, opts.budget / 10) * rate / (per_member * members))))
    if target.device.type == "cuda":
        forms = tuple(f for f in FORMS if f != "generic_compiled")  # torch.compile'd on a CPU only
    else:
        forms = ("torch_eager", "generic_eager", "generic_compiled")
    if hfs > GENERIC_WIDEST:  # autograd keeps every activation: the fused chunk may not fit
        forms = tuple(f for f in forms if FORMS[f][0] != "generic")
    times = epoch_times(params, coords, target, field, epochs=epochs, repeats=repeats, forms=forms)
    record: dict = {"members": members, "epochs": epochs, "repeats": repeats}
    for form, t in times.items():
        fractions = {f"fraction_{name}": t["gflops"] / c for name, c in ceilings.items() if c}
        record[form] = {**t, "ms_per_member_epoch": t["ms_per_epoch"] / members, **fractions}
        bandwidth = opts.bandwidth_gbs
        floor = floor_ms(form, hls, hfs, target.shape[1], members, ceilings, bandwidth) if bandwidth else None
        if floor is not None:
            record[form].update(floor_ms=floor, fraction_floor=floor / t["ms_per_epoch"])
    return record


def format_steady(cells: list[dict]) -> list[str]:
    """Table lines for the cells that have a steady-state record."""
    lines = []
    for c in cells:
        steady = c.get("steady_state")
        if not steady:
            continue
        parts = [
            f"{form} {s['ms_per_epoch']:.3g} ms ({s['gflops']:.3g} GFLOP/s"
            + "".join(f", {100 * v:.0f} % {k[9:]}" for k, v in s.items() if k.startswith("fraction_"))
            + (f"; floor {s['floor_ms']:.3g} ms" if "floor_ms" in s else "")
            + ")"
            for form, s in steady.items()
            if isinstance(s, dict)
        ]
        lines.append(f"steady {c['hls']}x{c['hfs']}, {steady['members']} members, one epoch: " + "; ".join(parts))
    return lines
