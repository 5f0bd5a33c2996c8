"""Sweeps: the smoke preset over a 2 x 2 grid with joblib, a killed sweep resumed, and submitit's local path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # subprocess sweeps: `make test-fast` leaves them out

CELLS = ["1hls_8hfs", "1hls_16hfs", "2hls_8hfs", "2hls_16hfs"]


def sweep_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prefit.train",
        "-m",
        "+experiment=smoke",
        "model.hls=1,2",
        "model.hfs=8,16",
        "dataset=cifar_dir",
        f"dataset.path={data}",
        f"hydra.sweep.dir={out}",
        "train.progress=false",
        *extra,
    ]


def results(out: Path) -> dict[str, pd.DataFrame]:
    return {p.parent.name: pd.read_parquet(p) for p in sorted(out.glob("*/psnr.parquet"))}


def test_smoke_sweep_runs_every_cell(cifar_dir, tmp_path):
    out = tmp_path / "sweep"
    subprocess.run(sweep_command(cifar_dir, out), check=True, capture_output=True, timeout=300)
    found = results(out)
    assert sorted(found) == sorted(CELLS)
    for name, rows in found.items():
        hls, hfs = (int(part[: -len(suffix)]) for part, suffix in zip(name.split("_"), ("hls", "hfs")))
        assert (rows.hls == hls).all() and (rows.hfs == hfs).all()
        assert len(rows) == 3 * 5 * 30  # smoke: 3 triples, 5 fits each, 30 epochs
        assert (out / name / "run.json").is_file() and (out / name / "recon.npz").is_file()


def completed(out: Path) -> list[Path]:
    """Cells whose run.json says complete (a job claims its folder with a `running` run.json when it starts)."""
    return [p for p in out.glob("*/run.json") if '"status": "complete"' in p.read_text()]


def test_killed_sweep_resumes_to_the_same_results(cifar_dir, tmp_path):
    reference = tmp_path / "uninterrupted"
    subprocess.run(
        sweep_command(cifar_dir, reference, "hydra.launcher.n_jobs=1"), check=True, capture_output=True, timeout=300
    )

    out = tmp_path / "killed"
    command = sweep_command(cifar_dir, out, "hydra.launcher.n_jobs=1")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=os.setsid)
    deadline = time.time() + 240
    while not completed(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, workers included, mid-way
    proc.wait()
    survivors = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/psnr.parquet")}
    assert 0 < len(survivors) < len(CELLS), "the kill should land mid-sweep"
    for p in out.glob("*/psnr.parquet"):
        pd.read_parquet(p)  # every parquet present is complete

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipped" in resumed.stdout + resumed.stderr + "".join(p.read_text() for p in out.glob("*/*.log"))
    for name, mtime in survivors.items():  # finished cells were not run again
        assert (out / name / "psnr.parquet").stat().st_mtime_ns == mtime
    got, want = results(out), results(reference)
    assert sorted(got) == sorted(want) == sorted(CELLS)
    for name in CELLS:
        pd.testing.assert_frame_equal(got[name], want[name])


def test_submitit_local_launcher(cifar_dir, tmp_path):
    out = tmp_path / "submitit"
    command = sweep_command(cifar_dir, out, "hydra/launcher=submitit_local")
    command[command.index("model.hls=1,2")] = "model.hls=1"
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(results(out)) == ["1hls_16hfs", "1hls_8hfs"]
    assert (out / ".submitit").is_dir()


def test_new_schemes_run_in_a_sweep_beside_the_original_three(make_cifar_dir, tmp_path):
    data = make_cifar_dir(per_batch=30)  # 150 images: room for pools outside the triples
    out = tmp_path / "six"
    command = sweep_command(
        data,
        out,
        "'scheme=[random,same_class,other_class,class_mean,multi_same,meta]'",
        "scheme.meta.pool_size=30",
        "scheme.meta.outer_steps=3",
        "scheme.class_mean.pool_size=30",
        f"scheme.meta.cache_dir={tmp_path / 'cache'}",
        "scheme.multi_same.k=2",
    )
    command = [c.strip("'") for c in command]
    command[command.index("model.hls=1,2")] = "model.hls=1"
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = results(out)
    assert sorted(name.split(",")[0] for name in found) == ["1hls_16hfs", "1hls_8hfs"]
    for rows in found.values():
        fits = rows[rows.phase == "fit"]
        assert set(fits.scheme) == {"random", "same_class", "other_class", "class_mean", "multi_same", "meta"}
        assert fits.groupby(["scheme", "triple"]).size().eq(30).all()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # one learned initialisation per cell


def test_presets_expand_the_grid_and_command_line_overrides_win(tmp_path):
    """+experiment=grid sweeps 7 x 6 = 42 cells; repro is the same grid under protocol=chained."""
    import re

    for preset, protocol in (("grid", "independent"), ("repro", "chained")):
        proc = subprocess.run(
            [sys.executable, "-m", "prefit.train", f"+experiment={preset}", "--cfg", "all"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        hls = re.search(r"model\.hls: ([\d,]+)", proc.stdout).group(1).split(",")
        hfs = re.search(r"model\.hfs: ([\d,]+)", proc.stdout).group(1).split(",")
        assert len(hls) * len(hfs) == 42 and hls[0] == "2" and hfs[-1] == "1024"
        assert re.search(rf"protocol:\s+name: {protocol}", proc.stdout)
    narrowed = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefit.train",
            "-m",
            "+experiment=grid",
            "model.hls=2",
            "model.hfs=32,64",
            "dataset=cifar_dir",
            "dataset.path=/no/such/folder",
            f"hydra.sweep.dir={tmp_path}",
            "train.progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    launched = re.findall(r"#\d+ : ", narrowed.stdout + narrowed.stderr)
    assert len(launched) == 2  # the command line's hls and hfs replace the preset's lists


def test_two_runs_of_one_sweep_fit_each_cell_once(cifar_dir, tmp_path):
    """Started together on one folder (a resubmitted array beside the first): a cell held by one is skipped by the
    other, so every cell is fitted once, and the results are those of one run."""
    out = tmp_path / "sweep"
    command = sweep_command(cifar_dir, out, "hydra.launcher.n_jobs=1", "train.threads=1", "train.epochs=300")
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    folders = sorted(p.parent for p in out.glob("*/psnr.parquet"))
    assert [f.name.split(",")[0] for f in folders] == sorted(CELLS)  # named with train.epochs=300 too
    done = [line for log in logs for line in log.splitlines() if "done in" in line]
    assert len(done) == len(CELLS), logs
    for folder in folders:
        assert sum(line.endswith(f"-> {folder}") for line in done) == 1, (folder, logs)
    assert not list(out.glob("*/claim.json"))  # released
