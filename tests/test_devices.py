"""The device ledger, without a GPU: leases side by side, waiting, dead processes, device choice, two processes;
devices by UUID, the per-user folder, exclusive-process GPUs, SLURM jobs that own their GPUs, jobs per GPU."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from prefit import devices
from prefit.devices import (
    JOBS_PER_GPU,
    LEDGER_FILE,
    LOCK_FILE,
    LedgerError,
    acquire,
    compute_modes,
    cuda_capacities,
    cuda_devices,
    entries,
    exclusive_devices,
    is_exclusive,
    launcher_jobs,
    owns_devices,
    parse_gpu_query,
)

BOUND_S = 60  # deadlock safety only: every wait below ends long before this when the ledger works


def test_leases_that_fit_run_side_by_side(tmp_path):
    a = acquire(40, 10, {"A": 100}, folder=tmp_path)
    b = acquire(40, 10, {"A": 100}, folder=tmp_path)
    assert (a.device, a.granted_bytes, b.device, b.granted_bytes) == ("A", 40, "A", 40)
    assert sorted(e["id"] for e in entries(tmp_path)) == sorted([a.id, b.id])
    c = acquire(100, 10, {"A": 100}, folder=tmp_path)  # asks for all, gets what is left
    assert c.granted_bytes == 20
    for lease in (a, b, c):
        lease.release()
    a.release()  # twice is harmless
    assert entries(tmp_path) == []


def test_a_big_lease_waits_until_a_small_one_is_released(tmp_path):
    small = acquire(60, 60, {"A": 100}, folder=tmp_path)
    got = {}

    def big() -> None:
        got["lease"] = acquire(100, 80, {"A": 100}, folder=tmp_path, poll_s=0.02, timeout_s=BOUND_S)

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive() and "lease" not in got  # 40 bytes free, 80 needed: still waiting
    small.release()
    thread.join(BOUND_S)
    assert not thread.is_alive()
    assert got["lease"].granted_bytes == 100 and got["lease"].waited_s > 0
    got["lease"].release()


def test_waiting_has_a_bound_when_asked_for(tmp_path):
    with acquire(100, 100, {"A": 100}, folder=tmp_path):
        with pytest.raises(TimeoutError):
            acquire(10, 10, {"A": 100}, folder=tmp_path, poll_s=0.01, timeout_s=0.05)


def test_a_lease_is_released_when_its_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with acquire(50, 50, {"A": 100}, folder=tmp_path) as lease:
            assert [e["id"] for e in entries(tmp_path)] == [lease.id]
            raise RuntimeError("the fit failed")
    assert entries(tmp_path) == []


def test_entries_of_dead_processes_are_dropped(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = acquire(10, 10, {"A": 100}, folder=tmp_path)
    ledger = json.loads((tmp_path / LEDGER_FILE).read_text())
    mine = ledger["leases"][0]
    crashed = dict(mine, id="crashed", pid=dead.pid, start=None, bytes=80)
    reused = dict(mine, id="reused", start="-1", bytes=80)  # our pid, but another process's start time
    ledger["leases"] += [crashed, reused]
    (tmp_path / LEDGER_FILE).write_text(json.dumps(ledger))
    assert [e["id"] for e in entries(tmp_path)] == [alive.id]
    lease = acquire(90, 90, {"A": 100}, folder=tmp_path, timeout_s=BOUND_S)  # room again for 90
    assert lease.granted_bytes == 90
    lease.release()
    alive.release()


def test_the_device_with_most_room_is_chosen(tmp_path):
    caps = {"A": 50, "C": 80, "B": 80}  # listed out of alphabetical order: the listing breaks ties
    first = acquire(30, 30, caps, folder=tmp_path)
    second = acquire(30, 30, caps, folder=tmp_path)
    third = acquire(30, 30, caps, folder=tmp_path)
    assert [first.device, second.device, third.device] == ["C", "B", "A"]  # ties go to the first listed
    fourth = acquire(45, 40, caps, folder=tmp_path)  # rooms 20, 50, 50: C, listed before B
    assert (fourth.device, fourth.granted_bytes) == ("C", 45)
    for lease in (first, second, third, fourth):
        lease.release()


def test_a_request_larger_than_any_device_waits_for_a_whole_one(tmp_path):
    lease = acquire(500, 300, {"A": 100, "B": 200}, folder=tmp_path, timeout_s=BOUND_S)
    assert (lease.device, lease.granted_bytes) == ("B", 200)
    lease.release()


def test_an_unreadable_ledger_starts_afresh(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with acquire(100, 100, {"A": 100}, folder=tmp_path) as lease:
        assert lease.granted_bytes == 100


def test_the_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.LEDGER_ENV, str(tmp_path / "ledger"))
    with acquire(1, 1, {"A": 10}):
        assert (tmp_path / "ledger" / LEDGER_FILE).is_file()
    monkeypatch.delenv(devices.LEDGER_ENV)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert devices.ledger_dir() == devices.default_ledger_dir()


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prefit.devices import acquire, entries
    folder, rounds = sys.argv[1], int(sys.argv[2])
    go = Path(folder) / "go"
    deadline = time.time() + 60
    while not go.exists() and time.time() < deadline:  # start together, so that they contend
        time.sleep(0.001)
    for _ in range(rounds):
        with acquire(60, 60, {"A": 100}, folder=folder, poll_s=0.001, timeout_s=60) as lease:
            held = entries(folder)
            assert sum(e["bytes"] for e in held) <= 100, held  # never two 60s on a device of 100
            assert lease.id in {e["id"] for e in held}, held  # no update lost
    print("ok")
    """
)


