"""A cell folder's record (prefit.records): what is skipped, resumed or refused, what names a study, and the claim
that leaves a cell to one job at a time."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from prefit import records
from prefit.config import ARITHMETIC_KEYS, RUNTIME_KEYS, Config, MetaConfig, cell_folder, study_config
from prefit.errors import ConfigError
from prefit.io import process_start
from prefit.keys import config_diff


def study(**changes) -> dict:
    cfg = Config()
    cfg.dataset.name, cfg.dataset.path = "cifar_dir", "data/sample"
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return study_config(cfg)


def complete_folder(tmp_path: Path, study_dict: dict) -> Path:
    out = tmp_path / "cell"
    out.mkdir(parents=True)
    (out / "psnr.parquet").write_bytes(b"parquet bytes" * 100)
    (out / "recon.npz").write_bytes(b"npz bytes" * 100)
    records.complete(out, {"study": study_dict, "cell": {"hls": 2, "hfs": 32}})
    return out


def test_runtime_and_arithmetic_keys_are_derived_from_the_schema():
    keys = set(RUNTIME_KEYS)
    assert {"train.device", "train.threads", "train.overwrite", "dataset.root", "scheme.meta.cache_dir"} <= keys
    assert not {"train.lr", "train.epochs", "train.engine", "dataset.path", "model.hfs", "seed"} & keys
    arithmetic = set(ARITHMETIC_KEYS)
    assert {"train.engine", "train.matmul_precision", "train.kernels", "train.device", "train.threads"} <= arithmetic
    assert not {"train.lr", "train.eps", "train.progress", "train.overwrite", "model.hfs", "seed"} & arithmetic


def test_the_study_leaves_out_how_a_job_runs_and_resolves_the_data_path(monkeypatch, tmp_path):
    base = study()
    assert base == study(train__device="cpu", train__threads=1, train__max_members=7, dataset__root="/x")
    assert "device" not in base["train"] and "root" not in base["dataset"] and "experiment" not in base
    monkeypatch.chdir(tmp_path)
    assert study(dataset__path=str(tmp_path / "data" / "sample")) == study()
    assert study(train__lr=2e-4) != base
    cfg = Config()
    cfg.scheme.meta = MetaConfig(cache_dir="/one")
    other = Config()
    other.scheme.meta = MetaConfig(cache_dir="/two")
    assert study_config(cfg) == study_config(other)


def test_folder_names_leave_out_runtime_keys():
    overrides = "model.hls=2,model.hfs=32,train.device=cpu,+train.threads=1,protocol=chained,train.lr=0.001"
    assert cell_folder(2, 32, overrides) == "2hls_32hfs,protocol=chained,train.lr=0.001"
    listed = "+experiment=[grid,smoke],model.hls=2,scheme=[random,meta],dataset.path=/a,hydra.launcher.n_jobs=2"
    assert cell_folder(2, 32, listed) == "2hls_32hfs,scheme=[random,meta]"


def test_complete_intact_result_is_skipped_and_a_damaged_one_is_not(tmp_path):
    out = complete_folder(tmp_path, study())
    assert records.job_action(out, study(), overwrite=False) == "skip"
    assert records.job_action(out, study(), overwrite=True) == "run"
    recon = out / "recon.npz"
    recon.write_bytes(recon.read_bytes()[:-1] + b"X")  # same size, other content
    assert records.job_action(out, study(), overwrite=False) == "run"


def test_truncated_or_missing_files_are_computed_again(tmp_path):
    out = complete_folder(tmp_path, study())
    parquet = out / "psnr.parquet"
    parquet.write_bytes(parquet.read_bytes()[:10])
    assert records.job_action(out, study(), overwrite=False) == "run"
    out2 = complete_folder(tmp_path / "b", study())
    (out2 / "recon.npz").unlink()
    assert records.job_action(out2, study(), overwrite=False) == "run"


def test_another_study_is_refused_with_the_keys_that_differ(tmp_path):
    out = complete_folder(tmp_path, study())
    with pytest.raises(ConfigError, match=r"train\.epochs.*hydra\.sweep\.dir.*train\.overwrite=true"):
        records.job_action(out, study(train__epochs=30), overwrite=False)
    assert records.job_action(out, study(train__epochs=30), overwrite=True) == "run"


def test_a_claim_left_by_a_killed_job_resumes_for_its_study_only(tmp_path):
    out = tmp_path / "cell"
    out.mkdir()
    records.claim(out, study(), "2026-01-01T00:00:00")
    (out / "psnr.parquet").write_bytes(b"a parquet of the killed job")
    assert records.job_action(out, study(), overwrite=False) == "run"
    with pytest.raises(ConfigError, match="seed"):
        records.job_action(out, study(seed=1), overwrite=False)


def test_leftover_temporary_files_are_removed_and_an_unreadable_record_refused(tmp_path):
    out = tmp_path / "cell"
    out.mkdir()
    (out / ".psnr.parquet.x1.tmp").write_bytes(b"half")
    assert records.job_action(out, study(), overwrite=False) == "run"
    assert not list(out.glob(".*.tmp"))
    (out / "run.json").write_text('{"status": "compl')
    with pytest.raises(ConfigError, match="unreadable"):
        records.job_action(out, study(), overwrite=False)


def test_records_of_earlier_versions_compare_on_what_changes_results(tmp_path):
    """Earlier run.json files kept dataset.root and a relative dataset.path in their study; they name the same
    study, though without file hashes they are computed again rather than trusted."""
    old = json.loads(json.dumps(study()))
    old["dataset"]["root"] = "/old/cache"
    old["dataset"]["path"] = "data/sample"
    out = tmp_path / "cell"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "complete", "study": old}))
    assert records.job_action(out, study(), overwrite=False) == "run"


def test_config_diff_is_dotted_and_sorted_and_reads_null_as_absent():
    assert config_diff({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 4}, "e": 5}) == ["a.c", "d", "e"]
    assert config_diff({"a": {"b": None, "x": 1}, "c": None}, {"a": {"x": 1}}) == []
    assert config_diff({"s": {"random": {}}}, {"s": {"random": None}}) == ["s.random"]  # selected vs not


def test_a_record_written_before_a_field_existed_still_names_the_same_study(tmp_path):
    """dataset.resolution came after the first sweeps: their run.json lacks it, the study now holds it as null.
    Such a result is still this study's (skipped when intact); a real value there is another study."""
    old = json.loads(json.dumps(study()))
    del old["dataset"]["resolution"]
    out = complete_folder(tmp_path, old)
    assert records.job_action(out, study(), overwrite=False) == "skip"
    with pytest.raises(ConfigError, match="dataset.resolution"):
        records.job_action(out, study(dataset__resolution=32), overwrite=False)


