"""Hold benchmark figures against real training runs, and against the performance targets.

    python -m prefit.bench.compare BENCH.json [BENCH.json ...] [--sweep DIR ...] [--epochs 2000] [--out FILE.md]

A benchmark's figure for N members is held against the stages of `prefit.train` jobs that ran alone (jobs side
by side share a GPU) and fitted N members together, per cell, device model and resolution: their steady epochs
(`steady_s` over `steady_member_epochs`) where timed, else their whole fits (`fit_s`); they agree within 10 %. Each
sweep's span is also given at `--epochs` epochs (steady epochs, else whole fits, scaled), and docs/performance.md's
targets are filled from whatever the inputs measured. Markdown on stdout (and `--out`, written atomically). Bad
input: one line `error: ...`, exit 2.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefit.bench.options import BenchError
from prefit.data import SIDE
from prefit.errors import OneLineParser, fail
from prefit.io import atomic_write
from prefit.records import interval, span_s
from prefit.schema import GRID_HFS, GRID_HLS, RUN_FILE, cell_label

AGREE = 0.10  # the benchmark's figure and the training run's may differ by this share


@dataclass(frozen=True)
class Target:
    """One row of docs/performance.md's targets: a chunk's epoch at a cell, or a protocol's whole grid."""

    what: str
    limit: float
    unit: str
    cell: tuple[int, int] | None = None  # None: the full grid (GRID_HLS x GRID_HFS)
    members: int = 0  # a chunk's members (a cell's target)
    triples: int = 20  # a grid's triples and epochs (the grid's target)
    epochs: int = 2000


TARGETS = (
    Target("2 x 32, 100 members, one epoch", 0.3, "ms", (2, 32), 100),
    Target("8 x 1024, 60 members, one epoch, fp32", 66.0, "ms", (8, 1024), 60),
    Target("full grid, one protocol, 20 triples, 2000 epochs", 15.0, "min"),
)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a JSON object")
    return data


def read_bench(path: Path) -> dict[str, Any]:
    data = read_json(path)
    machine, cells = data.get("machine"), data.get("cells")
    shaped = isinstance(machine, dict) and "device" in machine and isinstance(cells, list)
    if not shaped or not all(isinstance(c, dict) and {"hls", "hfs", "members"} <= set(c) for c in cells):
        raise BenchError(f"{path}: not prefit.bench output (without a machine's device or a cell's hls, hfs, members)")
    return data


def checked_run(path: Path, run: dict[str, Any]) -> dict[str, Any]:
    """A complete job's run.json (from `path`) with its `interval` and `epochs`, checked for what is read."""
    try:
        int(run["cell"]["hls"]), int(run["cell"]["hfs"]), float(run["wall_s"]), list(run["stages"])
        run["epochs"], run["interval"] = int(run["config"]["train"]["epochs"]), interval(run)
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(
            f"{path}: a run.json without a usable {e} (cell, config.train.epochs, wall_s, started, finished, stages)"
        ) from None
    return run


@dataclass
class SweepRuns:
    """The complete jobs of one sweep folder (their run.json records, each with its `interval` in time)."""

    root: Path
    runs: list[dict[str, Any]]

    @classmethod
    def read(cls, root: Path) -> SweepRuns:
        if not root.is_dir():
            raise BenchError(f"--sweep {root}: no such folder")
        records = {p: read_json(p) for p in sorted(root.rglob(RUN_FILE))}
        runs = [checked_run(p, r) for p, r in records.items() if r.get("status") == "complete"]
        if not runs:
            raise BenchError(f"--sweep {root}: no complete job (no run.json with status complete)")
        return cls(root, runs)

    def epochs(self) -> int:
        found = {r["epochs"] for r in self.runs}
        return found.pop() if len(found) == 1 else 0

    def job_s(self) -> float:
        return sum(float(r["wall_s"]) for r in self.runs)

    def cells(self) -> set[tuple[int, int]]:
        return {(int(r["cell"]["hls"]), int(r["cell"]["hfs"])) for r in self.runs}

    def alone(self, run: dict[str, Any]) -> bool:
        """Whether no other job ran at the same time (jobs side by side share the device)."""
        start, end = run["interval"]
        return not any(r is not run and r["interval"][0] < end and start < r["interval"][1] for r in self.runs)

    def span_s(self) -> float:
        return span_s(r["interval"] for r in self.runs)

    def span_at(self, epochs: int) -> float | None:
        """The span at `epochs` epochs (see the module's doc); None where the jobs ran different epochs."""
        now = self.epochs()
        if not now:
            return None
        job, extra = self.job_s(), 0.0
        for r in self.runs:
            for stage in r["stages"]:
                if stage.get("steady_member_epochs"):
                    per = float(stage["steady_s"]) / int(stage["steady_member_epochs"])
                    extra += per * int(stage["members"]) * (epochs - now)
                else:
                    extra += float(stage["fit_s"]) * (epochs / now - 1.0)
        return self.span_s() * (job + extra) / job