def test_two_processes_share_the_ledger(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), "200"], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(0.5)
    (tmp_path / "go").touch()
    for proc in procs:
        out, _ = proc.communicate(timeout=BOUND_S * 2)
        assert proc.returncode == 0 and out.strip() == "ok"
    assert entries(tmp_path) == []
    assert json.loads((tmp_path / LEDGER_FILE).read_text()) == {"leases": []}


def test_cuda_capacities_leave_room_for_what_the_ledger_cannot_see(monkeypatch):
    gib = 2**30
    props = {
        0: SimpleNamespace(total_memory=80 * gib, uuid="u-80"),
        1: SimpleNamespace(total_memory=40 * gib, uuid="u-40"),
    }
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.delenv(devices.FRACTION_ENV, raising=False)
    assert cuda_devices() == {"u-80": 0, "u-40": 1} and cuda_devices(only=[1]) == {"u-40": 1}
    assert cuda_capacities() == {"u-80": int(0.9 * 80 * gib), "u-40": int(0.9 * 40 * gib)}
    assert cuda_capacities(0.5, reserve_bytes=4 * gib) == {"u-80": 36 * gib, "u-40": 16 * gib}
    assert cuda_capacities(0.5, reserve_bytes=100 * gib, only=[1]) == {"u-40": 10 * gib}  # never below half
    monkeypatch.setenv(devices.FRACTION_ENV, "0.75")
    assert cuda_capacities(only=[0]) == {"u-80": 60 * gib}
    monkeypatch.setenv(devices.FRACTION_ENV, "most")
    with pytest.raises(ValueError, match=devices.FRACTION_ENV):
        cuda_capacities()


def test_devices_are_told_apart_by_uuid_not_by_index(tmp_path):
    """Two jobs (two SLURM jobs on one node, say) that each see their own GPU as index 0 never share its room."""
    first = acquire(100, 100, {"GPU-aaaa": 100}, folder=tmp_path)  # job 1's device 0
    second = acquire(100, 100, {"GPU-bbbb": 100}, folder=tmp_path, timeout_s=0.05)  # job 2's device 0: all free
    assert (first.device, second.device, second.granted_bytes) == ("GPU-aaaa", "GPU-bbbb", 100)
    assert sorted(e["device"] for e in entries(tmp_path)) == ["GPU-aaaa", "GPU-bbbb"]
    second.release()
    third = acquire(60, 10, {"GPU-aaaa": 100, "GPU-bbbb": 100}, folder=tmp_path)  # a job seeing both
    assert (third.device, third.granted_bytes) == ("GPU-bbbb", 60)
    first.release()
    third.release()


@pytest.fixture
def no_ledger_env(tmp_path, monkeypatch):
    """No $PREFIT_DEVICE_LEDGER, a temp dir in tmp_path, and a umask that grants everything (the code must not rely
    on the usual 022 or 077)."""
    monkeypatch.delenv(devices.LEDGER_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(devices.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    mask = os.umask(0)
    yield tmp_path
    os.umask(mask)


def test_the_default_folder_is_the_users_own(no_ledger_env, monkeypatch):
    tmp = no_ledger_env
    assert devices.default_ledger_dir() == tmp / "tmp" / f"prefit-devices-{os.getuid()}"
    monkeypatch.setattr(os, "getuid", lambda: 4242)
    assert devices.default_ledger_dir() == tmp / "tmp" / "prefit-devices-4242"  # another user: another folder
    (tmp / "run").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp / "run"))  # removed at logout: not where a sweep's leases live
    assert devices.ledger_dir() == tmp / "tmp" / "prefit-devices-4242"
    monkeypatch.setenv(devices.LEDGER_ENV, str(tmp / "chosen"))
    assert devices.ledger_dir() == tmp / "chosen"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_default_folder_and_its_files_are_private(no_ledger_env):
    folder = devices.default_ledger_dir()
    with acquire(10, 10, {"A": 100}):
        pass
    assert mode(folder) == 0o700
    assert mode(folder / LOCK_FILE) == 0o600 and mode(folder / LEDGER_FILE) == 0o600
    os.chmod(folder, 0o777)  # widened by someone: made private again
    entries()
    assert mode(folder) == 0o700
    chosen = no_ledger_env / "chosen" / "ledger"  # a folder the user names is made private too when it is made
    acquire(10, 10, {"A": 100}, folder=chosen).release()
    assert mode(chosen) == 0o700 and mode(chosen / LEDGER_FILE) == 0o600
    os.umask(0o277)  # a umask that would leave the owner unable to write
    strict = no_ledger_env / "strict"
    acquire(10, 10, {"A": 100}, folder=strict).release()
    assert mode(strict) == 0o700 and mode(strict / LOCK_FILE) == 0o600 and mode(strict / LEDGER_FILE) == 0o600


