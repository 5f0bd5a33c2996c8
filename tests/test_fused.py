"""The fused CUDA kernels (prefit.fused) and the engine built on them (prefit.engine.cuda) against the plain path.

Without a GPU these run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on small
images (8 x 8 pixels) so that the interpreter's per-launch cost stays small. tests/test_cuda.py runs the
compiled kernels on a GPU.
"""

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (it is on Linux x86-64)")

from prefit import fused  # noqa: E402
from prefit.config import ConfigError, TrainConfig  # noqa: E402
from prefit.engine import SirenStep, cuda_bytes_per_member, fit_batched, fit_sequential, psnr_from_loss  # noqa: E402
from prefit.engine.cuda import FusedChunk, FusedStep, fused_bytes_per_member_epoch  # noqa: E402
from prefit.engine.options import FitOptions  # noqa: E402
from prefit.model import SIREN, init_params, stack_params, triple_generator  # noqa: E402
from prefit.optim import BatchedAdam, BatchedPlateau  # noqa: E402
from prefit.precision import product, split_tf32  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if why := fused.unavailable(DEVICE):
    pytest.skip(f"the fused kernels cannot run: {why}", allow_module_level=True)


def small_grid(side: int = 8) -> torch.Tensor:
    lin = torch.linspace(-1, 1, side)
    return torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)