# claim.json: one job per cell at a time (records.hold_cell)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_claim(out: Path, **fields) -> dict:
    """A claim.json as another process would leave it: this host, a dead process, unless told otherwise."""
    record = {
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "start": "1",
        "slurm": None,
        "token": uuid.uuid4().hex,
        "started": "2026-01-01T00:00:00+00:00",
        "stale_s": 60,
        **fields,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / records.CLAIM_FILE).write_text(json.dumps(record))
    return record


def test_a_claim_is_exclusive_names_its_holder_and_goes_at_the_end(tmp_path, caplog):
    out = tmp_path / "cell"
    caplog.set_level(logging.INFO, logger="prefit.records")
    with records.hold_cell(out, study(), stale_s=60) as claim:
        assert claim.held and claim.reason == ""
        record = json.loads((out / records.CLAIM_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["start"] == process_start(os.getpid()) and record["token"] == claim.token
        assert record["study"] == study() and record["started"]
        with records.hold_cell(out, study(), stale_s=60) as second:  # this process again: the claim is live
            assert not second.held and second.reason == "held" and second.holder["token"] == claim.token
        assert (out / records.CLAIM_FILE).is_file()  # the second left the first's claim alone
    assert f"pid {os.getpid()} on {socket.gethostname()}" in caplog.text and "skipped here" in caplog.text
    assert not (out / records.CLAIM_FILE).exists() and os.listdir(out) == []
    with records.hold_cell(out, study(), stale_s=60) as again:
        assert again.held


def test_a_claim_whose_process_is_gone_or_whose_pid_was_reused_is_taken_over(tmp_path, caplog):
    for case, fields in (("dead", {}), ("reused", {"pid": os.getppid(), "start": "0"})):
        out = tmp_path / case
        old = write_claim(out, **fields)
        caplog.clear()
        with records.hold_cell(out, study(), stale_s=60) as claim:
            assert claim.held
            assert json.loads((out / records.CLAIM_FILE).read_text())["token"] == claim.token
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert f"pid {old['pid']}" in warnings[0].getMessage() and "its process is gone" in warnings[0].getMessage()
        assert os.listdir(out) == []  # no guard left behind


def test_a_claim_silent_past_stale_s_is_taken_over_and_a_live_one_is_not(tmp_path, monkeypatch, caplog):
    out = tmp_path / "cell"
    caplog.set_level(logging.INFO, logger="prefit.records")
    old = write_claim(out, host="node-elsewhere", pid=4242, stale_s=60)
    with records.hold_cell(out, study(), stale_s=60) as claim:  # another host's claim, 0 s old: live
        assert not claim.held and claim.holder["token"] == old["token"]
    assert "pid 4242 on node-elsewhere" in caplog.text and "heartbeat 0 s ago" in caplog.text
    assert json.loads((out / records.CLAIM_FILE).read_text())["token"] == old["token"]
    real = time.time
    monkeypatch.setattr(records, "_now", lambda: real() + 61)
    caplog.clear()
    with records.hold_cell(out, study(), stale_s=60) as claim:
        assert claim.held
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "pid 4242 on node-elsewhere" in warning and "silent for 61 s" in warning and "heartbeat 61 s ago" in warning


def test_the_holders_own_stale_s_counts_when_longer(tmp_path, monkeypatch):
    out = tmp_path / "cell"
    write_claim(out, host="node-elsewhere", pid=4242, stale_s=600)
    real = time.time
    monkeypatch.setattr(records, "_now", lambda: real() + 61)
    with records.hold_cell(out, study(), stale_s=60) as claim:  # its heartbeat comes every 150 s: not silent yet
        assert not claim.held


def test_a_requeued_slurm_job_takes_over_its_own_earlier_claim(tmp_path, monkeypatch, caplog):
    out = tmp_path / "cell"
    write_claim(out, host="node-elsewhere", pid=4242, slurm={"job": "77", "restart": 0})
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with records.hold_cell(out, study(), stale_s=60) as claim:  # the same run of the job: not its claim to take
        assert not claim.held
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with records.hold_cell(out, study(), stale_s=60) as claim:
        assert claim.held
        assert json.loads((out / records.CLAIM_FILE).read_text())["slurm"] == {"job": "77", "restart": 1}
    assert "its SLURM job was requeued" in caplog.text and "(SLURM job 77)" in caplog.text


def test_the_heartbeat_refreshes_the_claim_and_notices_a_takeover(tmp_path, caplog):
    out = tmp_path / "cell"
    path = out / records.CLAIM_FILE
    with records.hold_cell(out, study(), stale_s=0.4) as claim:  # a heartbeat every 0.1 s
        old = time.time() - 1000
        os.utime(path, (old, old))
        deadline = time.time() + 30
        while path.stat().st_mtime < old + 500 and time.time() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > old + 500
        assert not claim.lost
        other = write_claim(out, host="node-elsewhere", pid=4242)  # taken over while this job was frozen
        while not claim.lost and time.time() < deadline:
            time.sleep(0.02)
        assert claim.lost
    assert json.loads(path.read_text())["token"] == other["token"]  # the taker's claim stays
    assert "taken over" in caplog.text


def test_a_guard_left_by_a_taker_that_died_is_taken_over_too(tmp_path):
    out = tmp_path / "cell"
    old = write_claim(out)
    guard = out / f".{records.CLAIM_FILE}.taking-{old['token']}"
    guard.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "token": uuid.uuid4().hex}))
    with records.hold_cell(out, study(), stale_s=60) as claim:
        assert claim.held
        assert not guard.exists()
    assert os.listdir(out) == []