def test_another_users_folder_is_refused_in_one_line(no_ledger_env, monkeypatch):
    folder = no_ledger_env / "tmp" / "prefit-devices-4242"
    folder.mkdir()  # owned by the user running the tests, who now poses as uid 4242
    monkeypatch.setattr(os, "getuid", lambda: 4242)
    with pytest.raises(LedgerError, match=devices.LEDGER_ENV) as error:
        acquire(10, 10, {"A": 100}, timeout_s=0)
    assert "\n" not in str(error.value) and "another user" in str(error.value)
    assert not (folder / LOCK_FILE).exists()
    monkeypatch.setenv(devices.LEDGER_ENV, str(folder))  # named explicitly: still not ours
    with pytest.raises(LedgerError, match="another user"):
        entries()
    link = no_ledger_env / "tmp" / "prefit-devices-4243"
    link.symlink_to(folder)
    monkeypatch.delenv(devices.LEDGER_ENV)
    monkeypatch.setattr(os, "getuid", lambda: 4243)
    with pytest.raises(LedgerError, match="symbolic link"):  # planted in the shared temp dir
        entries()


@pytest.mark.parametrize(
    "env,jobs,owned",
    [
        ({"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "0"}, 1, True),
        ({"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "0,1"}, 1, True),
        ({"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "0"}, 3, False),  # jobs side by side inside the allocation
        ({"SLURM_JOB_ID": "17"}, 1, False),  # GPUs the scheduler did not hand out
        ({"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": ""}, 1, False),
        ({"CUDA_VISIBLE_DEVICES": "0"}, 1, False),  # a workstation: others may use the GPU
        ({"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "0", "SLURM_SHARDS_ON_NODE": "2"}, 1, False),
        ({}, 1, False),
    ],
)
def test_the_ledger_steps_aside_only_for_a_job_alone_on_its_own_gpus(env, jobs, owned):
    assert owns_devices(env, jobs) is owned


NVIDIA_SMI = """GPU-1d5e6f0a-1111-2222-3333-444455556666, Default
GPU-9A8B7C6D-AAAA-BBBB-CCCC-DDDDEEEEFFFF, Exclusive_Process
GPU-00000000-0000-0000-0000-000000000000, Prohibited

"""


def test_compute_modes_from_nvidia_smi(monkeypatch):
    modes = parse_gpu_query(NVIDIA_SMI)
    assert modes == {
        "1d5e6f0a-1111-2222-3333-444455556666": "Default",
        "9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff": "Exclusive_Process",
        "00000000-0000-0000-0000-000000000000": "Prohibited",
    }
    assert all(map(is_exclusive, ("Exclusive_Process", "Exclusive_Thread", "exclusive process")))
    assert not any(map(is_exclusive, ("Default", "Prohibited", "[N/A]", None)))
    torch_ids = ["1d5e6f0a-1111-2222-3333-444455556666", "9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff", "GPU-unknown"]
    assert exclusive_devices(torch_ids, modes) == {"9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff"}
    assert exclusive_devices(torch_ids, None) == set()

    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML bindings: nvidia-smi answers
    answers = {"run": lambda *a, **k: SimpleNamespace(returncode=0, stdout=NVIDIA_SMI)}
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: answers["run"](*a, **k))
    assert compute_modes() == modes
    answers["run"] = lambda *a, **k: SimpleNamespace(returncode=9, stdout="NVIDIA-SMI has failed")
    assert compute_modes() is None

    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    answers["run"] = missing
    assert compute_modes() is None


def test_compute_modes_from_nvml(monkeypatch):
    uuids = [b"GPU-AAAA", "GPU-bbbb"]
    nvml = SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: uuids[h],
        nvmlDeviceGetComputeMode=lambda h: [3, 0][h],
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: pytest.fail("NVML answered"))
    assert compute_modes() == {"aaaa": "Exclusive_Process", "bbbb": "Default"}


def test_an_exclusive_device_is_leased_whole_to_one_process(tmp_path):
    with acquire(10, 10, {"X": 100}, exclusive={"X"}, folder=tmp_path) as lease:
        assert lease.granted_bytes == 100 and lease.exclusive  # alone on it: all of it
        with pytest.raises(TimeoutError):
            acquire(10, 10, {"X": 100}, exclusive={"X"}, folder=tmp_path, poll_s=0.01, timeout_s=0.05)
    kept = entries(tmp_path)  # released: the process's CUDA context stays on the device while it lives
    assert [(e["device"], e["bytes"], e.get("context")) for e in kept] == [("X", 0, True)]
    with acquire(10, 10, {"X": 100}, exclusive={"X"}, folder=tmp_path, timeout_s=0) as again:
        assert again.granted_bytes == 100  # its own context does not stop it
        assert [e["id"] for e in entries(tmp_path)] == [again.id]  # the lease took the context entry's place
    with acquire(30, 10, {"X": 100}, folder=tmp_path, timeout_s=0) as shared:
        assert shared.granted_bytes == 30 and not shared.exclusive  # a context holds no bytes on a shared device


def test_another_process_on_an_exclusive_device_keeps_others_off_it(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ledger = {"leases": [dict(id="ctx", device="X", bytes=0, context=True, pid=other.pid, start=None)]}
        (tmp_path / LEDGER_FILE).write_text(json.dumps(ledger))
        with pytest.raises(TimeoutError):
            acquire(10, 10, {"X": 100}, exclusive={"X"}, folder=tmp_path, poll_s=0.01, timeout_s=0.05)
        with acquire(10, 10, {"X": 100, "Y": 100}, exclusive={"X"}, folder=tmp_path, timeout_s=0) as lease:
            assert lease.device == "Y"  # the shared device, though X is listed first
        with acquire(10, 10, {"X": 100}, folder=tmp_path, timeout_s=0) as shared:
            assert shared.granted_bytes == 10  # not exclusive in this caller's view: the context holds no bytes
    finally:
        other.kill()
        other.wait()
    caps = {"Y": 100, "X": 100}
    with acquire(10, 10, {"X": 100}, exclusive={"X"}, folder=tmp_path, timeout_s=BOUND_S) as lease:
        assert lease.device == "X"  # the other process died, and its context with it
    # a process holds one exclusive device at most (it cannot drop its context): X again, though Y is listed first
    with acquire(10, 10, caps, exclusive={"X", "Y"}, folder=tmp_path, timeout_s=0) as lease:
        assert lease.device == "X"
        with pytest.raises(TimeoutError):  # X taken by its other lease, and Y not for this process
            acquire(10, 10, caps, exclusive={"X", "Y"}, folder=tmp_path, poll_s=0.01, timeout_s=0.05)


@pytest.mark.parametrize(
    "requested,cores,gpus,exclusive,jobs",
    [
        (-1, 16, 0, 0, 16),  # no GPU: one per core, as joblib reads -1
        (-1, 16, 1, 0, JOBS_PER_GPU),
        (-1, 16, 2, 0, 2 * JOBS_PER_GPU),
        (-1, 16, 2, 1, JOBS_PER_GPU + 1),  # one job on the exclusive-process GPU
        (-1, 16, 2, 2, 2),
        (-1, 16, 1, 5, 1),  # more exclusive GPUs than GPUs: all of them
        (-1, 4, 2, 0, 4),  # at most one per core
        (-1, 1, 1, 0, 1),
        (5, 16, 2, 0, 5),  # asked for: as asked
        (64, 16, 0, 0, 64),
        (-2, 16, 0, 0, 15),  # joblib: all cores but one
        (-2, 16, 2, 0, 15),
    ],
)
def test_jobs_per_gpu(requested, cores, gpus, exclusive, jobs):
    assert launcher_jobs(requested, cores, gpus, exclusive) == jobs


def test_jobs_per_gpu_refuses_zero():
    with pytest.raises(ValueError):
        launcher_jobs(0, 16, 1, 0)


def test_gpu_query_asks_nvidia_smi_for_a_field_by_uuid(monkeypatch):
    asked = []

    def run(command, **kwargs):
        asked.append(command)
        return SimpleNamespace(returncode=0, stdout="GPU-AAAA-1, 550.54.15\nGPU-bbbb-2, 550.54.15\n")

    monkeypatch.setattr(devices.subprocess, "run", run)
    assert devices.gpu_query("driver_version") == {"aaaa-1": "550.54.15", "bbbb-2": "550.54.15"}
    assert asked == [["nvidia-smi", "--query-gpu=uuid,driver_version", "--format=csv,noheader"]]
