"""Mid-cell checkpoints: a chunk, a fit, a cell and a job cut anywhere resume bit for bit; signals save and stop; a
damaged or foreign checkpoint is discarded in one warning line."""

from __future__ import annotations

import io
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from images import smooth_images

import prefit.cell
from prefit import fused, train
from prefit.cell import plan_key, run_plan
from prefit.checkpoint import CHECKPOINT_FILE, CellCheckpoint, Interrupted, describe, read_position
from prefit.config import Config, ModelConfig, SchemeConfig, SchemesConfig, TrainConfig, study_config
from prefit.data import coordinate_grid, draw_triples, read_cifar_dir
from prefit.engine import fit_batched, fit_sequential
from prefit.engine.batched import DeviceChunk, HostChunk
from prefit.engine.common import snapshot_index
from prefit.engine.cuda import FusedChunk
from prefit.model import SIREN, init_params, stack_params, triple_generator
from prefit.schemes import build_plan

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
FIT = dict(progress=False, lr=1e-3, plateau_patience=3, plateau_threshold=0.1, snapshot_epochs=[0, 7, -1])


def members(n: int, hls: int = 1, hfs: int = 8):
    return stack_params([init_params(hls, hfs, 30.0, triple_generator(7, i)) for i in range(n)])


def through_a_file(state: dict) -> dict:
    """What torch.save and torch.load make of a state (as the checkpoint file holds it)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_chunk(a, b) -> None:
    assert torch.equal(a.losses, b.losses) and torch.equal(a.lrs, b.lrs) and torch.equal(a.snaps, b.snaps)
    for x, y in zip(a.step.params, b.step.params):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def stop_after(epochs: int):
    """A pause() that stops a run at its `epochs`-th question: after epoch `epochs` (HostChunk) or `epochs` + 1 (an
    eager GraphChunk, which asks first after its warm-up epoch and one more)."""
    calls = itertools.count(1)
    return lambda: next(calls) >= epochs


def chunk_kinds():
    kinds = {
        "compiled": lambda *a: HostChunk(*a, "compiled"),
        "torch": lambda *a: HostChunk(*a, "torch"),
        "generic": lambda *a: HostChunk(*a, "generic"),
        "device": DeviceChunk,
    }
    if fused.available(CPU):  # under Triton's interpreter (tests/conftest.py), on 4 x 4 pixels
        kinds["fused"] = lambda params, coords, targets, options, field, slots: FusedChunk(
            params, coords, targets, options, field.w0, slots
        )
    return kinds


@pytest.mark.parametrize("kind", list(chunk_kinds()))
def test_a_chunk_resumes_from_its_saved_state_bit_for_bit(kind):
    """A chunk stopped mid-fit saves its state; a new chunk loading it, and the same chunk loading it back after
    running on (in place: its buffers, which a captured graph replays on, stay where they are), finish as a chunk
    never stopped, bit for bit, over a fit whose plateau schedule acts and with snapshots on both sides."""
    make = chunk_kinds()[kind]
    side, epochs, stop = (4, 12, 5) if kind == "fused" else (32, 30, 11)
    coords, targets, params = coordinate_grid(side), smooth_images(3, side=side), members(3)
    train_options = TrainConfig(epochs=epochs, **FIT)
    slots = snapshot_index(epochs, train_options.snapshot_epochs)

    def chunk():
        return make(params, coords, targets, train_options, SIREN, slots)

    whole = chunk()
    assert whole.run(capture=False)
    cut = chunk()
    assert not cut.run(capture=False, pause=stop_after(stop)) and stop <= cut.position <= stop + 1
    saved = through_a_file(cut.save_state())
    assert saved["epoch"] == cut.position and saved["losses"].shape[0] == cut.position
    resumed = chunk()
    resumed.load_state(saved)
    assert resumed.run(capture=False)
    assert_same_chunk(resumed, whole)
    assert (whole.lrs[-1] < whole.lrs[0]).any()  # the schedule acted

    assert cut.run(capture=False)  # runs on to the end, then goes back to the saved epoch in place
    pointers = [t.data_ptr() for t in cut.buffers()["params"]] + [cut.losses.data_ptr(), cut.snaps.data_ptr()]
    cut.load_state(saved)
    assert [t.data_ptr() for t in cut.buffers()["params"]] + [cut.losses.data_ptr(), cut.snaps.data_ptr()] == pointers
    assert cut.run(capture=False)
    assert_same_chunk(cut, whole)


class CountingSaver:
    """A saver due from its `every`-th question on (from any chunk's thread) until it saves, as a checkpoint's clock
    is; it keeps what each save was given."""

    def __init__(self, every: int) -> None:
        self.every, self.calls, self.states = every, itertools.count(1), []

    def due(self) -> bool:
        return next(self.calls) >= self.every

    def save(self, state: dict) -> None:
        self.states.append(through_a_file(state))
        self.calls = itertools.count(1)


def assert_same_fit(a, b) -> None:
    assert torch.equal(a.loss, b.loss) and torch.equal(a.lr, b.lr) and torch.equal(a.snapshots, b.snapshots)
    for x, y in zip(a.params, b.params):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


@pytest.mark.parametrize(
    "engine,kernels,threads",
    [(fit_batched, "compiled", 2), (fit_batched, "compiled", 1), (fit_batched, "torch", 1), (fit_sequential, "", 1)],
    ids=["compiled-side-by-side", "compiled-in-turn", "torch", "sequential"],
)
def test_a_fit_resumes_from_every_save_bit_for_bit(engine, kernels, threads):
    """Chunks side by side or in turn stop when a save is due and go on; the fit equals one never stopped, and one
    resumed from any of its saves equals it too, even in chunks split smaller (a smaller budget when resumed)."""
    options = TrainConfig(epochs=30, kernels=kernels or "auto", **FIT)
    params, targets, coords = members(5), smooth_images(5), coordinate_grid()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = engine(params, targets, coords, options, SIREN, CPU, max_members=2)
        saver = CountingSaver(every=7 if engine is fit_batched else 2)
        assert_same_fit(engine(params, targets, coords, options, SIREN, CPU, max_members=2, saver=saver), whole)
        assert len(saver.states) >= 2
        if engine is fit_batched:  # chunks saved mid-fit, and (in turn) saved before they started
            epochs = [s["epoch"] for state in saver.states for s in state["states"]]
            assert any(0 < e < 30 for e in epochs) and (threads > 1 or 0 in epochs)
        for state in saver.states:
            assert_same_fit(engine(params, targets, coords, options, SIREN, CPU, max_members=2, resume=state), whole)
        if kernels == "compiled":
            smaller = engine(params, targets, coords, options, SIREN, CPU, max_members=1, resume=saver.states[0])
            assert_same_fit(smaller, whole)
    finally:
        torch.set_num_threads(before)


def ticks():
    """A clock that moves one unit a reading: a checkpoint of `minutes=n / 60` is due every n readings."""
    return itertools.count().__next__


@pytest.fixture
def cell(cifar_dir):
    """A 1 x 8 cell of 2 triples and three schemes (6 members, then 4), 30 epochs, its plan and study."""
    cfg = Config(
        model=ModelConfig(hls=1, hfs=8),
        scheme=SchemesConfig(random=SchemeConfig(), same_class=SchemeConfig(), other_class=SchemeConfig()),
        train=TrainConfig(epochs=30, **FIT),
    )
    data = read_cifar_dir(cifar_dir, "train")
    return cfg, build_plan(cfg, data, draw_triples(data.labels, 2, cfg.seed)), study_config(cfg)


def assert_same_cell(a, b) -> None:
    pd.testing.assert_frame_equal(a.rows, b.rows, check_exact=True)
    assert a.recon.keys() == b.recon.keys()
    assert all((a.recon[k] == b.recon[k]).all() for k in a.recon)


def test_a_cell_resumes_from_any_of_its_checkpoints(cell, tmp_path):
    """run_plan saves the stages done, the parameters carried on and the stage under way; resumed from each of its
    checkpoints (mid-stage or at a stage's end), the cell's rows and reconstructions are the same bits."""
    cfg, plan, study = cell
    whole = run_plan(cfg, plan, CPU, max_members=2)
    path, saved = tmp_path / CHECKPOINT_FILE, []
    checkpoint = CellCheckpoint(path, study, minutes=25 / 60, clock=ticks())
    write = checkpoint.save
    checkpoint.save = lambda state: (write(state), saved.append(path.read_bytes()))
    assert_same_cell(run_plan(cfg, plan, CPU, 2, checkpoint), whole)
    positions = [read_position(io.BytesIO(blob)) for blob in saved]
    assert {p["stage"] for p in positions} == {0, 1}
    for blob, position in zip(saved, positions):
        path.write_bytes(blob)
        resumed = run_plan(cfg, plan, CPU, 2, CellCheckpoint(path, study, minutes=0))
        assert_same_cell(resumed, whole)
        assert resumed.info["resumed"] == position


def test_a_stop_requested_as_a_stage_ends_saves_the_next_stage_start(cell, tmp_path, monkeypatch):
    """Between stages the cell saves too (no fit under way): the stages done and the parameters they carry."""
    cfg, plan, study = cell
    whole = run_plan(cfg, plan, CPU, max_members=2)
    path = tmp_path / CHECKPOINT_FILE
    checkpoint = CellCheckpoint(path, study, minutes=60)
    engine_fit = prefit.cell.fit

    def fit_then_stop(*args, **kwargs):
        result = engine_fit(*args, **kwargs)
        checkpoint.request_stop(signal.SIGTERM)
        return result

    monkeypatch.setattr(prefit.cell, "fit", fit_then_stop)
    with pytest.raises(Interrupted):
        run_plan(cfg, plan, CPU, 2, checkpoint)
    monkeypatch.undo()
    assert read_position(path) == {"stage": 1, "stages": 2, "member_epochs": 0, "of": 4 * 30}
    assert_same_cell(run_plan(cfg, plan, CPU, 2, CellCheckpoint(path, study, minutes=0)), whole)


@pytest.mark.parametrize(
    "damage,why",
    [
        (lambda blob: blob[: len(blob) // 2], "unreadable"),
        (lambda blob: flip_a_bit(blob, blob.index(torch.arange(4000.0)[1000:1004].numpy().tobytes())), "hash"),
        (lambda blob: b"", "unreadable"),
        ("study", "of another study (train.lr differ)"),
        ("plan", "of another plan"),
    ],
    ids=["truncated", "a-flipped-bit", "empty", "another-study", "another-plan"],
)
def test_a_checkpoint_not_to_be_trusted_is_discarded_in_one_warning_line(cell, tmp_path, caplog, damage, why):
    cfg, plan, study = cell
    path = tmp_path / CHECKPOINT_FILE
    checkpoint = CellCheckpoint(path, study, minutes=1)
    checkpoint.resume(plan_key(cfg, plan))
    state = {"position": {"stage": 0, "stages": 2, "member_epochs": 6, "of": 180}, "weights": torch.arange(4000.0)}
    checkpoint.save(state)
    assert same_state(CellCheckpoint(path, study, 0).resume(plan_key(cfg, plan)), state)
    if damage == "study":
        study = {**study, "train": {**study["train"], "lr": 2e-4}}
    elif damage == "plan":
        cfg = Config(model=cfg.model, scheme=cfg.scheme, train=TrainConfig(epochs=31, **FIT))
    else:
        path.write_bytes(damage(path.read_bytes()))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="prefit.checkpoint"):
        assert CellCheckpoint(path, study, 0).resume(plan_key(cfg, plan)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"{path} " in warnings[0] and why in warnings[0] and "discarded, the cell starts from scratch" in warnings[0]


def flip_a_bit(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]


def same_state(a: dict | None, b: dict) -> bool:
    return a is not None and a["position"] == b["position"] and torch.equal(a["weights"], b["weights"])


def test_a_stop_request_saves_then_raises_and_chains_to_the_previous_handler(tmp_path):
    """SIGUSR1 inside stop_on_signals only marks the checkpoint; the next save raises Interrupted, which exits as a
    shell would report the signal, survives pickling, and calls the handler that was there before (submitit's
    requeue) when told to; the handlers are put back after the block."""
    called = []

    def previous(signum, frame):
        called.append(signum)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        checkpoint = CellCheckpoint(tmp_path / CHECKPOINT_FILE, {}, minutes=60)
        with pytest.raises(Interrupted) as caught, train.stop_on_signals(checkpoint):
            assert signal.getsignal(signal.SIGUSR1) == checkpoint.request_stop
            assert not checkpoint.due()
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0)  # the handler runs between bytecodes of the main thread
            assert checkpoint.due() and not called
            checkpoint.save({"position": {"stage": 1, "stages": 2, "member_epochs": 40, "of": 100}})
        assert signal.getsignal(signal.SIGUSR1) is previous and not called
        stop = caught.value
        assert stop.status == 128 + signal.SIGUSR1 and "\n" not in str(stop)
        assert str(stop).startswith("stopped by SIGUSR1: ") and "stage 2/2, 40 of 100 member-epochs" in str(stop)
        assert read_position(tmp_path / CHECKPOINT_FILE)["member_epochs"] == 40
        copy = pickle.loads(pickle.dumps(stop))
        assert str(copy) == str(stop) and copy.status == stop.status
        stop.chain()
        assert called == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


# --- the app, cut by signals: subprocesses


@pytest.fixture(scope="module")
def cell_args(tmp_path_factory) -> list[str]:
    """A 1 x 8 smoke cell of 2000 epochs (seconds of fitting), one thread; train.checkpoint_minutes=0.002 saves it
    every 0.12 s."""
    from conftest import write_cifar_dir

    data = write_cifar_dir(tmp_path_factory.mktemp("checkpoint-data") / "cifar")
    return [
        *("+experiment=smoke", "model.hls=1", "model.hfs=8", "dataset=cifar_dir", f"dataset.path={data}"),
        *("train.epochs=2000", "train.threads=1", "train.progress=false"),
    ]


def start(args: list[str], out: Path, name: str) -> subprocess.Popen:
    """The job, its output in files `name`.out and `name`.err beside its folder (a pipe nobody reads would stop it)."""
    files = [open(out.parent / f"{name}.{kind}", "w") for kind in ("out", "err")]
    command = [sys.executable, "-m", "prefit.train", *args, f"hydra.run.dir={out}"]
    return subprocess.Popen(command, cwd=REPO, stdout=files[0], stderr=files[1])


def output(out: Path, name: str) -> tuple[str, str]:
    return tuple((out.parent / f"{name}.{kind}").read_text() for kind in ("out", "err"))


def wait_for(job: subprocess.Popen, out: Path, wanted) -> dict:
    """Poll the job's checkpoint until its position is `wanted`; the job must still be running."""
    path = out / CHECKPOINT_FILE
    while True:
        assert job.poll() is None, f"the job ended (status {job.returncode}) before its checkpoint was as wanted"
        if path.is_file():
            try:
                position = read_position(path)
            except (OSError, RuntimeError, KeyError):  # replaced while read
                position = None
            if position is not None and wanted(position):
                return position
        time.sleep(0.02)


def kill(job: subprocess.Popen, out: Path) -> dict:
    """SIGKILL; the position of the job's last checkpoint, read once it is gone."""
    job.kill()
    job.wait()
    return read_position(out / CHECKPOINT_FILE)


@pytest.fixture(scope="module")
def uncut(cell_args, tmp_path_factory) -> bytes:
    """psnr.parquet of the cell run without checkpoints."""
    out = tmp_path_factory.mktemp("uncut") / "cell"
    assert start([*cell_args, "train.checkpoint_minutes=0"], out, "uncut").wait() == 0, output(out, "uncut")[1]
    assert not (out / CHECKPOINT_FILE).exists()
    return (out / "psnr.parquet").read_bytes()


@pytest.mark.slow
def test_a_job_killed_twice_resumes_from_its_last_checkpoints_to_the_same_bits(cell_args, uncut, tmp_path):
    """SIGKILL in stage 1 after the first checkpoint, then again in stage 2: each rerun resumes exactly where the
    last checkpoint was (so at most checkpoint_minutes of work is lost), and the result is an uncut run's bytes."""
    out, args = tmp_path / "cell", [*cell_args, "train.checkpoint_minutes=0.002"]
    job = start(args, out, "first")
    wait_for(job, out, lambda p: p["stage"] == 0 and p["member_epochs"] > 0)
    first = kill(job, out)
    assert first["stage"] == 0 and not (out / "psnr.parquet").exists()

    job = start(args, out, "second")
    wait_for(job, out, lambda p: p["stage"] == 1 and p["member_epochs"] > 0)
    second = kill(job, out)
    assert second["stage"] == 1

    assert start(args, out, "third").wait() == 0, output(out, "third")[1][-2000:]
    path = out / CHECKPOINT_FILE
    assert f"resuming from {path}: {describe(first)}" in output(out, "second")[0]
    assert f"resuming from {path}: {describe(second)}" in output(out, "third")[0]
    assert (out / "psnr.parquet").read_bytes() == uncut
    assert not path.exists()  # removed once run.json is complete


@pytest.mark.slow
def test_sigterm_saves_and_ends_in_one_line_and_a_truncated_checkpoint_is_discarded(cell_args, uncut, tmp_path):
    """SIGTERM: the job saves at its next safe point and exits with 128 + 15 and one line saying where the progress
    is; its checkpoint, truncated, is discarded in one warning line and the rerun computes the cell afresh."""
    out, args = tmp_path / "cell", [*cell_args, "train.checkpoint_minutes=0.002"]
    job = start(args, out, "stopped")
    before = wait_for(job, out, lambda p: p["member_epochs"] > 0)
    job.send_signal(signal.SIGTERM)
    assert job.wait() == 128 + signal.SIGTERM
    lines = [line for line in output(out, "stopped")[1].splitlines() if line.strip()]
    stopped = [line for line in lines if line.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1 and "rerun the same command to resume" in stopped[0], lines[-5:]
    record = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert record["reason"] == "SIGTERM" and describe(record["position"]) in stopped[0]
    after = record["position"]
    assert (after["stage"], after["member_epochs"]) >= (before["stage"], before["member_epochs"])

    whole = (out / CHECKPOINT_FILE).read_bytes()
    (out / CHECKPOINT_FILE).write_bytes(whole[: len(whole) // 2])
    assert start(args, out, "rerun").wait() == 0, output(out, "rerun")[1][-2000:]
    stdout, stderr = output(out, "rerun")
    warnings = [line for line in (stdout + stderr).splitlines() if "discarded" in line]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "resuming" not in stdout
    assert (out / "psnr.parquet").read_bytes() == uncut
