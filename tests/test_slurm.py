"""Sweeps on a real SLURM cluster of one node (scripts/slurm-local.sh): hydra/launcher=submitit_slurm gives the
same results as a local sweep, and a job cut mid-cell is requeued and resumes from its checkpoint.

The cluster is started once for the test run (installing slurm-wlm and munge with apt-get where they are missing)
and stopped, its state removed, however the tests end. Where it cannot be (not root, no apt-get, no network for
the packages, daemons that do not come up) the tests skip, saying why.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from prefit.config import TrainConfig

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
PARTITION = "debug"
HAS_CHECKPOINTS = "checkpoint_minutes" in {f.name for f in dataclasses.fields(TrainConfig)}
CHECKPOINT_MINUTES = 0.05  # a checkpoint every 3 s: several within the cut cell
CELL = "2hls_32hfs,train.epochs=2000"  # the cut cell's folder: about 30 s of fitting on one core


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld and slurmd), so that a cluster already up here is left alone."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two free ports side by side")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A one-node cluster for the test run; yields the environment its clients (and the sweeps) need."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (slurmd runs each job as its user)")
    if shutil.which("apt-get") is None and not all(shutil.which(c) for c in ("slurmctld", "slurmd", "srun", "munged")):
        pytest.skip("slurm-wlm and munge are not installed, and there is no apt-get to install them")
    folder = tmp_path_factory.mktemp("slurm") / "cluster"
    env = {
        **os.environ,
        "SLURM_LOCAL_DIR": str(folder),
        "SLURM_LOCAL_PARTITION": PARTITION,
        "SLURM_LOCAL_PORT": str(_free_port_pair()),
    }
    for key in [k for k in env if k.startswith("SLURM_") and not k.startswith("SLURM_LOCAL_")]:
        del env[key]  # from an allocation the tests may run in: the cluster here is another
    try:
        started = subprocess.run([SCRIPT, "start"], env=env, capture_output=True, text=True, timeout=900)
        if started.returncode != 0:
            said = (started.stderr.strip() or started.stdout.strip()).splitlines()
            pytest.skip(f"no local SLURM cluster: {said[-1] if said else f'exit status {started.returncode}'}")
        yield {**env, "SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{folder / 'bin'}:{env['PATH']}"}
    finally:
        subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, timeout=300)


def sweep(data: Path, out: Path, *extra: str, env: dict[str, str] | None = None, slurm: bool = False) -> list[str]:
    """The smoke preset on `data` into `out`, one thread per job; on the cluster with submitit_slurm."""
    command = [
        *(sys.executable, "-m", "prefit.train", "-m", "+experiment=smoke", "dataset=cifar_dir"),
        *(f"dataset.path={data}", f"hydra.sweep.dir={out}", "train.progress=false", "train.threads=1", *extra),
    ]
    if slurm:
        command += [
            "hydra/launcher=submitit_slurm",
            f"hydra.launcher.partition={PARTITION}",
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=30",
        ]
    else:
        command.append("hydra.launcher.n_jobs=1")
    return command


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def results(out: Path) -> dict[str, pd.DataFrame]:
    return {p.parent.name: pd.read_parquet(p) for p in sorted(out.glob("*/psnr.parquet"))}


def logs(out: Path) -> str:
    """Everything the sweep's jobs logged: submitit's stdout and stderr, each cell's own log."""
    files = [*out.glob(".submitit/*/*.out"), *out.glob(".submitit/*/*.err"), *out.glob("*/*.log")]
    return "".join(p.read_text(errors="replace") for p in files)


def test_a_sweep_on_slurm_equals_the_same_sweep_run_locally(slurm, make_cifar_dir, tmp_path):
    data = make_cifar_dir()
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    run(sweep(data, on_slurm, "model.hls=1", "model.hfs=4,8", slurm=True), env=slurm)
    run(sweep(data, local, "model.hls=1", "model.hfs=4,8"))
    got, want = results(on_slurm), results(local)
    assert sorted(got) == sorted(want) == ["1hls_4hfs", "1hls_8hfs"]
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
        assert '"status": "complete"' in (on_slurm / name / "run.json").read_text()
    assert list(on_slurm.glob(".submitit/*_*/*_log.out")), "submitit's logs are in the sweep's .submitit folder"


@pytest.mark.xfail(not HAS_CHECKPOINTS, reason="needs train.checkpoint_minutes", strict=False)
def test_a_job_cut_mid_cell_is_requeued_and_resumes_from_its_checkpoint(slurm, make_cifar_dir, tmp_path):
    """USR2 is what SLURM sends before a time limit (and on preemption): submitit requeues the job, which starts the
    cell again and picks it up from its last checkpoint."""
    data = make_cifar_dir()
    cell = ("model.hls=2", "model.hfs=32", "train.epochs=2000", f"train.checkpoint_minutes={CHECKPOINT_MINUTES}")
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        sweep(data, cut, *cell, slurm=True), cwd=REPO, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 600
        while not list(cut.glob(f"{CELL}/checkpoint*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert list(cut.glob(f"{CELL}/checkpoint*")), f"no checkpoint in {cut}/{CELL}: {proc.poll()=}"
        assert not list(cut.glob(f"{CELL}/psnr.parquet")), "the cell should still be running when it is cut"
        (job,) = [p.name for p in cut.glob(".submitit/*") if p.is_dir()]  # one job, not an array: its id
        subprocess.run(["scancel", "--signal=USR2", job], env=slurm, check=True, timeout=60)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    said = logs(cut)
    assert "preempted" in said and "requeu" in said.lower()  # submitit's handler requeued it
    assert "resum" in said.lower()

    uncut = tmp_path / "uncut"
    run(sweep(data, uncut, *cell))
    got, want = results(cut), results(uncut)
    assert sorted(got) == sorted(want) == [CELL]
    pd.testing.assert_frame_equal(got[CELL], want[CELL], check_exact=True)
