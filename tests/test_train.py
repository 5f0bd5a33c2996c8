"""The app end to end: one cell, a sweep, skipping and resuming, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from hydra.types import RunMode
from omegaconf import OmegaConf

from prefit import train as app
from prefit.analysis.load import check_schema
from prefit.checkpoint import CHECKPOINT_FILE
from prefit.config import (
    RUNTIME_KEYS,
    Config,
    ConfigError,
    SchemeConfig,
    SchemesConfig,
    TrainConfig,
    cell_folder,
    study_config,
    validate,
)
from prefit.devices import LEDGER_ENV, entries
from prefit.engine import auto_max_members, cuda_bytes_per_member

REQUIRED = [
    "hls",
    "hfs",
    "protocol",
    "scheme",
    "phase",
    "triple",
    "epoch",
    "psnr",
    "loss",
    "lr",
    "target_index",
    "target_label",
    "prefit_index",
    "prefit_label",
    "seed",
]


def train(*overrides: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "prefit.train", *overrides, "train.progress=false"],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"prefit.train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def tiny(data: Path, *extra: str) -> list[str]:
    return [
        "dataset=cifar_dir",
        f"dataset.path={data}",
        "model.hls=1",
        "model.hfs=8",
        "train.epochs=20",
        "dataset.n_triples=3",
        *extra,
    ]


@pytest.mark.slow
def test_done_when_command_on_the_shared_sample(shared_sample, tmp_path):
    out = tmp_path / "run"
    train(
        "dataset=cifar_dir",
        f"dataset.path={shared_sample}",
        "model.hls=2",
        "model.hfs=32",
        "train.epochs=100",
        "dataset.n_triples=4",
        f"hydra.run.dir={out}",
    )
    rows = pd.read_parquet(out / "psnr.parquet")
    assert set(REQUIRED) <= set(rows.columns)
    assert len(rows) == 4 * (3 + 2) * 100
    fits = rows[rows.phase == "fit"]
    assert fits.groupby(["scheme", "triple"]).size().eq(100).all()
    assert np.isfinite(fits.psnr).all() and fits.psnr.between(5, 80).all()
    last = fits[fits.epoch == 99].psnr.mean()
    assert last > fits[fits.epoch == 0].psnr.mean() + 3  # real images fit
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["cell"] == {"hls": 2, "hfs": 32}
    assert record["config"]["dataset"]["n_triples"] == 4 and record["versions"]["torch"]


@pytest.mark.slow
def test_single_cell_writes_skips_and_overwrites(cifar_dir, tmp_path):
    out = tmp_path / "cell"
    train(*tiny(cifar_dir), f"hydra.run.dir={out}")
    files = {name: (out / name).stat().st_mtime_ns for name in ("psnr.parquet", "recon.npz", "run.json")}
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    rows = pd.read_parquet(out / "psnr.parquet")
    assert set(REQUIRED) <= set(rows.columns) and len(rows) == 3 * 5 * 20
    check_schema(out / "psnr.parquet", pq.read_schema(out / "psnr.parquet"))  # what the analysis will accept
    recon = np.load(out / "recon.npz")
    assert recon["recon"].shape == (9, 2, 32, 32, 3)  # 3 triples x 3 schemes; epochs 0 and 19 (100, 500 > last)
    record = json.loads((out / "run.json").read_text())
    assert record["lease"] is None  # a CPU job takes no GPU lease
    assert record["member_epochs"] == len(rows) and 0 < record["fit_s"] <= record["wall_s"]  # one row per epoch
    assert [s["members"] for s in record["stages"]] == [9, 6]  # 3 triples: random and both pre-fits, then 2 fits
    assert sum(s["fit_s"] for s in record["stages"]) == pytest.approx(record["fit_s"], abs=1e-2)
    assert record["ms_per_member_epoch"] == pytest.approx(1e3 * record["fit_s"] / len(rows), rel=1e-3)
    weights = (2 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)  # tiny(): 1 x 8, (x, y) in, RGB out
    assert record["gflops"] == pytest.approx(6 * 1024 * weights / (record["fit_s"] / len(rows)) / 1e9, rel=1e-2)

    again = train(*tiny(cifar_dir), f"hydra.run.dir={out}")
    assert "skipped" in again.stdout + again.stderr
    assert all((out / n).stat().st_mtime_ns == t for n, t in files.items())

    train(*tiny(cifar_dir, "train.overwrite=true"), f"hydra.run.dir={out}")
    assert (out / "psnr.parquet").stat().st_mtime_ns != files["psnr.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "psnr.parquet"), rows)  # seeded: identical rerun

    before = {name: (out / name).read_bytes() for name in ("psnr.parquet", "recon.npz", "run.json")}
    changed = train(*tiny(cifar_dir, "train.lr=2e-4"), f"hydra.run.dir={out}", check=False)  # another study
    error = [line for line in changed.stderr.splitlines() if line.strip()]
    assert changed.returncode == 2 and len(error) == 1 and error[0].startswith("error: ")
    assert "train.lr" in error[0] and "hydra.sweep.dir" in error[0] and "train.overwrite=true" in error[0]
    assert all((out / name).read_bytes() == data for name, data in before.items())  # nothing overwritten


@pytest.mark.slow
def test_a_damaged_result_is_computed_again_and_a_moved_cache_is_not(cifar_dir, tmp_path, monkeypatch):
    """run.json vouches for its files: a truncated psnr.parquet (or a leftover temporary file) makes the job run
    again; the same folder given by a relative path, or with the ciFAIR cache moved, is the same study."""
    out = tmp_path / "cell"
    train(*tiny(cifar_dir), f"hydra.run.dir={out}")
    parquet = out / "psnr.parquet"
    whole = parquet.read_bytes()
    parquet.write_bytes(whole[: len(whole) // 2])
    (out / ".recon.npz.abc.tmp").write_bytes(b"half")
    rerun = train(*tiny(cifar_dir), f"hydra.run.dir={out}")
    assert "skipped" not in rerun.stdout + rerun.stderr
    assert parquet.read_bytes() == whole and not list(out.glob(".*.tmp"))

    monkeypatch.chdir(cifar_dir.parent)
    relative = train(*tiny(Path(cifar_dir.name), "dataset.root=/elsewhere"), f"hydra.run.dir={out}")
    assert "skipped" in relative.stdout + relative.stderr


def test_checkpoint_minutes_is_a_runtime_key_and_checked():
    """How often a job saves changes neither the study nor the cell's folder; a negative or NaN value is refused."""
    assert "train.checkpoint_minutes" in RUNTIME_KEYS
    assert study_config(Config(train=TrainConfig(checkpoint_minutes=0.5))) == study_config(Config())
    assert cell_folder(2, 32, "train.checkpoint_minutes=0.5") == cell_folder(2, 32, "")
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="train.checkpoint_minutes"):
            validate(Config(train=TrainConfig(checkpoint_minutes=bad)))
    validate(Config(scheme=SchemesConfig(random=SchemeConfig()), train=TrainConfig(checkpoint_minutes=0.0)))


