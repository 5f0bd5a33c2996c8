"""The compiled CPU step: its sine and cosine against float64, its gradients against autograd."""

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference import batched_forward

from prefit.data import coordinate_grid
from prefit.engine import CpuStep, SirenStep
from prefit.kernels import REDUCTION_LIMIT, _sgemm_fallback, _sine_layer
from prefit.model import init_params, stack_params, triple_generator


def sine_layer(x: np.ndarray, bias: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    s, c = x.astype(np.float32).copy(), np.empty(x.shape, np.float32)
    _sine_layer(s, bias.astype(np.float32), c, np.float32(bound))
    return s, c


@pytest.mark.parametrize("scale", [1.0, 30.0, 3000.0])
def test_sine_and_cosine_are_within_two_ulp_of_float64(scale):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 37)) * scale).astype(np.float32)  # 37: not a multiple of a vector
    bias = rng.standard_normal(37).astype(np.float32)
    s, c = sine_layer(x, bias, np.abs(x).max() + np.abs(bias).max())
    exact = (x + bias).astype(np.float64)  # the kernel adds in float32, as torch does
    for got, want in ((s, np.sin(exact)), (c, np.cos(exact))):
        ulp = np.spacing(np.float32(1.0)) / 2  # one ulp of values in [0.5, 1)
        assert np.abs(got - want).max() < 2 * ulp
    assert np.abs(s).max() <= 1 and np.abs(c).max() <= 1


def test_out_of_range_or_nan_falls_back_to_libm():
    x = np.array([[1e6, -3e7, np.nan, np.inf, 0.5]], np.float32)
    s, c = sine_layer(x, np.zeros(5, np.float32), np.float32(np.nan))
    want = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(s, np.sin(want).astype(np.float32))
        np.testing.assert_array_equal(c, np.cos(want).astype(np.float32))
    big = np.array([[REDUCTION_LIMIT * 4]], np.float32)
    s, c = sine_layer(big, np.zeros(1, np.float32), REDUCTION_LIMIT * 4)
    assert s[0, 0] == np.float32(np.sin(np.float64(big[0, 0])))


def members(n: int, hls: int, hfs: int):
    return stack_params([init_params(hls, hfs, 30.0, triple_generator(3, i)) for i in range(n)])


def targets(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1024, 3, generator=g) * 2 - 1


@pytest.mark.parametrize("hls,hfs", [(1, 5), (3, 12), (2, 33)])
def test_compiled_step_equals_autograd(hls, hfs):
    params, target = members(3, hls, hfs), targets(3)
    step = CpuStep(params, coordinate_grid(), target, 30.0)
    loss, pred, grads = step()
    leaves = [(w.clone().requires_grad_(True), b.clone().requires_grad_(True)) for w, b in params]
    ref_pred = batched_forward(leaves, coordinate_grid(), 30.0)
    ref_loss = (ref_pred - target).square().mean(dim=(1, 2))
    ref_loss.sum().backward()
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(pred, ref_pred.detach(), rtol=1e-5, atol=1e-6)
    assert len(grads) == hls + 2
    for (gw, gb), (w, b) in zip(grads, leaves):
        torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gb, b.grad, rtol=1e-4, atol=1e-6)


def test_compiled_step_owns_its_parameters_and_updates_are_seen():
    params, target = members(2, 1, 8), targets(2)
    step = CpuStep(params, coordinate_grid(), target, 30.0)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(step.params, params))
    before = step()[0].clone()
    with torch.no_grad():
        step.params[-1][1].add_(0.5)  # shift the output bias: the loss must change, the caller's copy must not
    assert not torch.equal(step()[0], before)
    assert not torch.equal(step.params[-1][1], params[-1][1])


def test_a_member_beyond_the_reduction_range_gets_libm_sines_and_leaves_the_others_alone():
    params, target = members(2, 2, 8), targets(2)
    params[0][0][1] *= 1e5  # member 1's first layer: w0 W x reaches ~1e6, past REDUCTION_LIMIT
    loss, _, grads = CpuStep(params, coordinate_grid(), target, 30.0)()
    # sines of arguments near 1e6 hang on the last bit of the argument, so only the loss (a mean over
    # 3072 values) can be compared with torch's; the gradients must at least be finite
    torch_loss = SirenStep(params, coordinate_grid(), target, 30.0)()[0]
    torch.testing.assert_close(loss[1], torch_loss[1], rtol=0.05, atol=0)
    assert all(torch.isfinite(g[1]).all() for pair in grads for g in pair)
    alone = CpuStep([(w[:1], b[:1]) for w, b in params], coordinate_grid(), target[:1], 30.0)()
    assert torch.equal(alone[0][0], loss[0])
    assert all(torch.equal(a[0], b[0]) for pa, pb in zip(alone[2], grads) for a, b in zip(pa, pb))


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_fallback_products_equal_numpy(trans_a, trans_b):
    """`_sgemm_fallback`, which the step calls where numpy has no OpenBLAS of its own, is cblas_sgemm."""
    rng = np.random.default_rng(4)
    m, n, k, alpha = 7, 5, 11, np.float32(30.0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c = np.full((m, n), np.nan, np.float32)
    pointer = ctypes.POINTER(ctypes.c_float)
    _sgemm_fallback.ctypes(
        101,
        112 if trans_a else 111,
        112 if trans_b else 111,
        m,
        n,
        k,
        alpha,
        a.ctypes.data_as(pointer),
        a.shape[1],
        b.ctypes.data_as(pointer),
        b.shape[1],
        0.0,
        c.ctypes.data_as(pointer),
        n,
    )
    want = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-4)


def test_both_product_backends_give_the_same_step(tmp_path):
    """The step's products run through numpy's OpenBLAS or, with PREFIT_SGEMM=fallback, through np.dot: a
    fresh process with the fallback must give the step this process gives."""
    script = tmp_path / "step.py"
    script.write_text(
        "import sys, numpy as np, torch\n"
        "from prefit import kernels\n"
        "from prefit.data import coordinate_grid\n"
        "from prefit.engine import CpuStep\n"
        "params, target = torch.load(sys.argv[1])\n"
        "loss, pred, grads = CpuStep(params, coordinate_grid(), target, 30.0)()\n"
        "torch.save((kernels.SGEMM, loss, [g for pair in grads for g in pair]), sys.argv[2])\n"
    )
    params, target = members(2, 3, 24), targets(2)
    torch.save((params, target), tmp_path / "in.pt")
    env = dict(os.environ, PREFIT_SGEMM="fallback")
    paths = [str(tmp_path / "in.pt"), str(tmp_path / "out.pt")]
    subprocess.run([sys.executable, str(script), *paths], env=env, check=True)
    backend, loss, grads = torch.load(tmp_path / "out.pt")
    assert backend == "np.dot (scipy's BLAS)"
    here_loss, _, here_grads = CpuStep(params, coordinate_grid(), target, 30.0)()
    torch.testing.assert_close(loss, here_loss, rtol=1e-5, atol=0)
    for a, b in zip(grads, [g for pair in here_grads for g in pair]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