def targets(n: int, coords: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    freqs = torch.randn(n, 2, 3, generator=g) * 3
    return 0.8 * torch.sin(torch.einsum("pc,nck->npk", coords, freqs))


def members(n: int, hls: int, hfs: int):
    return stack_params([init_params(hls, hfs, 30.0, triple_generator(3, i)) for i in range(n)])


@pytest.mark.parametrize("hls,hfs", [(1, 5), (3, 12)])
def test_fused_step_equals_the_torch_step(hls, hfs):
    coords = small_grid()
    params, target = members(3, hls, hfs), targets(3, coords)
    plain = SirenStep(params, coords, target, 30.0)
    loss, pred, grads = plain()
    step = FusedStep([(w.to(DEVICE), b.to(DEVICE)) for w, b in params], coords.to(DEVICE), target.to(DEVICE), 30.0)
    f_loss, f_pred, f_grads = step()
    torch.testing.assert_close(f_loss.cpu(), loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(f_pred.cpu(), pred, rtol=1e-5, atol=1e-6)
    for (gw, gb), (fw, fb) in zip(grads, f_grads):
        torch.testing.assert_close(fw.cpu(), gw, rtol=1e-4, atol=1e-5 * gw.abs().max().item())
        torch.testing.assert_close(fb.cpu(), gb, rtol=1e-4, atol=1e-5 * gb.abs().max().item())


def test_sincos_bias_and_cos_grad_are_the_torch_ops():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 37, 20, generator=g) * 20
    b = torch.randn(3, 1, 20, generator=g)
    out_s, out_c = s.clone().to(DEVICE), torch.empty_like(s, device=DEVICE)
    fused.sincos_bias_(out_s, out_c, b.to(DEVICE), 30.0)
    x = s + 30.0 * b
    torch.testing.assert_close(out_s.cpu(), torch.sin(x), rtol=0, atol=2e-6)
    torch.testing.assert_close(out_c.cpu(), torch.cos(x), rtol=0, atol=2e-6)
    grad = torch.randn(3, 37, 20, generator=g)
    cos = torch.randn(3, 37, 20, generator=g)
    out_g, gb = grad.clone().to(DEVICE), torch.empty(3, 1, 20, device=DEVICE)
    fused.cos_grad_(out_g, cos.to(DEVICE), gb, 30.0)
    torch.testing.assert_close(out_g.cpu(), grad * cos)
    torch.testing.assert_close(gb.cpu(), 30.0 * (grad * cos).sum(dim=1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_schedule_and_adam_equal_the_batched_optimisers():
    """Per-member learning rates, plateau reductions (patience 2, a loss that stops improving) and Adam's
    bias corrections, step for step against prefit.optim (itself tested against torch's)."""
    g = torch.Generator().manual_seed(2)
    shapes = [(4, 2, 6), (4, 1, 6), (4, 6, 3), (4, 1, 3)]
    start = [torch.randn(s, generator=g) for s in shapes]
    ref = [p.clone() for p in start]
    lr = torch.tensor([1e-3, 2e-3, 5e-4, 1e-3], dtype=torch.float64)
    adam = BatchedAdam(ref, lr, betas=(0.9, 0.999), eps=1e-8)
    plateau = BatchedPlateau(lr, factor=0.5, patience=2, threshold=1e-4)

    layout = fused.FlatParams([torch.Size(s) for s in shapes], DEVICE)
    flat, grad_flat = layout.buffer(start[0].to(DEVICE)), layout.buffer(start[0].to(DEVICE))
    for view, p in zip(layout.views(flat), start):
        view.copy_(p)
    m, v = layout.buffer(flat), layout.buffer(flat)
    fit = FitOptions(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-8, plateau_factor=0.5, plateau_patience=2, plateau_threshold=1e-4
    )
    state = fused.Schedule.start(fit, 4, DEVICE)
    state.lr.copy_(lr)
    epochs = 12
    losses = torch.empty(epochs, 4, device=DEVICE)
    lrs = torch.empty(epochs, 4, dtype=torch.float64, device=DEVICE)
    ref_lrs = []
    for epoch in range(epochs):
        loss = torch.tensor([1.0 / (epoch + 1), 1.0, 0.5 if epoch < 3 else 0.6, float("nan")])
        grads = [torch.randn(s, generator=g) for s in shapes]
        ref_lrs.append(lr.clone())
        adam.step(grads)
        plateau.step(loss)
        for view, grad in zip(layout.views(grad_flat), grads):
            view.copy_(grad)
        fused.schedule(state, loss.to(DEVICE), losses, lrs)
        fused.adam(layout, flat, grad_flat, m, v, state)
    assert state.epoch.item() == epochs
    torch.testing.assert_close(lrs.cpu(), torch.stack(ref_lrs), rtol=0, atol=0)
    assert lr[1] < 1e-3 and lr[0] == 1e-3  # the schedule did act, on the stuck members only
    torch.testing.assert_close(state.lr.cpu(), lr, rtol=0, atol=0)
    for view, p in zip(layout.views(flat), ref):
        torch.testing.assert_close(view.cpu(), p, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # seconds of fitting or a subprocess: `make test` runs it, `make test-fast` not
def test_fused_engine_equals_the_sequential_engine():
    coords = small_grid()
    params, target = members(3, 2, 8), targets(3, coords)
    train = TrainConfig(epochs=40, progress=False, kernels="fused", snapshot_epochs=[0, 7, -1])
    train.plateau_patience, train.plateau_threshold = 2, 0.2  # so that the schedule acts within 40 epochs
    a = fit_batched(params, target, coords, train, SIREN, DEVICE, max_members=2)
    b = fit_sequential(params, target, coords, train, SIREN, torch.device("cpu"))
    gap = (psnr_from_loss(a.loss) - psnr_from_loss(b.loss)).abs().max().item()
    assert gap < 1e-3, f"fused and sequential engines differ by {gap:.2e} dB"
    assert torch.equal(a.lr, b.lr)
    assert (b.lr[:, -1] < train.lr).any()  # the plateau schedule acted within the run
    assert a.steady_member_epochs == 3 * 39 and a.steady_s > 0  # two chunks' steady epochs: all but each one's first
    torch.testing.assert_close(a.snapshots, b.snapshots, rtol=1e-4, atol=1e-4)
    for (wa, ba), (wb, bb) in zip(a.params, b.params):
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ba, bb, rtol=1e-4, atol=1e-5)


class LaunchRecorder:
    """Stands in for a Triton kernel: `kernel[grid](*args, **options)` records the launch instead of running it."""

    def __init__(self) -> None:
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        def launch(*args, **options) -> None:
            self.launches.append((args, options))

        return launch


def as_float32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.8, 0.99), 3e-10)])
def test_fused_adam_is_given_torchs_float32_constants(monkeypatch, betas, eps):
    """torch's Adam computes 1 - beta1 and 1 - beta2 in double and rounds them to the tensors' float32; the
    compiled kernel, given beta2 as a float32 scalar, would compute 1 - float32(beta2) instead (9.99987e-4 for
    0.999, not 1e-3), which the interpreter (in double) cannot show. So the launch passes the rounded constants."""
    recorder = LaunchRecorder()
    monkeypatch.setattr(fused.kernels, "adam", recorder)
    layout = fused.FlatParams([torch.Size((2, 3, 4)), torch.Size((2, 1, 4))], DEVICE)
    flat = layout.buffer(torch.empty(0, device=DEVICE))
    state = fused.Schedule.start(FitOptions(betas=betas, eps=eps), 2, DEVICE)
    fused.adam(layout, flat, flat.clone(), flat.clone(), flat.clone(), state)
    ((args, _),) = recorder.launches
    constants = [a for a in args if isinstance(a, float)]
    beta1, beta2 = betas
    want = [as_float32(1 - beta1), as_float32(beta2), as_float32(1 - beta2), as_float32(eps)]
    assert [c.hex() for c in constants] == [w.hex() for w in want]  # bit for bit
    float32_differences = {as_float32(1 - as_float32(beta1)), as_float32(1 - as_float32(beta2))}
    assert float32_differences.isdisjoint(want)  # what a kernel subtracting in float32 would use: not torch's
    assert fused.adam_constants(betas, eps) == tuple(want)


