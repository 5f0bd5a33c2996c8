"""scripts/: the GPU measurement script's plumbing, run on the CPU (ALLOW_CPU=1) with this environment's Python,
and the CI-in-a-clone script on a toy repository.

GPU time is scarce and a measurement is time-boxed, so what can go wrong before the GPU matters (paths, the
sweep's overrides, the options, the files and records it leaves, the comparison at the end) is checked here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-measure.sh"
CI_CLONE = ROOT / "scripts" / "ci-clone.sh"


def measure(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The script run from tmp_path (relative paths are the caller's), on the CPU, with this Python."""
    environ = {**os.environ, "PYTHON": sys.executable, "ALLOW_CPU": "1", "SWEEP_ROOT": str(tmp_path), **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=600, cwd=tmp_path
    )


def test_bad_usage_is_one_line_and_exit_2_before_anything_runs(tmp_path):
    proc = measure("nonsense", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    unknown = "error: unknown stage 'nonsense' (check, tests, bench, grid, agree or all)"
    assert proc.stderr.strip().splitlines() == [unknown]
    proc = measure("tests,nonsense", str(tmp_path / "out"), tmp_path=tmp_path)  # checked before tests run
    assert proc.returncode == 2 and "unknown stage 'nonsense'" in proc.stderr and not (tmp_path / "out").exists()
    for args in (("grid",), (",", str(tmp_path / "out"))):
        proc = measure(*args, tmp_path=tmp_path)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            "error: usage: scripts/gpu-measure.sh STAGE[,STAGE...] OUT (stages: check, tests, bench, grid, agree, all)"
        ]
    for env, line in (
        ({"GRID_PRECISION": "fp16"}, "error: GRID_PRECISION must be auto, highest, 3xtf32 or high, not 'fp16'"),
        ({"MEASURE_S": "9m"}, "error: MEASURE_S must be a whole number of seconds, not '9m'"),
        ({"MAX_FILES": "1"}, "error: MAX_FILES must be a whole number, at least 2, not '1'"),
        ({"MAX_FILES": "all"}, "error: MAX_FILES must be a whole number, at least 2, not 'all'"),
    ):
        proc = measure("grid", str(tmp_path / "out"), tmp_path=tmp_path, **env)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [line]
        assert not (tmp_path / "out").exists()