def _where(cell: dict[str, Any], resolution: Any, device: Any, name: Any) -> tuple:
    """(hls, hfs, resolution, device kind, device model): where a benchmark and a job can meet (`cuda:0`: cuda)."""
    return int(cell["hls"]), int(cell["hfs"]), int(resolution or SIDE), str(device).split(":")[0], name


def train_rates(sweeps: Sequence[SweepRuns]) -> tuple[dict[tuple, Counter], list[str]]:
    """(*`_where`, members) -> the stages' summed seconds and member-epochs, of jobs that ran alone; and notes."""
    rates: dict[tuple, Counter] = defaultdict(Counter)
    shared = 0
    for sweep in sweeps:
        for r in sweep.runs:
            if not sweep.alone(r):
                shared += 1
                continue
            epochs = r["epochs"]
            where = _where(r["cell"], r.get("resolution"), r.get("device", "?"), r.get("device_name"))
            for stage in r["stages"]:
                into = rates[(*where, int(stage["members"]))]
                into.update(fit_s=float(stage["fit_s"]), member_epochs=int(stage["members"]) * epochs, stages=1)
                if stage.get("steady_member_epochs"):
                    steady = float(stage["steady_s"]), int(stage["steady_member_epochs"])
                    into.update(steady_s=steady[0], steady_member_epochs=steady[1], steady_stages=1)
    notes = []
    if shared:
        notes.append(
            f"{shared} job(s) left out: they ran beside other jobs, which shared their device "
            "(`hydra.launcher.n_jobs=1` runs one at a time)"
        )
    return rates, notes


def agreement(benches: Sequence[dict[str, Any]], sweeps: Sequence[SweepRuns]) -> tuple[list[dict], list[str]]:
    """A row per benchmarked cell that a lone job's stages fitted with as many members, and notes on the rest."""
    rates, notes = train_rates(sweeps)
    rows = []
    for bench in benches:
        machine = bench["machine"]
        for cell in bench["cells"]:
            bench_ms = (cell.get("ms_per_member_epoch") or {}).get("batched")
            if not bench_ms:
                continue
            where = _where(cell, cell.get("resolution"), machine["device"], machine.get("device_name"))
            key = (*where, int(cell["members"]))
            if key not in rates:
                others = sorted({k[-1] for k in rates if k[:-1] == where}, reverse=True)
                if others:
                    notes.append(
                        f"{cell_label(cell['hls'], cell['hfs'])}: benchmarked with {cell['members']} members, "
                        f"trained in stages of {', '.join(map(str, others))} (`--members N` matches)"
                    )
                continue
            rate = rates[key]
            train_ms = 1e3 * rate["fit_s"] / rate["member_epochs"]
            steady = rate["steady_stages"] == rate["stages"]  # every stage timed its steady epochs
            steady_ms = 1e3 * rate["steady_s"] / rate["steady_member_epochs"] if steady else None
            held = steady_ms if steady_ms is not None else train_ms
            rows.append(
                {
                    "cell": cell_label(cell["hls"], cell["hfs"]),
                    "resolution": key[2],
                    "device": machine.get("device_name"),
                    "members": key[-1],
                    "bench_ms": bench_ms,
                    "bench_timing": cell.get("batched_timing", "whole_fits"),
                    "train_ms": train_ms,
                    "train_steady_ms": steady_ms,
                    "stages": rate["stages"],
                    "basis": "steady" if steady else "whole fit",
                    "ratio": held / bench_ms,
                    "agrees": abs(held / bench_ms - 1.0) <= AGREE,
                }
            )
    return rows, notes


