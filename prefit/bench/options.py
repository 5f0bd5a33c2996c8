"""What the benchmark is asked to do: the command line parsed into `Options` (bad input raises `BenchError`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefit.data import SIDE

ENGINES = ("batched", "sequential", "original")
DEFAULT_CELLS = ((2, 32), (3, 128), (3, 512), (8, 1024))


class BenchError(ValueError):
    """Unusable input; reported as one line `error: ...` with exit status 2."""


@dataclass
class Options:
    """The resolved command line. `--quick` only changes the defaults; explicit options still win."""

    device: str = "auto"
    threads: int | None = None
    cells: tuple[tuple[int, int], ...] = DEFAULT_CELLS
    resolution: int = SIDE  # pixels a side of the fitted images (the study's CIFAR: 32)
    engines: tuple[str, ...] = ENGINES
    members: int = 100  # a study cell: 20 triples x 5 fits
    subset: int = 4  # members timed by the sequential and original loops (at most)
    max_members: int | None = None  # batched chunk; None: the engine's automatic choice
    epochs: int = 30
    min_epochs: int = 5  # the budget may cut epochs down to this, never below
    repeats: int = 5
    warmup: int = 3
    budget: float = 25.0  # seconds of timed runs per engine and cell, estimated from the warm-up
    ceiling_size: int | None = None  # None: 2048 on a CPU, 4096 on a GPU
    bandwidth_mib: int | None = None  # the copy that measures the memory's rate; None: 256 on a CPU, 1024 on a GPU
    ceilings: dict[str, float] = field(default_factory=dict)  # measured by run_bench: fp32 (and tf32 on CUDA)
    bandwidth_gbs: float | None = None  # measured by run_bench: the memory's copy rate
    out: Path = Path("bench.json")
    steady: bool | None = None  # steady-state epoch times of one chunk (None: on CUDA only)


QUICK = {
    "members": 4,
    "subset": 1,
    "epochs": 3,
    "min_epochs": 1,
    "repeats": 1,
    "warmup": 1,
    "budget": 5.0,
    "ceiling_size": 256,
    "bandwidth_mib": 16,
}


def parse_cells(text: str) -> tuple[tuple[int, int], ...]:
    """'2x32,3x128' -> ((2, 32), (3, 128)): hidden layers x hidden features, both >= 1."""
    cells = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise BenchError(f"--cells: {item.strip()!r} is not HLSxHFS (e.g. 2x32,3x128)")
        hls, hfs = int(parts[0]), int(parts[1])
        if hls < 1 or hfs < 1:
            raise BenchError(f"--cells: {item.strip()!r} needs hls >= 1 and hfs >= 1")
        cells.append((hls, hfs))
    return tuple(cells)


def parse_engines(text: str) -> tuple[str, ...]:
    """'batched,original' -> the engines to time, in the table's order."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(ENGINES))
    if unknown or not names:
        raise BenchError(f"--engines: expected a subset of {','.join(ENGINES)}, got {text!r}")
    return tuple(e for e in ENGINES if e in names)


class Parser(argparse.ArgumentParser):
    """argparse, with its usage-plus-message turned into one BenchError line."""

    def error(self, message: str) -> None:
        raise BenchError(message)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    convert.__name__ = f"positive {kind.__name__}"
    return convert


def _description() -> str:
    """The first paragraph of the package's docstring (the command's documentation)."""
    import prefit.bench  # the package imports this module: look it up at call time

    return (prefit.bench.__doc__ or "").split("\n\n")[0]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Command line -> Options (raises BenchError on bad input)."""
    p = Parser(prog="python -m prefit.bench", description=_description())
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=_positive(int), help="torch intra-op threads (default: torch's)")
    p.add_argument("--cells", type=str, help="HLSxHFS,... (default: 2x32,3x128,3x512,8x1024)")
    p.add_argument(
        "--resolution", type=_positive(int), help="pixels a side of the fitted images (default 32, as CIFAR)"
    )
    p.add_argument("--engines", type=str, help="subset of batched,sequential,original (default: all)")
    p.add_argument("--members", type=_positive(int), help="members of a cell (default 100: 20 triples x 5 fits)")
    p.add_argument("--subset", type=_positive(int), help="members timed by sequential and original (default 4)")
    p.add_argument("--max-members", type=_positive(int), help="batched chunk (default: the engine's choice)")
    p.add_argument("--epochs", type=_positive(int), help="timed epochs per run (default 30; the budget may cut)")
    p.add_argument("--repeats", type=_positive(int), help="timed runs per engine; the median counts (default 5)")
    p.add_argument("--warmup", type=_positive(int), help="untimed epochs before timing (default 3)")
    p.add_argument("--budget", type=_positive(float), help="seconds of timed runs per engine and cell (default 25)")
    p.add_argument(
        "--ceiling-size",
        type=_positive(int),
        help="side of the torch.mm that measures the ceiling (default 2048 on a CPU, 4096 on a GPU)",
    )
    p.add_argument(
        "--bandwidth-mib",
        type=_positive(int),
        help="MiB copied to measure the memory's rate (default 256 on a CPU, 1024 on a GPU)",
    )
    p.add_argument("--out", type=Path, help="where to write the JSON (default: ./bench.json)")
    p.add_argument("--quick", action="store_true", help="a tiny run (tests, smoke checks)")
    p.add_argument(
        "--steady",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time one chunk's steady-state epochs (prefit.bench.steady; default: on CUDA only)",
    )
    args = p.parse_args(argv)

    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    keys = (
        "device",
        "threads",
        "members",
        "subset",
        "max_members",
        "epochs",
        "repeats",
        "warmup",
        "budget",
        "ceiling_size",
        "bandwidth_mib",
    )
    for key in (*keys, "resolution"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.cells is not None:
        values["cells"] = parse_cells(args.cells)
    if args.engines is not None:
        values["engines"] = parse_engines(args.engines)
    if args.out is not None:
        values["out"] = args.out
    if args.steady is not None:
        values["steady"] = args.steady
    opts = Options(**values)
    opts.min_epochs = min(opts.min_epochs, opts.epochs)
    return opts
