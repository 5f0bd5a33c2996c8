"""`python -m prefit.bench`: the JSON other tools read keeps its shape, its figures agree with each other, and bad
input is one line. Speeds are never asserted: they belong to the machine, not to the code."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefit.bench import BenchError, main, parse_args
from prefit.bench.cells import plan
from prefit.bench.options import parse_cells
from prefit.bench.workload import fit_original, make_members, smooth_targets
from prefit.config import TrainConfig
from prefit.data import coordinate_grid
from prefit.engine import flops_per_member_epoch
from prefit.model import SIREN, member_params

ENGINES = ("batched", "sequential", "original")
MACHINE = {
    "device": str,
    "threads": int,
    "torch": str,
    "ceiling_gflops": float,
    "matmul_error": dict,
    "bandwidth_gbs": float,
}
CELL = {
    "hls": int,
    "hfs": int,
    "members": int,
    "epochs": int,
    "ms_per_member_epoch": dict,
    "speedup_vs_sequential": float,
    "speedup_vs_original": float,
    "gflops": float,
    "ceiling_fraction": float,
    "peak_mem_mb": float,
}


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefit.bench", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """One tiny benchmark of two cells, shared by the tests that read its output."""
    folder = tmp_path_factory.mktemp("bench")
    proc = bench("--quick", "--device", "cpu", "--cells", "1x8,2x16", "--out", "tmp/bench.json", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((folder / "tmp" / "bench.json").read_text())


def close(a: float, b: float, rel: float = 2e-3) -> bool:
    """Equal up to the 4 significant digits the JSON keeps."""
    return math.isclose(a, b, rel_tol=rel)


@pytest.mark.slow
def test_json_has_the_documented_fields_and_types(quick_run):
    _, data = quick_run
    for key, kind in MACHINE.items():
        assert isinstance(data["machine"][key], kind), key
    assert data["machine"]["device"] == "cpu"
    assert data["machine"]["torch"] == torch.__version__
    assert data["machine"]["threads"] >= 1 and data["machine"]["ceiling_gflops"] > 0
    assert [(c["hls"], c["hfs"]) for c in data["cells"]] == [(1, 8), (2, 16)]
    for cell in data["cells"]:
        for key, kind in CELL.items():
            assert isinstance(cell[key], kind), key
        assert set(cell["ms_per_member_epoch"]) == set(ENGINES)
        for engine in ENGINES:
            assert isinstance(cell["ms_per_member_epoch"][engine], float)
            assert 1 <= cell["members_timed"][engine] <= cell["members"]
        assert cell["members_timed"]["batched"] >= min(cell["max_members"], cell["members"])


@pytest.mark.slow
def test_figures_are_positive_and_consistent(quick_run):
    _, data = quick_run
    ceiling = data["machine"]["ceiling_gflops"]
    for cell in data["cells"]:
        ms = cell["ms_per_member_epoch"]
        assert all(v > 0 for v in ms.values())
        assert cell["epochs"] >= 1 and cell["peak_mem_mb"] > 0
        assert close(cell["speedup_vs_sequential"], ms["sequential"] / ms["batched"])
        assert close(cell["speedup_vs_original"], ms["original"] / ms["batched"])
        assert close(cell["ceiling_fraction"], cell["gflops"] / ceiling)
        for engine, (fastest, slowest) in cell["ms_per_member_epoch_range"].items():
            assert fastest <= ms[engine] <= slowest  # the median lies within its turns
        best = cell["ms_per_member_epoch_range"]["sequential"][0]
        assert close(cell["speedup_vs_sequential_best"], best / ms["batched"])
        assert cell["speedup_vs_sequential_best"] <= cell["speedup_vs_sequential"] * (1 + 1e-3)
        work = flops_per_member_epoch(cell["hls"], cell["hfs"])  # the study's work unit
        assert close(cell["gflops"], work / (ms["batched"] * 1e-3) / 1e9)


@pytest.mark.slow
def test_table_is_printed(quick_run):
    proc, data = quick_run
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    for column in ("cell", "members", "batched", "sequential", "original", "seq", "best", "orig", "GFLOP/s", "peak"):
        assert column in header
    assert any(line.startswith("1x8 ") for line in lines) and any(line.startswith("2x16 ") for line in lines)
    assert lines[-2].startswith("ceiling:")
    errors = data["machine"]["matmul_error"]
    assert lines[-1] == (
        f"products against float64 (relative error, train.matmul_precision): highest {errors['highest']:.2g}, "
        f"3xtf32 {errors['3xtf32']:.2g}, high {errors['high']:.2g} (on a CPU all three are fp32 products)"
    )


def test_the_floor_is_the_products_at_their_ceiling_plus_the_passes_at_the_copy_rate():
    from prefit.bench.steady import floor_ms

    h100 = {"fp32": 51_000.0, "tf32": 318_000.0}  # GFLOP/s, torch.mm, measured earlier on an H100
    fp32 = floor_ms("fused_graph", 8, 1024, 1024, 60, h100, 3000.0)
    assert 69.5 < fp32 < 70.5  # docs/performance.md: 60.7 ms of products, 27.7 GB at 3 TB/s
    assert floor_ms("fused_eager", 8, 1024, 1024, 60, h100, 3000.0) == fp32  # capture saves launches, not work
    assert floor_ms("torch_eager", 8, 1024, 1024, 60, h100, 3000.0) is None  # its passes are not counted
    assert floor_ms("fused_graph_tf32", 8, 1024, 1024, 60, h100, 3000.0) < fp32 / 3
    cpu = {"fp32": 180.0}  # no TF32: three fp32 products
    assert floor_ms("fused_graph_3xtf32", 2, 32, 1024, 10, cpu, 20.0) > 3 * floor_ms(
        "fused_graph", 2, 32, 1024, 10, cpu, 1e12
    )
    assert floor_ms("fused_graph", 2, 32, 1024, 20, cpu, 20.0) == pytest.approx(
        2 * floor_ms("fused_graph", 2, 32, 1024, 10, cpu, 20.0)
    )


def test_matmul_errors_measure_each_precision_against_float64():
    from prefit.bench.machine import matmul_errors

    errors = matmul_errors(torch.device("cpu"), 64, batch=2)
    assert list(errors) == ["highest", "3xtf32", "high"]  # every train.matmul_precision, in the config's order
    # fp32 products of 64 terms: rounding, neither exact (an fp64 reference) nor gross (a wrong reference)
    assert all(1e-9 < e < 1e-5 for e in errors.values()), errors


def test_bad_cells_is_one_line_and_exit_2(tmp_path, capsys):
    proc = bench("--quick", "--cells", "2x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: --cells: '2x' is not HLSxHFS (e.g. 2x32,3x128)\n" and proc.stdout == ""
    for bad in ("2x32,abc", "0x32", "2x32x4"):
        assert main(["--quick", "--cells", bad, "--out", str(tmp_path / "bench.json")]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("error: --cells: ") and err.count("\n") == 1 and out == "", err
    assert not (tmp_path / "bench.json").exists()


def test_argument_parsing():
    assert parse_cells("2x32, 3X128") == ((2, 32), (3, 128))
    opts = parse_args(["--quick", "--epochs", "7", "--engines", "original,batched"])
    assert opts.epochs == 7 and opts.repeats == 1 and opts.engines == ("batched", "original")
    assert opts.ceiling_size == 256 and parse_args(["--quick", "--ceiling-size", "4096"]).ceiling_size == 4096
    for argv in (["--epochs", "0"], ["--engines", "fast"], ["--nope"], ["--cells", ""], ["--ceiling-size", "0"]):
        with pytest.raises(BenchError):
            parse_args(argv)


def test_plan_cuts_members_then_epochs_to_the_budget():
    opts = parse_args(["--epochs", "30", "--repeats", "3", "--budget", "9"])
    wanted, least = {"batched": 100, "sequential": 4}, {"batched": 10, "sequential": 1}
    epochs, members = plan({"batched": 1e-3, "sequential": 1e-3}, wanted, least, opts=opts)
    assert (epochs, members) == (30, {"batched": 100, "sequential": 4})  # everything fits
    epochs, members = plan({"batched": 0.01, "sequential": 0.01}, wanted, least, opts=opts)
    assert epochs == 30 and members == {"batched": 10, "sequential": 4}  # 30 member-epochs x 3: whole chunks
    epochs, members = plan({"batched": 0.1, "sequential": 0.1}, wanted, least, opts=opts)
    assert epochs == opts.min_epochs and members == {"batched": 10, "sequential": 4}  # never below one chunk


@pytest.mark.slow  # seconds of fitting or a subprocess: `make test` runs it, `make test-fast` not
def test_original_loop_fits_and_reports_host_psnr():
    params, target = make_members(1, 16, 1), smooth_targets(1)
    psnr = fit_original(
        member_params(params, 0), target[0], coordinate_grid(), TrainConfig(epochs=60), torch.device("cpu")
    )
    assert len(psnr) == 60 and all(math.isfinite(p) for p in psnr)
    assert psnr[-1] > psnr[0] + 0.5  # it fits


@pytest.mark.slow
def test_steady_state_epochs_are_timed_per_form_and_recorded(tmp_path):
    """`--steady` times one chunk's epochs after a warm-up (prefit.bench.steady): on a CPU the torch form only
    (graphs need CUDA); the record has each form's ms, range and its share of the ceiling, and the table shows it."""
    proc = bench("--quick", "--device", "cpu", "--cells", "1x8", "--steady", "--out", "b.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell = json.loads((tmp_path / "b.json").read_text())["cells"][0]
    steady = cell["steady_state"]
    assert steady["members"] >= 1 and steady["epochs"] >= 10
    torch_form = steady["torch_eager"]
    low, high = torch_form["ms_range"]
    assert 0 < low <= torch_form["ms_per_epoch"] <= high
    assert close(torch_form["ms_per_member_epoch"] * steady["members"], torch_form["ms_per_epoch"])
    flops = flops_per_member_epoch(1, 8) * steady["members"]
    assert close(torch_form["gflops"], flops / torch_form["ms_per_epoch"] / 1e6, rel=1e-6)
    assert "fused_graph" not in steady and cell["batched_timing"] == "whole_fits"
    assert {"generic_eager", "generic_compiled"} <= steady.keys()  # any family's step, eager and torch.compile'd
    assert "steady 1x8" in proc.stdout


def test_epoch_times_of_the_fused_loop_without_capture():
    """The fused form runs under Triton's interpreter here; its timing restarts the records, not the fit."""
    pytest.importorskip("triton")
    from prefit import fused
    from prefit.bench.steady import epoch_times

    if why := fused.unavailable(torch.device("cpu")):
        pytest.skip(f"the fused kernels cannot run: {why}")
    coords = coordinate_grid(4)
    params, targets = make_members(1, 4, 2), smooth_targets(2)[:, :16]
    times = epoch_times(params, coords, targets, SIREN, epochs=3, repeats=2, forms=("fused_eager", "fused_graph"))
    assert set(times) == {"fused_eager"}  # no CUDA, no graph
    assert times["fused_eager"]["ms_per_epoch"] > 0
