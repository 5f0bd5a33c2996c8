"""The batched engine equals the sequential reference; its hand-written backward equals autograd."""

import math

import pytest
import torch
from images import smooth_images
from reference import batched_forward, loss_and_grads

from prefit.config import TrainConfig
from prefit.data import coordinate_grid
from prefit.engine import (
    capture,
    fit_batched,
    fit_sequential,
    psnr_from_loss,
    snapshot_epochs_resolved,
)
from prefit.engine.batched import DeviceChunk, HostChunk
from prefit.engine.common import snapshot_index
from prefit.model import SIREN, init_params, stack_params, triple_generator

CPU = torch.device("cpu")


def members(n: int, hls: int = 2, hfs: int = 16):
    return stack_params([init_params(hls, hfs, 30.0, triple_generator(7, i)) for i in range(n)])


def both_engines(n: int, train: TrainConfig, max_members: int, hls: int = 2, hfs: int = 16):
    """The batched and the sequential engine's results on the same n members and targets."""
    params, targets = members(n, hls, hfs), smooth_images(n)
    batched = fit_batched(params, targets, coordinate_grid(), train, SIREN, CPU, max_members=max_members)
    return batched, fit_sequential(params, targets, coordinate_grid(), train, SIREN, CPU)


def psnr_gap(a, b) -> float:
    """Largest PSNR difference (dB) between two results, over members and epochs."""
    return (psnr_from_loss(a.loss) - psnr_from_loss(b.loss)).abs().max().item()


def test_hand_written_backward_equals_autograd():
    params = members(3, hls=3, hfs=12)
    target = smooth_images(3)
    loss, pred, grads = loss_and_grads(params, coordinate_grid(), target, 30.0)
    leaves = [(w.clone().requires_grad_(True), b.clone().requires_grad_(True)) for w, b in params]
    ref_pred = batched_forward(leaves, coordinate_grid(), 30.0)
    ref_loss = (ref_pred - target).square().mean(dim=(1, 2))
    ref_loss.sum().backward()  # members are independent: the sum's gradient is each member's own
    torch.testing.assert_close(loss, ref_loss.detach())
    torch.testing.assert_close(pred, ref_pred.detach())
    for (gw, gb), (w, b) in zip(grads, leaves):
        torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gb, b.grad, rtol=1e-4, atol=1e-6)


def test_engines_agree_on_psnr_trajectories():
    batched, sequential = both_engines(6, TrainConfig(epochs=100, progress=False), max_members=4)
    gap = psnr_gap(batched, sequential)
    assert gap < 1e-3, f"engines differ by {gap:.2e} dB"
    assert (psnr_from_loss(batched.loss[:, -1]) > psnr_from_loss(batched.loss[:, 0]) + 0.5).all()  # they fit
    assert torch.equal(batched.lr, sequential.lr)
    torch.testing.assert_close(batched.snapshots, sequential.snapshots, rtol=0, atol=1e-3)
    for (wb, _bb), (ws, _bs) in zip(batched.params, sequential.params):
        torch.testing.assert_close(wb, ws, rtol=1e-3, atol=1e-5)


def test_engines_agree_when_the_plateau_schedule_acts():
    train = TrainConfig(epochs=100, progress=False, plateau_patience=3, plateau_threshold=0.05, lr=1e-3)
    batched, sequential = both_engines(2, train, max_members=2)
    assert torch.equal(batched.lr, sequential.lr)
    assert batched.lr[:, -1].min() < 1e-3  # the schedule acted
    assert psnr_gap(batched, sequential) < 1e-3