@pytest.mark.slow
def test_a_complete_cell_keeps_no_checkpoint(cifar_dir, tmp_path):
    """A job removes its checkpoint once run.json is complete; a checkpoint left beside a complete result (a job
    stopped between the two) goes when a rerun skips the cell."""
    out = tmp_path / "cell"
    train(*tiny(cifar_dir, "train.checkpoint_minutes=0.001"), f"hydra.run.dir={out}")
    assert (out / "run.json").is_file() and not (out / CHECKPOINT_FILE).exists()
    (out / CHECKPOINT_FILE).write_bytes(b"left over")
    again = train(*tiny(cifar_dir), f"hydra.run.dir={out}")
    assert "skipped" in again.stdout + again.stderr and not (out / CHECKPOINT_FILE).exists()


@pytest.mark.slow
def test_engines_and_protocols_through_the_app(cifar_dir, tmp_path):
    train(*tiny(cifar_dir, "train.engine=sequential"), f"hydra.run.dir={tmp_path / 'seq'}")
    train(*tiny(cifar_dir, "train.engine=batched"), f"hydra.run.dir={tmp_path / 'bat'}")
    seq = pd.read_parquet(tmp_path / "seq" / "psnr.parquet")
    bat = pd.read_parquet(tmp_path / "bat" / "psnr.parquet")
    assert (seq.engine == "sequential").all() and (bat.engine == "batched").all()
    assert np.abs(seq.psnr.to_numpy() - bat.psnr.to_numpy()).max() < 1e-3

    train(*tiny(cifar_dir, "protocol=chained"), f"hydra.run.dir={tmp_path / 'chain'}")
    chain = pd.read_parquet(tmp_path / "chain" / "psnr.parquet")
    assert (chain.protocol == "chained").all() and sorted(chain.stage.unique()) == [0, 1, 2, 3, 4]
    assert set(chain[chain.phase == "fit"].scheme) == {"random", "same_class", "other_class"}


