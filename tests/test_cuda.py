"""The CUDA engine on a GPU: against the sequential reference, captured against eager, fused against plain,
3xTF32 against fp32, and the pieces whose accuracy only a GPU can show (libdevice's sine, tensor-core products).

Skipped where torch sees no GPU (CI has none); tests/test_fused.py checks the same kernels under Triton's
interpreter on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)

from images import smooth_images  # noqa: E402

from prefit import probe as probes  # noqa: E402
from prefit.bench.steady import FORMS  # noqa: E402
from prefit.config import TrainConfig  # noqa: E402
from prefit.data import coordinate_grid  # noqa: E402
from prefit.engine import capture, fit_batched, fit_sequential, psnr_from_loss  # noqa: E402
from prefit.errors import ConfigError  # noqa: E402
from prefit.model import SIREN, init_params, make_field, stack_params, triple_generator  # noqa: E402
from prefit.precision import product  # noqa: E402

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def members(n: int, hls: int, hfs: int):
    return stack_params([init_params(hls, hfs, 30.0, triple_generator(11, i)) for i in range(n)])


def fit(device, n, hls, hfs, epochs, **train):
    config = TrainConfig(epochs=epochs, progress=False, snapshot_epochs=[0, 10, -1], **train)
    params, targets = members(n, hls, hfs), smooth_images(n)
    if device.type == "cpu":
        return fit_sequential(params, targets, coordinate_grid(), config, SIREN, device)
    return fit_batched(params, targets, coordinate_grid(), config, SIREN, device, max_members=n)


def gap(a, b) -> float:
    return (psnr_from_loss(a.loss) - psnr_from_loss(b.loss)).abs().max().item()


@pytest.mark.parametrize("hls,hfs", [(2, 32), (3, 128)])
def test_batched_on_cuda_equals_the_sequential_engine(hls, hfs):
    batched = fit(CUDA, 4, hls, hfs, 100)  # train.kernels=auto: fused, captured
    sequential = fit(CPU, 4, hls, hfs, 100)
    assert gap(batched, sequential) < 1e-3
    assert torch.equal(batched.lr, sequential.lr)
    torch.testing.assert_close(batched.snapshots, sequential.snapshots, rtol=1e-3, atol=1e-3)


def assert_bit_for_bit(captured, eager, steady_member_epochs: int) -> None:
    """Captured and eager runs of one fit: the same steady epochs, losses, rates, snapshots and weights, bit for bit."""
    assert captured.steady_member_epochs == eager.steady_member_epochs == steady_member_epochs
    assert torch.equal(captured.loss, eager.loss)
    assert torch.equal(captured.lr, eager.lr)
    assert torch.equal(captured.snapshots, eager.snapshots)
    for (wa, ba), (wb, bb) in zip(captured.params, eager.params):
        assert torch.equal(wa, wb) and torch.equal(ba, bb)


@pytest.mark.parametrize("precision", ["highest", "3xtf32"])  # 3xtf32: the split buffers made before capture
def test_captured_epochs_equal_eager_ones_bit_for_bit(precision):
    captured = fit(CUDA, 6, 2, 32, 120, cuda_graphs=True, matmul_precision=precision)
    eager = fit(CUDA, 6, 2, 32, 120, cuda_graphs=False, matmul_precision=precision)
    assert_bit_for_bit(captured, eager, 6 * 119)


def test_fused_kernels_equal_the_plain_torch_step():
    fused = fit(CUDA, 4, 3, 128, 100, kernels="fused")
    plain = fit(CUDA, 4, 3, 128, 100, kernels="torch")
    assert gap(fused, plain) < 1e-3
    assert torch.equal(fused.lr, plain.lr)


# the plateau schedule halves the learning rate every 21 epochs (no loss halves within them): it acts inside the
# captured graphs, at epochs that rounding cannot move
PLATEAU = dict(plateau_patience=20, plateau_threshold=0.5)


def test_torch_step_captured_equals_eager_bit_for_bit():
    """train.kernels=torch on CUDA (DeviceChunk): captured and eager run the same launches, so the same numbers."""
    captured = fit(CUDA, 6, 2, 32, 120, kernels="torch", cuda_graphs=True, **PLATEAU)
    eager = fit(CUDA, 6, 2, 32, 120, kernels="torch", cuda_graphs=False, **PLATEAU)
    assert (captured.lr[:, -1] < captured.lr[:, 0]).all()
    assert_bit_for_bit(captured, eager, 6 * 119)


def test_torch_step_captured_equals_the_sequential_engine():
    batched = fit(CUDA, 4, 2, 32, 100, kernels="torch", cuda_graphs=True, **PLATEAU)
    sequential = fit(CPU, 4, 2, 32, 100, **PLATEAU)
    assert batched.steady_member_epochs == 4 * 99  # captured: the CUDA engine's loop, not the host's
    assert gap(batched, sequential) < 1e-3
    assert torch.equal(batched.lr, sequential.lr)
    torch.testing.assert_close(batched.snapshots, sequential.snapshots, rtol=1e-3, atol=1e-3)


def test_chunks_capture_on_one_stream_per_device(monkeypatch):
    """Every chunk of a job, fused or torch, captures on the same stream (a cuBLAS workspace per stream stays)."""
    streams = []

    def recorded(device):
        streams.append(real(device))
        return streams[-1]

    real = capture.capture_stream
    monkeypatch.setattr(capture, "capture_stream", recorded)
    config = TrainConfig(epochs=5, progress=False, snapshot_epochs=[])
    for kernels in ("fused", "torch"):
        config.kernels = kernels
        fit_batched(members(4, 1, 16), smooth_images(4), coordinate_grid(), config, SIREN, CUDA, max_members=2)
    assert len(streams) == 4 and all(s is streams[0] for s in streams)


def test_3xtf32_fits_like_fp32():
    fp32 = fit(CUDA, 4, 3, 128, 50, matmul_precision="highest")
    tf32x3 = fit(CUDA, 4, 3, 128, 50, matmul_precision="3xtf32")
    assert gap(fp32, tf32x3) < 1e-3


def test_products_relative_error_against_float64():
    """3xTF32 is as accurate as fp32 (both near 1e-6 at this size); TF32 alone is a thousand times worse."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 1024, 512, generator=g), torch.randn(8, 512, 512, generator=g)
    exact = torch.bmm(a.double(), b.double())

    def error(precision: str) -> float:
        out = product(torch.empty(8, 1024, 512, device=CUDA), a.to(CUDA), b.to(CUDA), 1.0, precision)
        return ((out.double().cpu() - exact).abs().max() / exact.abs().max()).item()

    fp32, tf32x3, tf32 = error("highest"), error("3xtf32"), error("high")
    measured = f"relative errors: fp32 {fp32:.2e}, 3xtf32 {tf32x3:.2e}, tf32 {tf32:.2e}"  # docs/performance.md
    assert tf32x3 < 2 * fp32 + 1e-7, measured
    assert tf32 > 100 * tf32x3, measured