def chunk_epoch(benches: Sequence[dict[str, Any]], target: Target) -> tuple[float, str, float | None] | None:
    """A cell target's fp32 epoch, source and floor from a chunk's steady state (scaled to its members), or None."""
    found = [
        (cell["steady_state"], bench["machine"].get("device_name"))
        for bench in benches
        for cell in bench["cells"]
        if (cell["hls"], cell["hfs"]) == target.cell
        and int(cell.get("resolution") or SIDE) == SIDE
        and (cell.get("steady_state") or {}).get("fused_graph")
    ]
    if not found:
        return None
    steady, name = min(found, key=lambda f: f[0]["members"] != target.members)  # a chunk of as many members first
    fp32, scale = steady["fused_graph"], target.members / steady["members"]
    how = "steady state" if scale == 1 else f"scaled from a chunk of {steady['members']} members"
    floor = fp32.get("floor_ms")
    return fp32["ms_per_epoch"] * scale, f"{name}, {how}", None if floor is None else floor * scale


def grid_span(sweeps: Sequence[SweepRuns], target: Target) -> tuple[float, str, None] | None:
    """Minutes of the first sweep of the whole grid, as the target asks, scaled to its epochs; its source; no floor."""
    full = {(h, f) for h in GRID_HLS for f in GRID_HFS}
    for sweep in sweeps:
        protocols = {str(r["config"].get("protocol", {}).get("name")) for r in sweep.runs}
        alike = all(r.get("triples") == target.triples and int(r.get("resolution") or SIDE) == SIDE for r in sweep.runs)
        if (
            not (full <= sweep.cells() and len(protocols) == 1 and alike)
            or (span := sweep.span_at(target.epochs)) is None
        ):
            continue
        names = ", ".join(sorted({str(r.get("device_name")) for r in sweep.runs}))
        return span / 60, f"{names}; {sweep.root.name} at {sweep.epochs()} epochs, scaled", None
    return None


def target_rows(benches: Sequence[dict[str, Any]], sweeps: Sequence[SweepRuns]) -> list[dict[str, Any]]:
    """docs/performance.md's targets, each with what the inputs measured (None: unmeasured) and its source."""
    rows = []
    for target in TARGETS:
        found = chunk_epoch(benches, target) if target.cell else grid_span(sweeps, target)
        value, source, floor = found or (None, "unmeasured", None)
        rows.append(
            {
                "what": target.what,
                "target": f"<= {target.limit:g} {target.unit}",
                "value": value,
                "unit": target.unit,
                "met": None if value is None else value <= target.limit,
                "source": source,
                "floor": floor,
            }
        )
    return rows


def _table(header: str, rows: Iterable[str]) -> list[str]:
    """A Markdown table's lines from its header and rows, each with its cells joined by ' | '."""
    return [f"| {line} |" for line in (header, " | ".join(["---"] * (header.count(" | ") + 1)), *rows)]


def _number(x: float | None, fmt: str, unit: str = "", per: float = 1) -> str:
    return "-" if x is None else f"{format(x / per, fmt)}{unit}"