def test_tf32_split_is_exact_and_rounds_to_ten_mantissa_bits():
    x = torch.randn(5, 33, 17, generator=torch.Generator().manual_seed(4)) * 100
    hi, lo = split_tf32(x)
    assert torch.equal(hi + lo, x)
    assert (hi.view(torch.int32) & 0x1FFF).eq(0).all()
    assert (lo.abs() <= hi.abs() * 2.0**-11).all()
    bits = (x.view(torch.int32) + 0x1000) & -0x2000  # the same rounding in torch ops
    assert torch.equal(hi, bits.view(torch.float32))


def test_3xtf32_products_are_fp32_accurate():
    """On a CPU the three products run in fp32, so this checks the split and the sum; tests/test_cuda.py checks
    the tensor-core version. Emulating TF32 operands shows why three products recover fp32 accuracy."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 64, 48, generator=g), torch.randn(4, 48, 32, generator=g)
    exact = torch.bmm(a.double(), b.double()) * 30.0
    out = product(torch.empty(4, 64, 32, device=DEVICE), a.to(DEVICE), b.to(DEVICE), 30.0, "3xtf32").cpu()
    assert ((out.double() - exact).abs().max() / exact.abs().max()) < 1e-6

    def tf32(t):  # what a tensor core reads of an fp32 operand
        return ((t.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32).double()

    one = torch.bmm(tf32(a), tf32(b)) * 30.0
    (a_hi, a_lo), (b_hi, b_lo) = split_tf32(a), split_tf32(b)
    three = torch.bmm(tf32(a_hi), tf32(b_lo)) + torch.bmm(tf32(a_lo), tf32(b_hi)) + torch.bmm(tf32(a_hi), tf32(b_hi))
    one_err = ((one - exact).abs().max() / exact.abs().max()).item()
    three_err = ((three * 30.0 - exact).abs().max() / exact.abs().max()).item()
    assert three_err < 1e-6 < 1e-4 < one_err


def test_3xtf32_needs_the_fused_step():
    coords = small_grid()
    train = TrainConfig(epochs=2, progress=False, kernels="compiled", matmul_precision="3xtf32")
    with pytest.raises(ConfigError, match="3xtf32"):
        fit_batched(members(1, 1, 4), targets(1, coords), coords, train, SIREN, torch.device("cpu"), max_members=1)


def fresh_split_step(params, coords, target, w0):
    """The oracle: the fused step at 3xtf32 with every product splitting its operands afresh (`product` without
    buffers), the elementwise passes writing whole tensors. Loss and gradients."""
    members, pixels = target.shape[:2]
    x0 = coords.expand(members, pixels, 2).contiguous()
    x, sines, cosines = x0, [], []
    for w, b in params[:-1]:
        s = product(x.new_empty(members, pixels, w.shape[2]), x, w, w0, "3xtf32")
        c = torch.empty_like(s)
        fused.sincos_bias_(s, c, b, w0)
        x = s
        sines.append(s), cosines.append(c)
    w, b = params[-1]
    pred_t = product(x.new_empty(members, 3, pixels), w.mT, x.mT, 1.0, "3xtf32")
    grad_t, loss, gb = torch.empty_like(pred_t), x.new_empty(members), torch.empty_like(b)
    no_snapshot = (x.new_empty(members, 1, pixels, 3), torch.full((1,), -1, dtype=torch.int32, device=x.device))
    epoch = torch.zeros(1, dtype=torch.int64, device=x.device)
    fused.head(pred_t, b, target.mT.contiguous(), grad_t, loss, gb, *no_snapshot, epoch, 2.0 / (pixels * 3))
    grads = [(product(x.new_empty(members, 3, w.shape[1]), grad_t, x, 1.0, "3xtf32").mT, gb)]
    grad = product(x.new_empty(members, pixels, w.shape[1]), grad_t.mT, w.mT, 1.0, "3xtf32")
    for layer in range(len(params) - 2, -1, -1):
        w, b = params[layer]
        gb = torch.empty_like(b)
        fused.cos_grad_(grad, cosines[layer], gb, w0)
        inputs = x0 if layer == 0 else sines[layer - 1]
        grads.insert(0, (product(torch.empty_like(w), inputs.mT, grad, w0, "3xtf32"), gb))
        if layer > 0:
            grad = product(torch.empty_like(sines[0]), grad, w.mT, w0, "3xtf32")
    return loss, grads


def test_3xtf32_operands_are_split_where_they_are_made_bit_for_bit_as_if_split_afresh():
    """At 3xtf32 the sine pass, the cosine pass and Adam write their results split, so products split only the
    small operands (coordinates, the output's gradient), in buffers made once; the loss and gradients are bit
    for bit those of splitting every operand afresh for every product; after Adam the weights' halves are
    those of the updated weights. A transposed operand is split in its memory order, without a copy."""

    x = torch.randn(3, 10, 7, generator=torch.Generator().manual_seed(6)) * 50
    hi, lo = split_tf32(x.mT)
    assert hi.data_ptr() != x.data_ptr() and not hi.is_contiguous() and hi.mT.is_contiguous()
    ref_hi, ref_lo = split_tf32(x.mT.contiguous())
    assert torch.equal(hi, ref_hi) and torch.equal(lo, ref_lo)

    coords, hls, width = small_grid(), 2, 6
    params, target = members(2, hls, width), targets(2, coords)
    on = [(w.to(DEVICE), b.to(DEVICE)) for w, b in params]
    step = FusedStep(on, coords.to(DEVICE), target.to(DEVICE), 30.0, precision="3xtf32")
    loss, _, grads = step()
    want_loss, want_grads = fresh_split_step(on, coords.to(DEVICE), target.to(DEVICE), 30.0)
    assert torch.equal(loss, want_loss)
    for (gw, gb), (want_gw, want_gb) in zip(grads, want_grads, strict=True):
        assert torch.equal(gw, want_gw) and torch.equal(gb, want_gb)
    pixels = coords.shape[0]
    buffers = {k: (h.data_ptr(), lo.data_ptr()) for k, (h, lo) in step.work.pairs.items()}
    assert {(side, shape[1:]) for side, shape, _, _ in buffers} == {("a", (pixels, 2)), ("a", (3, pixels))}
    step()
    assert {k: (h.data_ptr(), lo.data_ptr()) for k, (h, lo) in step.work.pairs.items()} == buffers

    fit = FitOptions(epochs=2, progress=False, matmul_precision="3xtf32")
    chunk = FusedChunk(on, coords.to(DEVICE), target.to(DEVICE), fit, 30.0, {})
    chunk.epoch()  # Adam wrote the weights and their halves
    assert not torch.equal(chunk.step.flat, torch.cat([t.flatten() for pair in on for t in pair]))
    want_hi, want_lo = split_tf32(chunk.step.flat)
    assert torch.equal(chunk.step.flat_split[0], want_hi) and torch.equal(chunk.step.flat_split[1], want_lo)


def held_bytes(root: object) -> int:
    """Bytes of every tensor storage reachable from `root` through attributes, containers and views."""
    seen_objects, storages, todo = set(), {}, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            todo += list(obj.values())
        elif isinstance(obj, (list, tuple)):
            todo += list(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("prefit"):
            todo += list(vars(obj).values())
    return sum(storages.values())


@pytest.mark.parametrize("precision", ["highest", "3xtf32"])
def test_cuda_bytes_per_member_covers_what_a_chunk_holds(precision):
    """The memory estimate that sizes CUDA chunks and leases bounds what a FusedChunk really allocates (after
    an epoch, when the 3xtf32 split buffers exist), and is not loose by more than its allocator margin and
    some: counted here from the chunk's own tensors, at a size where the flat buffers' padding is small."""

    n, hls, hfs, side = 32, 2, 32, 8
    coords = small_grid(side)
    params = [(w.to(DEVICE), b.to(DEVICE)) for w, b in members(n, hls, hfs)]
    fit = FitOptions(epochs=3, progress=False, snapshot_epochs=[0, -1], matmul_precision=precision)
    chunk = FusedChunk(params, coords.to(DEVICE), targets(n, coords).to(DEVICE), fit, 30.0, {0: 0, 2: 1})
    chunk.epoch()
    per_member = held_bytes(chunk) / n + held_bytes(params) / n  # the start stays alive while the step is built
    estimate = cuda_bytes_per_member(hls, hfs, side * side, fit)
    assert estimate / 2 < per_member <= estimate


def test_a_chunk_run_again_repeats_its_steady_epochs_without_warming_up_again():
    """What the steady benchmark does: run, reset the epoch counter, run again. The second run's epochs are all
    steady ones, and a one-epoch fit (which compiles) has none."""

    coords = small_grid(4)
    params = [(w.to(DEVICE), b.to(DEVICE)) for w, b in members(2, 1, 4)]
    target = targets(2, coords).to(DEVICE)
    chunk = FusedChunk(params, coords.to(DEVICE), target, FitOptions(epochs=5, progress=False), 30.0, {})
    chunk.run(capture=False)
    assert chunk.warm and chunk.steady_seconds()[1] == 4
    first = chunk.losses.clone()
    chunk.state.epoch.zero_()
    chunk.run(capture=False)
    assert chunk.steady_seconds()[1] == 5
    assert not torch.equal(chunk.losses, first)  # the fit went on from where it was (the records restart)
    single = FusedChunk(params, coords.to(DEVICE), target, FitOptions(epochs=1, progress=False), 30.0, {})
    single.run(capture=False)
    assert single.steady_seconds() == (0.0, 0)


@pytest.mark.parametrize("precision", ["highest", "3xtf32"])
def test_fused_bytes_per_member_epoch_counts_the_passes_an_epoch_makes(monkeypatch, precision):
    """The memory term of the benchmark's floor: each fused pass's large operands, counted as an epoch calls the
    passes (hfs differs from the pixels, so activation-sized and weight-sized operands cannot stand in for each
    other). A pass that writes its result split writes two halves instead of one tensor."""

    n, hls, hfs, side = 3, 2, 8, 4
    coords = small_grid(side)
    params = [(w.to(DEVICE), b.to(DEVICE)) for w, b in members(n, hls, hfs)]
    fit = FitOptions(epochs=2, progress=False, snapshot_epochs=[], matmul_precision=precision)
    chunk = FusedChunk(params, coords.to(DEVICE), targets(n, coords).to(DEVICE), fit, 30.0, {})
    moved = []

    def count(name, words):
        real = getattr(fused, name)

        def counted(*args, split=None):
            moved.append(4 * words(*args, halves=split is not None))
            return real(*args) if split is None else real(*args, split=split)

        monkeypatch.setattr(fused, name, counted)

    # sine pass: product read, cosine and the sine (or its halves) written; cosine pass: gradient and cosine
    # read, the product (or its halves) written; Adam: 4 reads, 3 writes (and the parameters' halves)
    count("sincos_bias_", lambda s, *_, halves: (3 + halves) * s.numel())
    count("cos_grad_", lambda g, *_, halves: (3 + halves) * g.numel())
    count("head", lambda pred_t, *_, halves: 4 * pred_t.numel())
    count("adam", lambda layout, flat, *_, halves: (7 + 2 * halves) * sum(v.numel() for v in layout.views(flat)))
    count("split_tf32_", lambda x, *_, halves: 3 * x.numel())
    chunk.epoch()
    assert sum(moved) == n * fused_bytes_per_member_epoch(hls, hfs, side * side, precision)