def test_fused_sine_is_accurate_for_large_arguments():
    """SIREN pre-activations reach hundreds of radians: libdevice's range reduction must hold there."""
    from prefit import fused

    s = torch.linspace(-600, 600, 3 * 64 * 32).reshape(3, 64, 32)
    b = torch.zeros(3, 1, 32)
    out_s, out_c = s.clone().to(CUDA), torch.empty_like(s, device=CUDA)
    fused.sincos_bias_(out_s, out_c, b.to(CUDA), 30.0)
    exact = s.double()
    assert (out_s.cpu().double() - torch.sin(exact)).abs().max() < 1e-6
    assert (out_c.cpu().double() - torch.cos(exact)).abs().max() < 1e-6


def test_bench_on_cuda_reports_the_steady_state(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefit.bench",
            "--quick",
            "--device",
            "cuda",
            "--cells",
            "2x32",
            "--out",
            "b.json",
            "--ceiling-size",
            "4096",
        ],  # --quick's 256 x 256 product would time launches, not the tensor cores
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "b.json").read_text())
    cell = data["cells"][0]
    assert data["machine"]["ceiling_tf32_gflops"] > data["machine"]["ceiling_gflops"]
    errors = data["machine"]["matmul_error"]  # 1024 x 1024 products on the tensor cores
    assert errors["3xtf32"] < 2 * errors["highest"] + 1e-7 and errors["high"] > 100 * errors["3xtf32"], errors
    assert cell["batched_timing"] == "steady_state"
    steady = cell["steady_state"]
    assert set(FORMS) <= set(steady)  # fp32 captured and eager, the torch path, and the products' precisions
    assert cell["ms_per_member_epoch"]["batched"] == pytest.approx(steady["fused_graph"]["ms_per_member_epoch"], 1e-3)
    assert data["machine"]["bandwidth_gbs"] > 100  # a GPU's memory, not a host copy
    for form in ("fused_graph", "fused_eager", "fused_graph_3xtf32", "fused_graph_tf32"):
        assert 0 < steady[form]["floor_ms"] <= steady[form]["ms_per_epoch"] * 1.05, (form, steady[form])
    assert "floor_ms" not in steady["torch_eager"]