def render(benches: Sequence[dict[str, Any]], sweeps: Sequence[SweepRuns], epochs: int) -> str:
    """The whole report as Markdown."""
    lines = ["# Benchmark against training", ""]
    for bench in benches:
        m = bench["machine"]
        tf32 = f", TF32 {m['ceiling_tf32_gflops']:.4g}" if m.get("ceiling_tf32_gflops") else ""
        lines.append(
            f"- bench on {m['device']} ({m.get('device_name')}), torch {m.get('torch')}: `torch.mm` "
            f"ceiling fp32 {_number(m.get('ceiling_gflops') or None, '.4g')} GFLOP/s{tf32}"
        )

    def section(title: str, *text: str) -> None:
        lines.extend(["", f"## {title}", "", *text])

    section(
        "Targets",
        "The floor: the least this design's epoch can take on the benchmark's machine (its products at the "
        "measured `torch.mm` rate, its other passes' bytes at the measured copy rate).",
        "",
    )
    targets = []
    for r in target_rows(benches, sweeps):
        value = "unmeasured" if r["value"] is None else f"{r['value']:.3g} {r['unit']}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "no")
        floor = _number(r["floor"], ".3g", f" {r['unit']}")
        targets.append(f"{r['what']} | {r['target']} | {value} | {met} | {floor} | {r['source']}")
    lines += _table("what | target | measured | met | floor | from", targets)
    section(
        "Steady-state epochs (one chunk, ms per epoch; GFLOP/s; share of the fp32 ceiling; share of the design's floor)"
    )
    lines += steady_table(benches) or ["No benchmark here timed steady-state epochs (`--steady`, default on CUDA)."]
    section(f"The benchmark against `prefit.train` (agree: within {AGREE:.0%})")
    rows, notes = agreement(benches, sweeps)
    if rows:
        lines += [
            "Train's figures per member-epoch: its whole fits (transfers, compilation, capture included) and, "
            "where the engine timed them, its steady epochs; the ratio holds the steady one against the bench "
            "where there is one.",
            "",
        ]
        header = "cell | resolution | device | members | bench ms | timing | train ms, whole fits | "
        header += "train ms, steady | stages | train / bench | basis | agree"
        lines += _table(
            header,
            (
                f"{r['cell']} | {r['resolution']} | {r['device']} | {r['members']} | {r['bench_ms']:.4g} | "
                f"{r['bench_timing']} | {r['train_ms']:.4g} | {_number(r['train_steady_ms'], '.4g')} | "
                f"{r['stages']} | {r['ratio']:.3f} | {r['basis']} | {'yes' if r['agrees'] else 'no'}"
                for r in rows
            ),
        )
    else:
        lines.append(
            "No cell was benchmarked with as many members as a stage of a job that ran alone fitted "
            "together, on the same device model and resolution."
        )
    lines += [f"- {line}" for line in notes]
    section(f"Sweeps (span: first start to last finish; at {epochs} epochs: steady epochs scaled)")
    for sweep in sweeps:
        times = (sweep.span_s(), sweep.job_s(), sweep.span_at(epochs))
        span, job, scaled = (_number(s, ".1f", " min", 60) for s in times)
        lines.append(
            f"- `{sweep.root}`: cells {len(sweep.cells())}, jobs {len(sweep.runs)}, "
            f"epochs {sweep.epochs() or 'mixed'}; span {span}, job time {job}; at {epochs} epochs {scaled}"
        )
    return "\n".join(lines) + "\n"


def steady_table(benches: Sequence[dict[str, Any]]) -> list[str]:
    """Per cell with a steady state, each form's ms per epoch, GFLOP/s, shares of the fp32 ceiling and the floor."""
    cells = [c for b in benches for c in b["cells"] if c.get("steady_state")]
    forms = sorted({f for c in cells for f, s in c["steady_state"].items() if isinstance(s, dict)})

    def entry(s: dict[str, Any] | None) -> str:
        if not s:
            return "-"
        floor = f"; {100 * s['fraction_floor']:.0f} % of {s['floor_ms']:.4g} ms" if "floor_ms" in s else ""
        fp32 = 100 * s.get("fraction_fp32", float("nan"))
        return f"{s['ms_per_epoch']:.4g} ms; {s['gflops']:.4g}; {fp32:.0f} %{floor}"

    rows = []
    for c in cells:
        steady = c["steady_state"]
        rows.append(
            " | ".join([cell_label(c["hls"], c["hfs"]), str(steady["members"]), *map(entry, map(steady.get, forms))])
        )
    return _table(" | ".join(["cell", "members", *forms]), rows) if rows else []


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; bad input -> `error: ...` on stderr and exit 2."""
    p = OneLineParser(prog="python -m prefit.bench.compare", description=__doc__.split("\n\n")[0], raises=BenchError)
    p.add_argument("bench", nargs="+", type=Path, help="prefit.bench JSON outputs")
    p.add_argument("--sweep", action="append", type=Path, default=[], help="a sweep folder (repeatable)")
    p.add_argument("--epochs", type=int, default=2000, help="epochs to scale each sweep's span to (default 2000)")
    p.add_argument("--out", type=Path, help="also write the report here")
    try:
        args = p.parse_args(argv)
        if args.epochs < 1:
            raise BenchError(f"--epochs must be >= 1, got {args.epochs}")
        benches = [read_bench(path) for path in args.bench]
        sweeps = [SweepRuns.read(root) for root in args.sweep]
        try:
            text = render(benches, sweeps, args.epochs)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # a field of another shape than ours
            names = ", ".join(map(str, [*args.bench, *args.sweep]))
            raise BenchError(f"malformed input among {names}: {type(e).__name__} {e}") from None
    except BenchError as e:
        return fail(e)
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