def test_cuda_jobs_share_the_devices_through_the_ledger(tmp_path, monkeypatch):
    """device_share without a GPU: capacities and set_device stand in for CUDA, the ledger is real."""
    per = cuda_bytes_per_member(3, 64)
    asked = []

    def capacities(reserve_bytes: int = 0, only=None) -> dict[str, int]:
        asked.append((reserve_bytes, only))
        return {f"GPU-{i}": c for i, c in {0: 50 * per, 1: 120 * per}.items() if only is None or i in only}

    monkeypatch.setenv(LEDGER_ENV, str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(app, "cuda_capacities", capacities)
    monkeypatch.setattr(app, "cuda_devices", lambda only=None: {f"GPU-{i}": i for i in only or (0, 1)})
    monkeypatch.setattr(app, "compute_modes", lambda: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    cfg = Config()
    cfg.model.hls, cfg.model.hfs = 3, 64
    cuda = torch.device("cuda")
    with app.device_share(cfg, cuda, 100, parallel_jobs=4) as (dev_a, chunk_a, lease_a):
        assert asked == [(4 * app.CUDA_CONTEXT_BYTES, None)]
        assert dev_a == torch.device("cuda", 1) and chunk_a == 100  # the most room; all members at once
        assert lease_a["granted_bytes"] == lease_a["need_bytes"] == 100 * per
        with app.device_share(cfg, cuda, 100) as (dev_b, chunk_b, lease_b):
            assert dev_b == torch.device("cuda", 0) and chunk_b == 50  # what device 0 has room for
            assert chunk_b == auto_max_members(3, 64, dev_b, budget_bytes=lease_b["granted_bytes"])
            with app.device_share(cfg, cuda, 100) as (dev_c, chunk_c, _):
                assert dev_c == torch.device("cuda", 1) and chunk_c == 20  # 20 >= MIN_CHUNK: starts narrow
                assert len(entries(tmp_path)) == 3
    assert entries(tmp_path) == []

    cfg.train.max_members = 30  # set by the user: the lease is sized by it, the chunk is kept
    with pytest.raises(RuntimeError):
        with app.device_share(cfg, torch.device("cuda", 0), 100) as (dev, chunk, lease):
            assert asked[-1] == (app.CUDA_CONTEXT_BYTES, [0])
            assert dev == torch.device("cuda", 0) and chunk == 30 and lease["granted_bytes"] == 30 * per
            raise RuntimeError("a failed fit gives its lease back")
    assert entries(tmp_path) == []

    with app.device_share(cfg, torch.device("cpu"), 100) as (dev, chunk, lease):
        assert dev.type == "cpu" and chunk == 30 and lease is None and entries(tmp_path) == []


# Through the command line: exit status 2 and one line on stderr (the same cases, and more, are checked
# in-process by tests/test_config.py, where composing a config takes milliseconds instead of a process).
CLI_BAD_INPUTS = [
    (["model.hls=0"], "model.hls"),
    (["'scheme=[random,nonsense]'"], "scheme/nonsense"),
    (["model.hfs=2.5"], "model.hfs"),
    (["dataset=cifar_dir", "dataset.path=/no/such/folder"], "/no/such/folder"),
    (["model.hfs=100000"], "GiB"),  # refused before anything is allocated, with the memory it would need
    (["-m", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs"),
    (["train.checkpoint_minutes=-1"], "train.checkpoint_minutes"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,mentions", CLI_BAD_INPUTS, ids=[" ".join(o) for o, _ in CLI_BAD_INPUTS])
def test_bad_input_gets_one_line(overrides, mentions, tmp_path):
    overrides = [o.strip("'") for o in overrides]
    proc = train(*overrides, f"hydra.run.dir={tmp_path / 'bad'}", check=False, cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and mentions in lines[0], proc.stderr
    assert not (tmp_path / "bad" / "psnr.parquet").exists()


@pytest.mark.slow
def test_offline_without_data_says_where_and_how(tmp_path):
    env = dict(os.environ, PREFIT_DATA=str(tmp_path / "cache"))
    proc = train(
        "dataset.url=http://127.0.0.1:9/ciFAIR-10.zip", f"hydra.run.dir={tmp_path / 'x'}", check=False, env=env
    )
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(error) == 1
    assert str(tmp_path / "cache") in error[0] and "dataset=cifar_dir" in error[0]


def cell_3x64(monkeypatch, ledger) -> Config:
    """The 3x64 cell's config, with the ledger in `ledger` and no SLURM job around."""
    monkeypatch.setenv(LEDGER_ENV, str(ledger))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = Config()
    cfg.model.hls, cfg.model.hfs = 3, 64
    return cfg


def fake_cuda(monkeypatch, devices: dict[str, int], capacity: int, modes=None) -> None:
    """device_share without a GPU: these UUID -> index devices, each of `capacity` bytes, the ledger real."""
    monkeypatch.setattr(app, "cuda_devices", lambda only=None: dict(devices))
    monkeypatch.setattr(app, "cuda_capacities", lambda reserve_bytes=0, only=None: dict.fromkeys(devices, capacity))
    monkeypatch.setattr(app, "compute_modes", lambda: modes)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)


def test_jobs_that_each_see_their_gpu_as_index_0_do_not_share_it(tmp_path, monkeypatch):
    """Two SLURM jobs of one node with a GPU each: both CUDA index 0, the ledger tells them apart by UUID."""
    per = cuda_bytes_per_member(3, 64)
    cfg = cell_3x64(monkeypatch, tmp_path)
    fake_cuda(monkeypatch, {"GPU-aaaa": 0}, 50 * per)
    with app.device_share(cfg, torch.device("cuda"), 30, parallel_jobs=2) as (dev_a, chunk_a, lease_a):
        fake_cuda(monkeypatch, {"GPU-bbbb": 0}, 50 * per)
        with app.device_share(cfg, torch.device("cuda"), 100, parallel_jobs=2) as (dev_b, chunk_b, lease_b):
            assert dev_a == dev_b == torch.device("cuda", 0) and (chunk_a, chunk_b) == (30, 50)
            assert (lease_a["device"], lease_b["device"]) == ("GPU-aaaa", "GPU-bbbb")
            assert lease_b["granted_bytes"] == 50 * per and lease_b["index"] == 0
            assert lease_b["ledger"] == str(tmp_path) and not lease_b["exclusive"]
            assert sorted(e["device"] for e in entries(tmp_path)) == ["GPU-aaaa", "GPU-bbbb"]


def test_a_slurm_job_alone_on_its_gpu_needs_no_ledger(tmp_path, monkeypatch):
    per = cuda_bytes_per_member(3, 64)
    ledger = tmp_path / "ledger"
    monkeypatch.setenv(LEDGER_ENV, str(ledger))
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.delenv("SLURM_SHARDS_ON_NODE", raising=False)
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    cfg = Config()
    cfg.model.hls, cfg.model.hfs = 3, 64
    fake_cuda(monkeypatch, {"GPU-aaaa": 0}, 50 * per)
    with app.device_share(cfg, torch.device("cuda"), 10) as (dev, chunk, lease):
        assert dev == torch.device("cuda", 0) and chunk == 50  # sized for the whole device
        assert lease["ledger"] is None and lease["granted_bytes"] == lease["capacity_bytes"] == 50 * per
        assert not ledger.exists()  # neither read nor written
    with app.device_share(cfg, torch.device("cuda"), 10, parallel_jobs=2) as (dev, chunk, lease):
        assert lease["ledger"] == str(ledger) and lease["granted_bytes"] == 10 * per  # jobs side by side: leases
        assert len(entries(ledger)) == 1


def test_an_exclusive_process_gpu_is_leased_whole(tmp_path, monkeypatch):
    per = cuda_bytes_per_member(3, 64)
    cfg = cell_3x64(monkeypatch, tmp_path)
    fake_cuda(monkeypatch, {"aaaa": 0, "bbbb": 1}, 50 * per, modes={"aaaa": "Default", "bbbb": "Exclusive_Process"})
    share = [app.device_share(cfg, torch.device("cuda"), 10, parallel_jobs=2) for _ in range(3)]
    with share[0] as (dev_a, _, lease_a), share[1] as (dev_b, _, lease_b), share[2] as (dev_c, _, lease_c):
        assert dev_a == torch.device("cuda", 0) and not lease_a["exclusive"] and lease_a["granted_bytes"] == 10 * per
        assert dev_b == torch.device("cuda", 1) and lease_b["exclusive"] and lease_b["granted_bytes"] == 50 * per
        assert dev_c == torch.device("cuda", 0)  # the exclusive one is taken, whatever its room
        assert [e["device"] for e in entries(tmp_path)] == ["aaaa", "bbbb", "aaaa"]


def launch(monkeypatch, capsys, *args: str, gpus: int = 2, modes=None, cores: int = 16) -> list[str]:
    """The arguments cli() hands Hydra for this command line, on a machine with `gpus` CUDA devices."""
    ran = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(app, "compute_modes", lambda: modes)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(app, "main", lambda: ran.append(sys.argv[1:]))
    monkeypatch.setattr(sys, "argv", ["prefit.train", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with warnings.catch_warnings():
        app.cli()
    return ran[0]


def test_a_gpu_sweep_runs_a_few_jobs_per_gpu(monkeypatch, capsys):
    jobs = app.JOBS_PER_GPU
    assert launch(monkeypatch, capsys, "-m", "model.hls=1,2") == [
        "-m",
        "model.hls=1,2",
        f"hydra.launcher.n_jobs={2 * jobs}",
    ]
    said = capsys.readouterr().out
    assert f"{2 * jobs} jobs at once" in said and "hydra.launcher.n_jobs=N" in said
    assert launch(monkeypatch, capsys, "--multirun", "hydra.launcher.n_jobs=-1", "hydra/launcher=joblib") == [
        "--multirun",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={2 * jobs}",
    ]
    exclusive = {"aaaa": "Exclusive_Process", "bbbb": "Default", "cccc": "Default"}
    assert launch(monkeypatch, capsys, "-m", modes=exclusive)[-1] == f"hydra.launcher.n_jobs={jobs + 1}"
    assert launch(monkeypatch, capsys, "-m", cores=4)[-1] == "hydra.launcher.n_jobs=4"
    assert launch(monkeypatch, capsys, "-m", "train.device=cuda:1")[-1] == f"hydra.launcher.n_jobs={jobs}"


@pytest.mark.parametrize(
    "args,gpus",
    [
        (["-m", "hydra.launcher.n_jobs=5"], 2),  # asked for
        (["-m", "hydra/launcher=submitit_slurm"], 2),  # a job per SLURM job
        (["-m", "hydra/launcher=submitit_local"], 2),
        (["model.hls=2"], 2),  # one run
        (["-m", "train.device=cpu"], 2),  # the sweep runs on the cores
        (["-m", "model.hls=1,2"], 0),  # no GPU: one job per core
    ],
)
def test_other_sweeps_keep_their_jobs(args, gpus, monkeypatch, capsys):
    assert launch(monkeypatch, capsys, *args, gpus=gpus) == args
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "launcher,n_jobs,expected",
    [({"n_jobs": 6}, 6, 6), ({"n_jobs": -1}, -1, 16), ({"n_jobs": 20}, 20, 20), ({"partition": None}, None, 1)],
)
def test_a_job_counts_the_jobs_beside_it_as_the_launcher_runs_them(launcher, n_jobs, expected, monkeypatch):
    """What cli() hands the launcher is what each job believes runs beside it (-1: joblib's one per core)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    hc = OmegaConf.create({"mode": RunMode.MULTIRUN, "launcher": launcher})
    monkeypatch.setattr(app.HydraConfig, "get", staticmethod(lambda: hc))
    assert app._parallel_jobs() == expected
    hc.mode = RunMode.RUN
    assert app._parallel_jobs() == 1


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_an_output_folder_that_cannot_be_made_is_one_line_and_exit_2(cifar_dir, tmp_path, mode):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    args = ["-m"] if mode == "sweep" else []
    proc = train(*args, *tiny(cifar_dir), f"hydra.{mode}.dir={blocker / 'out'}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: cannot create the output folder {blocker / 'out'}: Not a directory "
        "(choose another hydra.run.dir or hydra.sweep.dir)"
    ]
    assert blocker.read_text() == "not a folder\n"