def test_the_fused_step_passes_its_probe_on_this_gpu():
    verdict = probes.run_probe("fused", CUDA)
    assert verdict.ok, verdict.cause
    assert verdict.gap_db < probes.TOLERANCE_DB and verdict.key["device_uuid"]


def test_a_fused_step_that_fails_to_compile_falls_back_to_the_torch_step(monkeypatch, tmp_path):
    """A bad kernel option (a block that is not a power of two) fails Triton's compiler, as a broken toolchain would."""
    from prefit import fused

    monkeypatch.setenv("PREFIT_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "ELEMENTWISE_BLOCK", 1000)
    choice = probes.choose_step("auto", CUDA)
    assert choice.step == "torch" and "the fused step failed" in choice.warning
    assert choice.verdict.file and "delete it to probe again" in choice.warning  # cached: later jobs skip it
    with pytest.raises(ConfigError, match="train.kernels=fused failed its probe"):
        probes.choose_step("fused", CUDA)


def test_run_json_of_a_cuda_job_names_the_fused_step_and_the_gpu(cifar_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "prefit.train", "+experiment=smoke", "model.hls=1", "model.hfs=8"]
    command += ["dataset=cifar_dir", f"dataset.path={cifar_dir}", f"hydra.run.dir={out}", "train.progress=false"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["step"] == "fused" and run["cuda_graphs"] is True and run["probe"]["ok"] is True
    assert run["device_uuid"] == str(torch.cuda.get_device_properties(0).uuid)
    assert run["versions"]["triton"] and run["versions"]["cuda"] == torch.version.cuda
    assert run["lease"]["device"] == run["device_uuid"]


@pytest.mark.parametrize("family", ["ffn", "gauss"])
def test_generic_step_on_cuda_equals_the_sequential_reference(family):
    """Another family's fit on the GPU (the generic step: vmap of grad, batched Adam on the device) against one module
    and torch's Adam per member on the CPU."""
    constants = (None, 5.0, 64, None) if family == "ffn" else (None, None, None, 10.0)
    field = make_field(family, 0, *constants)
    params = stack_params([field.init_params(2, 32, triple_generator(11, i)) for i in range(4)])
    config = TrainConfig(epochs=100, lr=1e-3, progress=False, snapshot_epochs=[0, -1])
    targets = smooth_images(4)
    batched = fit_batched(params, targets, coordinate_grid(), config, field, CUDA, max_members=4)
    sequential = fit_sequential(params, targets, coordinate_grid(), config, field, CPU)
    assert gap(batched, sequential) < 1e-2  # GPU and CPU products round differently; a wrong step is dBs off
    assert torch.equal(batched.lr, sequential.lr)
