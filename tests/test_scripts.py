"""scripts/: the GPU measurement script's plumbing, run on the CPU (ALLOW_CPU=1) with this environment's Python.

A lent GPU is rare and its minutes are few, so what can go wrong before the GPU matters (paths, the sweep's
overrides, the records that come back, the comparison at the end) is checked here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-measure.sh"


def measure(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, "ALLOW_CPU": "1", "SWEEP": str(tmp_path / "sweep"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=600)


def test_an_unknown_stage_is_one_line_and_exit_2(tmp_path):
    proc = measure("nonsense", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown stage 'nonsense' (tests, bench, grid or all)"]


@pytest.mark.slow
def test_the_grid_stage_runs_the_sweep_and_brings_back_records_and_the_comparison(cifar_dir, tmp_path):
    out = tmp_path / "out"
    proc = measure("grid", str(out), tmp_path=tmp_path, DATA=str(cifar_dir), GRID_EPOCHS="3",
                   GRID_ARGS="model.hls=2 model.hfs=8 dataset.n_triples=2 train.progress=false")  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with tarfile.open(out / "grid_runs.tar.gz") as tar:
        assert [Path(n).name for n in tar.getnames() if n.endswith(".json")] == ["run.json"]  # one cell, narrowed
    report = (out / "compare.md").read_text()
    assert "| full grid, one protocol, 20 triples, 2000 epochs | <= 15 min | unmeasured |" in report  # not 42 cells
    assert "cells 1, jobs 1, epochs 3" in report
    assert "grid: exit 0" in (out / "grid.log").read_text()
