"""The device ledger, without a GPU: leases side by side, waiting, dead processes, device choice, two processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from prefit import devices
from prefit.devices import LEDGER_FILE, acquire, cuda_capacities, entries

BOUND_S = 60  # deadlock safety only: every wait below ends long before this when the ledger works


def test_leases_that_fit_run_side_by_side(tmp_path):
    a = acquire(40, 10, {0: 100}, folder=tmp_path)
    b = acquire(40, 10, {0: 100}, folder=tmp_path)
    assert (a.device, a.granted_bytes, b.device, b.granted_bytes) == (0, 40, 0, 40)
    assert sorted(e["id"] for e in entries(tmp_path)) == sorted([a.id, b.id])
    c = acquire(100, 10, {0: 100}, folder=tmp_path)  # asks for all, gets what is left
    assert c.granted_bytes == 20
    for lease in (a, b, c):
        lease.release()
    a.release()  # twice is harmless
    assert entries(tmp_path) == []


def test_a_big_lease_waits_until_a_small_one_is_released(tmp_path):
    small = acquire(60, 60, {0: 100}, folder=tmp_path)
    got = {}

    def big() -> None:
        got["lease"] = acquire(100, 80, {0: 100}, folder=tmp_path, poll_s=0.02, timeout_s=BOUND_S)

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
    with acquire(100, 100, {0: 100}, folder=tmp_path):
        with pytest.raises(TimeoutError):
            acquire(10, 10, {0: 100}, folder=tmp_path, poll_s=0.01, timeout_s=0.05)


def test_a_lease_is_released_when_its_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with acquire(50, 50, {0: 100}, folder=tmp_path) as lease:
            assert [e["id"] for e in entries(tmp_path)] == [lease.id]
            raise RuntimeError("the fit failed")
    assert entries(tmp_path) == []


def test_entries_of_dead_processes_are_dropped(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = acquire(10, 10, {0: 100}, folder=tmp_path)
    ledger = json.loads((tmp_path / LEDGER_FILE).read_text())
    mine = ledger["leases"][0]
    crashed = dict(mine, id="crashed", pid=dead.pid, start=None, bytes=80)
    reused = dict(mine, id="reused", start="-1", bytes=80)  # our pid, but another process's start time
    ledger["leases"] += [crashed, reused]
    (tmp_path / LEDGER_FILE).write_text(json.dumps(ledger))
    assert [e["id"] for e in entries(tmp_path)] == [alive.id]
    lease = acquire(90, 90, {0: 100}, folder=tmp_path, timeout_s=BOUND_S)  # room again for 90
    assert lease.granted_bytes == 90
    lease.release()
    alive.release()


def test_the_device_with_most_room_is_chosen(tmp_path):
    caps = {0: 50, 1: 80, 2: 80}
    first = acquire(30, 30, caps, folder=tmp_path)
    second = acquire(30, 30, caps, folder=tmp_path)
    third = acquire(30, 30, caps, folder=tmp_path)
    assert [first.device, second.device, third.device] == [1, 2, 0]  # ties go to the lower index
    fourth = acquire(45, 40, caps, folder=tmp_path)  # rooms 20, 50, 50: device 1 has 50
    assert (fourth.device, fourth.granted_bytes) == (1, 45)
    for lease in (first, second, third, fourth):
        lease.release()


def test_a_request_larger_than_any_device_waits_for_a_whole_one(tmp_path):
    lease = acquire(500, 300, {0: 100, 1: 200}, folder=tmp_path, timeout_s=BOUND_S)
    assert (lease.device, lease.granted_bytes) == (1, 200)
    lease.release()


def test_an_unreadable_ledger_starts_afresh(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with acquire(100, 100, {0: 100}, folder=tmp_path) as lease:
        assert lease.granted_bytes == 100


def test_the_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.LEDGER_ENV, str(tmp_path / "ledger"))
    with acquire(1, 1, {0: 10}):
        assert (tmp_path / "ledger" / LEDGER_FILE).is_file()
    monkeypatch.delenv(devices.LEDGER_ENV)
    assert devices.ledger_dir().name == "prefit-devices"


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
        with acquire(60, 60, {0: 100}, folder=folder, poll_s=0.001, timeout_s=60) as lease:
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
    totals = {0: 80 * gib, 1: 40 * gib}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=totals[i]))
    monkeypatch.delenv(devices.FRACTION_ENV, raising=False)
    assert cuda_capacities() == {0: int(0.9 * 80 * gib), 1: int(0.9 * 40 * gib)}
    assert cuda_capacities(0.5, reserve_bytes=4 * gib) == {0: 36 * gib, 1: 16 * gib}
    assert cuda_capacities(0.5, reserve_bytes=100 * gib, only=[1]) == {1: 10 * gib}  # never below half
    monkeypatch.setenv(devices.FRACTION_ENV, "0.75")
    assert cuda_capacities(only=[0]) == {0: 60 * gib}
    monkeypatch.setenv(devices.FRACTION_ENV, "most")
    with pytest.raises(ValueError, match=devices.FRACTION_ENV):
        cuda_capacities()