def test_stages_the_deadline_leaves_no_time_for_are_skipped_and_the_files_still_written(cifar_dir, tmp_path):
    # 40 s less 15 to pack leave 25, under the 30 a stage needs
    proc = measure("grid,agree", "out", tmp_path=tmp_path, DATA=str(cifar_dir), MEASURE_S="40")
    assert proc.returncode == 124, (proc.stdout + proc.stderr)[-3000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| grid | 124 (out of time) |" in summary and "| agree | 124 (out of time) |" in summary
    assert f"; torch {torch.__version__}, Triton " in summary.splitlines()[2]  # the versions beside the machine
    assert "grid: train.matmul_precision=highest (GRID_PRECISION=auto)" in summary  # no benchmark to choose by
    skipped = ("grid", "agree 2x32", "agree 3x128", "agree 3x512", "agree 8x1024")
    said = [re.sub(r"\(\d+ s left", "(N s left", line) for line in proc.stderr.splitlines()]  # 25, or 24 late
    assert said == [f"skipped: {what} (N s left of MEASURE_S)" for what in skipped]
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        assert "logs/gpu.txt" in tar.getnames()


def test_the_check_stage_brings_back_what_prefit_check_printed(tmp_path):
    proc = measure("check", "out", tmp_path=tmp_path)  # ALLOW_CPU: the compiled step stands in for the fused one
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    check = (tmp_path / "out" / "check.txt").read_text()
    assert "auto runs  the compiled step" in check and "estimated wall time of make run" in check
    assert "| check | 0 |" in (tmp_path / "out" / "summary.md").read_text()


def test_max_files_moves_the_least_needed_files_into_the_archive(cifar_dir, tmp_path):
    out = tmp_path / "out"  # an earlier run's files: the cap counts every file of the script's in OUT
    out.mkdir()
    for name in ("tests.log", "bench_cuda.json", "grid.md"):
        (out / name).write_text(f"earlier {name}\n")
    proc = measure("grid", "out", tmp_path=tmp_path, DATA=str(cifar_dir), MEASURE_S="40", MAX_FILES="3")
    assert proc.returncode == 124, (proc.stdout + proc.stderr)[-3000:]  # the grid skipped: no time left
    assert sorted(p.name for p in out.iterdir()) == ["grid.md", "logs.tar.gz", "summary.md"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"out/bench_cuda.json", "out/tests.log", "logs/gpu.txt"} <= set(tar.getnames())
        assert tar.extractfile("out/tests.log").read() == b"earlier tests.log\n"  # moved whole
    summary = (out / "summary.md").read_text()
    assert "moved into logs.tar.gz (out/), MAX_FILES=3: bench_cuda.json tests.log" in summary
    assert "earlier grid.md" in proc.stdout  # the kept report is printed at the end


@pytest.mark.slow
def test_the_grid_and_agree_stages_run_their_sweeps_and_bring_back_records_and_reports(cifar_dir, tmp_path):
    env = dict(
        DATA=str(cifar_dir),
        GRID_EPOCHS="3",
        AGREE_EPOCHS="3",
        AGREE_CELLS="1x8 1x4",
        TRAIN_ARGS="model.hls=2 model.hfs=8 dataset.n_triples=2",
    )
    proc = measure("grid", "out", tmp_path=tmp_path, **env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = tmp_path / "out"  # relative to where the script was called from
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert [Path(n).name for n in tar.getnames() if n.endswith(".json")] == ["run.json"]  # one cell, narrowed
        assert "grid: exit 0" in tar.extractfile("logs/grid.log").read().decode()
    report = (out / "grid.md").read_text()
    assert "| full grid, one protocol, 20 triples, 2000 epochs | <= 15 min | unmeasured |" in report  # not 42 cells
    assert "cells 1, jobs 1, epochs 3" in report
    assert report in proc.stdout  # printed too: where only the output's tail is kept, it holds the reports
    assert "| grid | 0 |" in (out / "summary.md").read_text()

    env["TRAIN_ARGS"] = "dataset.n_triples=2"
    proc = measure("agree", "out", tmp_path=tmp_path, **env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(list(tmp_path.glob("prefit-measure.*"))) == 2  # a new folder each call: a rerun never reads an old one
    with tarfile.open(out / "logs.tar.gz") as tar:
        records = {n: json.load(tar.extractfile(n)) for n in tar.getnames() if n.endswith(".json")}
    assert {n: (r["cell"]["hls"], r["cell"]["hfs"]) for n, r in records.items()} == {
        "agree/1x8/run.json": (1, 8),
        "agree/1x4/run.json": (1, 4),
    }
    assert "## The benchmark against `prefit.train`" in (out / "agree.md").read_text()
    assert len(list(out.iterdir())) <= 8  # MAX_FILES' default


def toy_project(tmp_path: Path) -> Path:
    """A committed repository whose .ci/run reports what it sees, leaves a file behind and exits 3."""
    repo, shared = tmp_path / "proj", tmp_path / "shared"
    (repo / ".ci").mkdir(parents=True)
    shared.mkdir()
    (shared / "PROTOCOL.md").write_text("the study\n")
    (repo / ".ci" / "run").write_text(
        'echo "CI=$CI"\n'
        'if [ -d ../shared ]; then echo "shared $(stat -c %A ../shared/PROTOCOL.md)"; else echo "no shared"; fi\n'
        "if [ -e uncommitted.txt ]; then echo dirty; fi\ntouch left-behind\nexit 3\n"
    )
    (repo / "uncommitted.txt").write_text("not in the clone\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", ".ci"], check=True)
    subprocess.run([*git, "commit", "-qm", "toy"], check=True)
    return repo


@pytest.mark.parametrize("flags, seen", [((), "shared -r--r--r--"), (("--no-shared",), "no shared")])
def test_ci_clone_runs_ci_in_a_fresh_clone_and_removes_it_whatever_the_outcome(tmp_path, flags, seen):
    repo, scratch = toy_project(tmp_path), tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        ["bash", str(CI_CLONE), *flags, str(repo)],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr  # .ci/run's own status
    assert "CI=true" in proc.stdout.splitlines() and seen in proc.stdout.splitlines()
    assert "ci-clone: .ci/run exited 3" in proc.stdout and "dirty" not in proc.stdout  # committed work only
    assert list(scratch.iterdir()) == []  # the clone, its leftovers and the read-only shared copy are gone
    assert not (repo / "left-behind").exists()


def test_ci_clone_refuses_what_is_not_a_repository_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(CI_CLONE), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: not a git repository: {tmp_path}"]
    proc = subprocess.run(["bash", str(CI_CLONE), "--shared"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: usage:")
