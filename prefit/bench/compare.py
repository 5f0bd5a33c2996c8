"""Hold benchmark figures against real training runs, and against the performance targets.

    python -m prefit.bench.compare BENCH.json [BENCH.json ...] [--sweep DIR ...] [--epochs 2000] [--out FILE.md]

A benchmark is only worth its figure if a study runs at that rate. `prefit.train` records in run.json the
seconds inside the engine's fits of each stage (`stages`: the members fitted together, `fit_s`, transfers and
compilation included, and on CUDA `steady_s` over `steady_member_epochs`, the epochs after compilation and
capture). A cell's stages fit different numbers of members (independent protocol: 60, the random fits and
the pre-fits, then 40), and a narrow cell's epoch costs about the same for 40 members as for 100, so the
benchmark's figure for N members is held against the stages that fitted N members together, per cell, device
model and resolution, in jobs that ran alone (jobs side by side share a GPU); the steady epochs where a stage
timed them, else the whole fits. The two agree when they differ by at most 10 %.

It also reports each sweep's span (first job's start to last job's finish, jobs side by side) and what that
span comes to at `--epochs` epochs: each job's steady epochs (else its whole fits) scaled, the rest of its
time (loading data, compiling, capturing, writing) kept, and the span scaled as the summed job time. Last,
the targets of docs/performance.md ("The targets") are filled from whatever the inputs measured; a target
nothing here measured reads "unmeasured".

Markdown on stdout (and in `--out`, written atomically). Bad input: one line `error: ...`, exit 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefit.bench.options import BenchError, Parser
from prefit.data import SIDE
from prefit.io import atomic_write
from prefit.records import interval, span_s
from prefit.schema import GRID_HFS, GRID_HLS, RUN_FILE

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
    if not isinstance(machine, dict) or not isinstance(cells, list):
        raise BenchError(f"{path}: not a prefit.bench output (no machine and cells)")
    if "device" not in machine or not all(isinstance(c, dict) and {"hls", "hfs", "members"} <= set(c) for c in cells):
        raise BenchError(f"{path}: a prefit.bench output without a machine's device or a cell's hls, hfs, members")
    return data


def checked_run(path: Path, run: dict[str, Any]) -> dict[str, Any]:
    """A complete job's run.json, read from `path`, with what the comparison reads (and its `interval`), or a
    BenchError naming the file."""
    try:
        int(run["cell"]["hls"]), int(run["cell"]["hfs"]), int(run["config"]["train"]["epochs"])
        float(run["wall_s"])
        run["interval"] = interval(run)
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(
            f"{path}: a run.json without a usable {e} (cell, config.train.epochs, wall_s, started, finished)"
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
        found = {int(r["config"]["train"]["epochs"]) for r in self.runs}
        return found.pop() if len(found) == 1 else 0

    def cells(self) -> set[tuple[int, int]]:
        return {(int(r["cell"]["hls"]), int(r["cell"]["hfs"])) for r in self.runs}

    def alone(self, run: dict[str, Any]) -> bool:
        """Whether no other job of the sweep ran at the same time (jobs side by side share the device, so
        their timings are not an engine's)."""
        start, end = run["interval"]
        return not any(r is not run and r["interval"][0] < end and start < r["interval"][1] for r in self.runs)

    def span_s(self) -> float:
        return span_s(r["interval"] for r in self.runs)

    def span_at(self, epochs: int) -> float | None:
        """The span at `epochs` epochs (see the module's doc): each job's steady epochs, where it timed them,
        else its whole fits, scaled to `epochs`; the rest of its time kept; the span scaled as the jobs' sum."""
        now = self.epochs()
        if not now or any(r.get("fit_s") is None for r in self.runs):
            return None
        job = sum(float(r["wall_s"]) for r in self.runs)
        extra = 0.0
        for r in self.runs:
            for stage in r.get("stages") or [{"members": 0, "fit_s": r["fit_s"]}]:
                if stage.get("steady_member_epochs"):
                    per = float(stage["steady_s"]) / int(stage["steady_member_epochs"])
                    extra += per * int(stage["members"]) * (epochs - now)
                else:
                    extra += float(stage["fit_s"]) * (epochs / now - 1.0)
        return self.span_s() * (job + extra) / job


def device_kind(name: str) -> str:
    """'cuda:0' -> 'cuda': a benchmark on `cuda` is held against jobs on any GPU of the same model."""
    return str(name).split(":")[0]


def train_rates(sweeps: Sequence[SweepRuns]) -> tuple[dict[tuple, dict[str, Any]], list[str]]:
    """(hls, hfs, resolution, device kind, device name, members) -> the summed seconds and member-epochs of
    the stages that fitted that many members together, in jobs that ran alone; and why other jobs left."""
    rates: dict[tuple, dict[str, Any]] = {}
    shared = unrecorded = 0
    for sweep in sweeps:
        for r in sweep.runs:
            if not r.get("stages"):
                unrecorded += 1  # a run.json from before stages were recorded
                continue
            if not sweep.alone(r):
                shared += 1
                continue
            epochs = int(r["config"]["train"]["epochs"])
            for stage in r["stages"]:
                key = (
                    int(r["cell"]["hls"]),
                    int(r["cell"]["hfs"]),
                    int(r.get("resolution") or SIDE),
                    device_kind(r.get("device", "?")),
                    r.get("device_name"),
                    int(stage["members"]),
                )
                into = rates.setdefault(
                    key,
                    {
                        "fit_s": 0.0,
                        "member_epochs": 0,
                        "stages": 0,
                        "steady_s": 0.0,
                        "steady_member_epochs": 0,
                        "steady_stages": 0,
                    },
                )
                into["fit_s"] += float(stage["fit_s"])
                into["member_epochs"] += int(stage["members"]) * epochs
                into["stages"] += 1
                if stage.get("steady_member_epochs"):
                    into["steady_s"] += float(stage["steady_s"])
                    into["steady_member_epochs"] += int(stage["steady_member_epochs"])
                    into["steady_stages"] += 1
    notes = []
    if shared:
        notes.append(
            f"{shared} job(s) left out: they ran beside other jobs, which shared their device "
            "(`hydra.launcher.n_jobs=1` runs one at a time)"
        )
    if unrecorded:
        notes.append(f"{unrecorded} job(s) left out: their run.json predates the stages' timings")
    return rates, notes


def agreement(benches: Sequence[dict[str, Any]], sweeps: Sequence[SweepRuns]) -> tuple[list[dict], list[str]]:
    """One row per benchmarked cell whose members a stage fitted together, in a job that ran alone, on the same
    device model and resolution; and lines saying which jobs and cells found no partner, and why."""
    rates, notes = train_rates(sweeps)
    rows = []
    for bench in benches:
        machine = bench["machine"]
        for cell in bench["cells"]:
            bench_ms = (cell.get("ms_per_member_epoch") or {}).get("batched")
            if not bench_ms:
                continue
            where = (
                int(cell["hls"]),
                int(cell["hfs"]),
                int(cell.get("resolution") or SIDE),
                device_kind(machine["device"]),
                machine.get("device_name"),
            )
            key = (*where, int(cell["members"]))
            if key not in rates:
                others = sorted({k[-1] for k in rates if k[:-1] == where}, reverse=True)
                if others:
                    notes.append(
                        f"{cell['hls']}x{cell['hfs']}: benchmarked with {cell['members']} members, "
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
                    "cell": f"{cell['hls']}x{cell['hfs']}",
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
    """A chunk's fp32 epoch at the target's cell and the study's resolution: the steady-state figure of a
    chunk of the target's members where a benchmark timed one, else one scaled from another chunk (and said
    so), with the benchmark's floor for it (None where it gave none), or None if no benchmark timed the cell."""
    found = [
        (cell["steady_state"], bench["machine"].get("device_name"))
        for bench in benches
        for cell in bench["cells"]
        if (cell["hls"], cell["hfs"]) == target.cell
        and int(cell.get("resolution") or SIDE) == SIDE
        and (cell.get("steady_state") or {}).get("fused_graph")
    ]
    for steady, name in found:
        if steady["members"] == target.members:
            fp32 = steady["fused_graph"]
            return fp32["ms_per_epoch"], f"{name}, steady state", fp32.get("floor_ms")
    for steady, name in found:
        fp32, scale = steady["fused_graph"], target.members / steady["members"]
        floor = fp32.get("floor_ms")
        return (
            fp32["ms_per_epoch"] * scale,
            f"{name}, scaled from a chunk of {steady['members']} members",
            None if floor is None else floor * scale,
        )
    return None


def grid_span(sweeps: Sequence[SweepRuns], target: Target) -> tuple[float, str] | None:
    """Minutes of the first sweep that ran the whole grid, one protocol, with the target's triples at the study's
    resolution, scaled to the target's epochs."""
    full = {(h, f) for h in GRID_HLS for f in GRID_HFS}
    for sweep in sweeps:
        protocols = {str(r["config"].get("protocol", {}).get("name")) for r in sweep.runs}
        if (
            not full <= sweep.cells()
            or len(protocols) != 1
            or any(r.get("triples") != target.triples or int(r.get("resolution") or SIDE) != SIDE for r in sweep.runs)
        ):
            continue
        span = sweep.span_at(target.epochs)
        if span is None:
            continue
        names = ", ".join(sorted({str(r.get("device_name")) for r in sweep.runs}))
        return span / 60, f"{names}; {sweep.root.name} at {sweep.epochs()} epochs, scaled"
    return None


def target_rows(benches: Sequence[dict[str, Any]], sweeps: Sequence[SweepRuns]) -> list[dict[str, Any]]:
    """docs/performance.md's targets, each with what the inputs measured (None: unmeasured) and its source."""
    rows = []
    for target in TARGETS:
        found = chunk_epoch(benches, target) if target.cell else grid_span(sweeps, target)
        value, source, floor = (*found, None)[:3] if found else (None, "unmeasured", None)
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


def render(benches: Sequence[dict[str, Any]], sweeps: Sequence[SweepRuns], epochs: int) -> str:
    """The whole report as Markdown."""
    lines = ["# Benchmark against training", ""]
    for bench in benches:
        m = bench["machine"]
        tf32 = f", TF32 {m['ceiling_tf32_gflops']:.4g}" if m.get("ceiling_tf32_gflops") else ""
        fp32 = f"{m['ceiling_gflops']:.4g}" if m.get("ceiling_gflops") else "-"
        lines.append(
            f"- bench on {m['device']} ({m.get('device_name')}), torch {m.get('torch')}: `torch.mm` "
            f"ceiling fp32 {fp32} GFLOP/s{tf32}"
        )
    lines += [
        "",
        "## Targets",
        "",
        "The floor: the least this design's epoch can take on the benchmark's machine "
        "(its products at the measured `torch.mm` rate, its other passes' bytes at the measured copy rate).",
        "",
        "| what | target | measured | met | floor | from |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in target_rows(benches, sweeps):
        value = "unmeasured" if r["value"] is None else f"{r['value']:.3g} {r['unit']}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "no")
        floor = "-" if r["floor"] is None else f"{r['floor']:.3g} {r['unit']}"
        lines.append(f"| {r['what']} | {r['target']} | {value} | {met} | {floor} | {r['source']} |")
    lines += [
        "",
        "## Steady-state epochs (one chunk, ms per epoch; GFLOP/s; share of the fp32 ceiling; "
        "share of the design's floor)",
        "",
    ]
    lines += steady_table(benches) or ["No benchmark here timed steady-state epochs (`--steady`, default on CUDA)."]
    lines += ["", f"## The benchmark against `prefit.train` (agree: within {AGREE:.0%})", ""]
    rows, notes = agreement(benches, sweeps)
    if rows:
        lines += [
            "Train's figures per member-epoch: its whole fits (transfers, compilation, capture included) and, "
            "where the engine timed them, its steady epochs; the ratio holds the steady one against the bench "
            "where there is one.",
            "",
            "| cell | resolution | device | members | bench ms | timing | train ms, whole fits | "
            "train ms, steady | stages | train / bench | basis | agree |",
            "|" + " --- |" * 12,
        ]
        lines += [
            f"| {r['cell']} | {r['resolution']} | {r['device']} | {r['members']} | {r['bench_ms']:.4g} | "
            f"{r['bench_timing']} | {r['train_ms']:.4g} | "
            f"{'-' if r['train_steady_ms'] is None else format(r['train_steady_ms'], '.4g')} | {r['stages']} | "
            f"{r['ratio']:.3f} | {r['basis']} | {'yes' if r['agrees'] else 'no'} |"
            for r in rows
        ]
    else:
        lines.append(
            "No cell was benchmarked with as many members as a stage of a job that ran alone fitted "
            "together, on the same device model and resolution."
        )
    lines += [f"- {line}" for line in notes]
    lines += ["", f"## Sweeps (span: first start to last finish; at {epochs} epochs: steady epochs scaled)", ""]
    for sweep in sweeps:
        span, scaled = sweep.span_s(), sweep.span_at(epochs)
        job = sum(float(r["wall_s"]) for r in sweep.runs)
        lines.append(
            f"- `{sweep.root}`: cells {len(sweep.cells())}, jobs {len(sweep.runs)}, "
            f"epochs {sweep.epochs() or 'mixed'}; span {_minutes(span)}, job time {_minutes(job)}; "
            f"at {epochs} epochs {_minutes(scaled)}"
        )
    return "\n".join(lines) + "\n"


def steady_table(benches: Sequence[dict[str, Any]]) -> list[str]:
    forms = sorted(
        {
            f
            for b in benches
            for c in b["cells"]
            for f in (c.get("steady_state") or {})
            if isinstance((c.get("steady_state") or {})[f], dict)
        }
    )
    rows = []
    for bench in benches:
        for cell in bench["cells"]:
            steady = cell.get("steady_state")
            if not steady:
                continue
            parts = []
            for form in forms:
                s = steady.get(form)
                if not s:
                    parts.append("-")
                    continue
                floor = f"; {100 * s['fraction_floor']:.0f} % of {s['floor_ms']:.4g} ms" if "floor_ms" in s else ""
                parts.append(
                    f"{s['ms_per_epoch']:.4g} ms; {s['gflops']:.4g}; "
                    f"{100 * s.get('fraction_fp32', float('nan')):.0f} %{floor}"
                )
            rows.append(f"| {cell['hls']}x{cell['hfs']} | {steady['members']} | " + " | ".join(parts) + " |")
    if not rows:
        return []
    return ["| cell | members | " + " | ".join(forms) + " |", "| --- | --- |" + " --- |" * len(forms), *rows]


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; bad input -> `error: ...` on stderr and exit 2."""
    p = Parser(prog="python -m prefit.bench.compare", description=__doc__.split("\n\n")[0])
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
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