def test_chunking_does_not_change_results():
    train = TrainConfig(epochs=40, progress=False)
    params, targets = members(5), smooth_images(5)
    whole = fit_batched(params, targets, coordinate_grid(), train, SIREN, CPU, max_members=5)
    chunked = fit_batched(params, targets, coordinate_grid(), train, SIREN, CPU, max_members=2)
    torch.testing.assert_close(whole.loss, chunked.loss, rtol=1e-5, atol=0)
    for (a, _), (b, _) in zip(whole.params, chunked.params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_diverging_member_does_not_poison_the_others():
    train = TrainConfig(epochs=30, progress=False)
    params, targets = members(4), smooth_images(4)
    clean = fit_batched(params, targets, coordinate_grid(), train, SIREN, CPU, max_members=4)
    poisoned_targets = targets.clone()
    poisoned_targets[1, 0, 0] = float("nan")
    poisoned = fit_batched(params, poisoned_targets, coordinate_grid(), train, SIREN, CPU, max_members=4)
    assert poisoned.loss[1].isnan().all()
    keep = [0, 2, 3]
    torch.testing.assert_close(poisoned.loss[keep], clean.loss[keep], rtol=1e-6, atol=0)
    assert torch.isfinite(poisoned.params[0][0][keep]).all()


def test_snapshots_are_the_predictions_behind_the_recorded_psnr():
    train = TrainConfig(epochs=12, progress=False, snapshot_epochs=[0, 5, 99, -1])
    assert snapshot_epochs_resolved(12, train.snapshot_epochs) == [0, 5, 11]  # 99 dropped, -1 = last
    params, targets = members(2), smooth_images(2)
    result = fit_batched(params, targets, coordinate_grid(), train, SIREN, CPU, max_members=2)
    assert result.snapshots.shape == (2, 3, 1024, 3)
    for slot, epoch in enumerate([0, 5, 11]):
        mse = (result.snapshots[:, slot] - targets).square().mean(dim=(1, 2))
        torch.testing.assert_close(mse, result.loss[:, epoch])


def test_the_device_loop_of_the_torch_step_equals_the_host_loop_bit_for_bit():
    """DeviceChunk, the torch step with its schedule, records and snapshot slots on the device (captured on CUDA),
    run eagerly here against HostChunk's host-driven loop with the same step and torch's multi-tensor Adam (as on
    CUDA): losses, rates, snapshots and weights bit for bit, over a fit whose plateau schedule acts, and again over
    a second run after `rewind`, which records from row 0 while the fit goes on."""
    train = TrainConfig(
        epochs=40, progress=False, lr=1e-3, plateau_patience=3, plateau_threshold=0.1, snapshot_epochs=[0, 7, 25, -1]
    )
    params, targets, coords = members(3), smooth_images(3), coordinate_grid()
    slots = snapshot_index(train.epochs, train.snapshot_epochs)
    host = HostChunk(params, coords, targets, train, SIREN, slots, "torch")
    host.adam.compiled = False  # the multi-tensor Adam, which runs on CUDA (on a CPU the compiled one)
    device = DeviceChunk(params, coords, targets, train, SIREN, slots)
    reported = []
    for run in range(2):
        host.run()
        device.rewind()
        device.run(capture=False, progress=lambda n, loss: reported.append((n, loss.clone())))
        assert torch.equal(device.losses, host.losses) and torch.equal(device.lrs, host.lrs), f"run {run}"
        assert torch.equal(device.snaps, host.snaps), f"run {run}"
        for (w, b), (host_w, host_b) in zip(device.step.params, host.step.params):
            assert torch.equal(w, host_w) and torch.equal(b, host_b), f"run {run}"
        assert (host.lrs[1:] != host.lrs[:-1]).any(dim=0).all()  # the schedule acted on every member in this run
    assert host.snaps.isfinite().all() and not torch.equal(host.snaps[:, 0], host.snaps[:, 1])
    assert sum(n for n, _ in reported) == 2 * train.epochs and torch.equal(reported[-1][1], host.losses[-1])
    assert device.steady_seconds()[1] == train.epochs  # the second run's epochs: all steady ones


def test_a_device_loop_run_past_its_epochs_rewrites_the_last_row():
    """As FusedChunk: without `rewind`, a second run's records go to the last row and no snapshot is taken."""
    train = TrainConfig(epochs=3, progress=False, snapshot_epochs=[0, -1])
    params, targets, coords = members(2), smooth_images(2), coordinate_grid()
    chunk = DeviceChunk(params, coords, targets, train, SIREN, snapshot_index(3, train.snapshot_epochs))
    chunk.run(capture=False)
    first, snaps = chunk.losses.clone(), chunk.snaps.clone()
    chunk.run(capture=False)
    assert torch.equal(chunk.losses[:2], first[:2]) and not torch.equal(chunk.losses[2], first[2])
    assert torch.equal(chunk.snaps, snaps)
    assert chunk.counter.item() == 6


def test_one_capture_stream_per_device(monkeypatch):
    """Chunks capture on one stream per device and process: torch keeps a cuBLAS workspace per stream that
    empty_cache does not free. Counted here with streams stood in for (no GPU needed)."""
    made = []
    monkeypatch.setattr(capture, "_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(device) or object())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    first = capture.capture_stream(torch.device("cuda", 0))
    assert capture.capture_stream(torch.device("cuda", 0)) is first
    second = capture.capture_stream(torch.device("cuda"))  # the current device's
    assert second is not first and capture.capture_stream(torch.device("cuda", 1)) is second
    assert made == [0, 1]


def test_psnr_from_loss():
    loss = torch.tensor([4.0, 0.04, 0.0])  # [-1, 1] scale: 4 x the [0, 1] mse
    assert psnr_from_loss(loss).tolist() == pytest.approx([0.0, 20.0, math.inf])


@pytest.mark.parametrize("members,max_members,cores", [(100, 30, 2), (100, 5, 2), (7, 100, 2), (3, 1, 2), (9, 4, 1)])
def test_chunks_cover_members_once_and_balance_cores(members, max_members, cores):
    from prefit.engine.batched import _chunks

    chunks = _chunks(members, max_members, cores)
    covered = [i for c in chunks for i in range(c.start, c.stop)]
    assert covered == list(range(members))
    sizes = [c.stop - c.start for c in chunks]
    assert max(sizes) <= max_members and max(sizes) - min(sizes) <= 1
    if members >= cores:  # every core gets the same number of chunks, unless there are too few members
        assert len(chunks) % cores == 0 or len(chunks) == members


def test_cpu_paths_agree_chunks_side_by_side_and_one_chunk_on_two_threads():
    """Chunks side by side run the compiled step on one core each; one chunk on two threads gives its BLAS
    both. The trajectories must not depend on it."""
    train = TrainConfig(epochs=40, progress=False)
    params, targets = members(4), smooth_images(4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one_chunk = fit_batched(params, targets, coordinate_grid(), train, SIREN, CPU, max_members=4)
        side_by_side = fit_batched(params, targets, coordinate_grid(), train, SIREN, CPU, max_members=1)
    finally:
        torch.set_num_threads(threads)
    gap = psnr_gap(one_chunk, side_by_side)
    assert gap < 1e-3, f"paths differ by {gap:.2e} dB"


@pytest.mark.slow  # seconds of fitting or a subprocess: `make test` runs it, `make test-fast` not
def test_the_plain_torch_step_also_fits_like_the_sequential_engine():
    """train.kernels=torch (SirenStep, torch's multi-tensor Adam), the plain path on any device, checked end to
    end (Adam, schedule, snapshots) on the CPU."""
    torch_step, sequential = both_engines(3, TrainConfig(epochs=60, progress=False, kernels="torch"), max_members=3)
    gap = psnr_gap(torch_step, sequential)
    assert gap < 1e-3, f"engines differ by {gap:.2e} dB"
    assert torch.equal(torch_step.lr, sequential.lr)


@pytest.mark.slow  # seconds of fitting or a subprocess: `make test` runs it, `make test-fast` not
def test_engines_agree_for_a_wide_siren_one_member_per_chunk():
    batched, sequential = both_engines(2, TrainConfig(epochs=30, progress=False), max_members=1, hfs=100)
    gap = psnr_gap(batched, sequential)
    assert gap < 1e-3, f"engines differ by {gap:.2e} dB"


def test_the_numeric_modules_import_neither_hydra_nor_numba_up_front():
    """The engine takes FitOptions, not a Hydra config; numba loads when a CPU step is first built."""
    import subprocess
    import sys

    code = (
        "import sys, prefit.engine, prefit.model, prefit.optim, prefit.precision; "
        "print(','.join(m for m in ('hydra', 'omegaconf', 'numba') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", loaded