def test_waiting_for_a_holder_that_completes_the_cell_ends_in_skip(tmp_path):
    out = tmp_path / "cell"
    held = threading.Event()

    def other_job():
        with records.hold_cell(out, study(), stale_s=60) as claim:
            assert claim.held
            held.set()
            time.sleep(0.5)
            (out / "psnr.parquet").write_bytes(b"parquet bytes")
            (out / "recon.npz").write_bytes(b"npz bytes")
            records.complete(out, {"study": study()})

    thread = threading.Thread(target=other_job)
    thread.start()
    assert held.wait(30)
    with records.hold_cell(out, study(), stale_s=60, wait=True, poll_s=0.05) as claim:
        assert not claim.held and claim.reason == "complete"
    thread.join()
    assert records.job_action(out, study(), overwrite=False) == "skip"
    assert not (out / records.CLAIM_FILE).exists()


def test_temporary_files_of_a_claimed_folder_are_left_to_its_holder(tmp_path):
    out = tmp_path / "cell"
    write_claim(out, host="node-elsewhere", pid=4242)
    (out / ".psnr.parquet.x1.tmp").write_bytes(b"being written")
    assert records.job_action(out, study(), overwrite=False) == "run"
    assert (out / ".psnr.parquet.x1.tmp").exists()
    (out / records.CLAIM_FILE).unlink()
    write_claim(out)  # a dead holder: its temporary files go once the cell is held
    with records.hold_cell(out, study(), stale_s=60) as claim:
        assert claim.held and not (out / ".psnr.parquet.x1.tmp").exists()


def test_threads_taking_a_stale_claim_at_once_leave_it_to_one(tmp_path):
    out = tmp_path / "cell"
    write_claim(out)
    start, results = threading.Barrier(8), []

    def contend():
        start.wait(30)
        with records.hold_cell(out, study(), stale_s=60) as claim:
            results.append(claim.held)
            if claim.held:
                time.sleep(1.0)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [False] * 7 + [True]
    assert os.listdir(out) == []


def _contend(out: str, barrier, results, hold_s: float) -> None:
    barrier.wait(60)
    with records.hold_cell(Path(out), {"seed": 1}, stale_s=60) as claim:
        results.put(claim.held)
        if claim.held:
            time.sleep(hold_s)


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_processes_claiming_a_cell_at_once_leave_it_to_one(tmp_path, stale):
    out = tmp_path / "cell"
    if stale:
        write_claim(out)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(out), barrier, results, 2.0)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(results.get(timeout=10) for _ in procs) == [False, False, False, True]
    assert os.listdir(out) == []
