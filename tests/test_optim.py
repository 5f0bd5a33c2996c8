"""The batched Adam and plateau schedule reproduce torch's own, member by member."""

import pytest
import torch

from prefit import fused
from prefit.engine.options import FitOptions
from prefit.optim import BatchedAdam, BatchedPlateau

FUSED_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a CPU runs them interpreted


# BatchedAdam's paths: compiled (a CPU's), multi-tensor (CUDA's), and multi-tensor with the step count on the
# device (the torch step captured on CUDA)
MODES = ["compiled (cpu)", "multi-tensor (cuda path)", "device step (captured)"]


def batched_adam(params: list[torch.Tensor], lr: torch.Tensor, mode: str, **options) -> BatchedAdam:
    """A BatchedAdam on CPU tensors taking the path `mode` names."""
    adam = BatchedAdam(params, lr, device_step=mode == MODES[2], **options)
    assert adam.compiled == (mode != MODES[2])  # contiguous float32 on the CPU, unless the step is on the device
    adam.compiled = mode == MODES[0]
    return adam


@pytest.mark.parametrize("mode", MODES)
def test_batched_adam_matches_torch_adam_per_member(mode):
    torch.manual_seed(0)
    members, lrs = 3, [1e-4, 3e-3, 0.05]
    shapes = [(members, 5, 4), (members, 1, 4)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(60)]

    stacked = [p.clone() for p in start]
    adam = batched_adam(stacked, torch.tensor(lrs, dtype=torch.float64), mode)
    for g in grads:
        adam.step(g)

    for i, lr in enumerate(lrs):
        ref = [p[i].clone().requires_grad_(True) for p in start]
        opt = torch.optim.Adam(ref, lr=lr, betas=(0.9, 0.999), eps=1e-8)
        for g in grads:
            for p, gi in zip(ref, g):
                p.grad = gi[i].clone()
            opt.step()
        for p, q in zip(ref, stacked):
            torch.testing.assert_close(p.detach(), q[i], rtol=1e-6, atol=1e-7)  # within an ulp


def tiny_gradient_case(eps: float):
    """Start weights, 40 steps of gradients of scale 1e-9 (where eps, not sqrt(v), sets Adam's step) and
    torch.optim.Adam's result for each member's learning rate."""
    g = torch.Generator().manual_seed(3)
    lrs = [1e-2, 3e-2, 5e-3]
    shapes = [(3, 4, 5), (3, 1, 5)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[1e-9 * torch.randn(s, generator=g) for s in shapes] for _ in range(40)]
    expected = []
    for i, lr in enumerate(lrs):
        ref = [p[i].clone().requires_grad_(True) for p in start]
        opt = torch.optim.Adam(ref, lr=lr, betas=(0.9, 0.999), eps=eps)
        for step in grads:
            for p, gi in zip(ref, step):
                p.grad = gi[i].clone()
            opt.step()
        expected.append([p.detach() for p in ref])
    return torch.tensor(lrs, dtype=torch.float64), start, grads, expected


def assert_matches(result: list[torch.Tensor], start: list[torch.Tensor], expected, rtol: float, atol: float) -> None:
    for i, ref in enumerate(expected):
        for p, q, p0 in zip(ref, result, start):
            assert (p - p0[i]).abs().max() > 100 * atol  # the steps add up to far more than the tolerance
            torch.testing.assert_close(q[i], p, rtol=rtol, atol=atol)


@pytest.mark.parametrize("eps", [1e-8, 3e-10])
@pytest.mark.parametrize("mode", MODES)
def test_batched_adam_matches_torch_adam_where_eps_dominates(mode, eps):
    """Gradients far below eps: the step is about lr * m / eps, so an eps other than the one asked for shows."""
    lr, start, grads, expected = tiny_gradient_case(eps)
    stacked = [p.clone() for p in start]
    adam = batched_adam(stacked, lr, mode, betas=(0.9, 0.999), eps=eps)
    for step in grads:
        adam.step(step)
    assert_matches(stacked, start, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eps", [1e-8, 3e-10])
def test_fused_adam_matches_torch_adam_where_eps_dominates(eps):
    """The fused Adam (prefit.fused: compiled on a GPU, interpreted by Triton on a CPU) on gradients far
    below eps, against torch.optim.Adam."""
    if why := fused.unavailable(FUSED_DEVICE):
        pytest.skip(f"the fused kernels cannot run: {why}")
    lr, start, grads, expected = tiny_gradient_case(eps)
    layout = fused.FlatParams([p.shape for p in start], FUSED_DEVICE)
    flat = layout.buffer(start[0].to(FUSED_DEVICE))
    grad_flat, m, v = layout.buffer(flat), layout.buffer(flat), layout.buffer(flat)
    for view, p in zip(layout.views(flat), start):
        view.copy_(p)
    fit = FitOptions(betas=(0.9, 0.999), eps=eps, plateau_patience=10**6)  # no plateau within the run
    state = fused.Schedule.start(fit, lr.shape[0], FUSED_DEVICE)
    state.lr.copy_(lr)
    losses = torch.empty(len(grads), lr.shape[0], device=FUSED_DEVICE)
    lrs = torch.empty(len(grads), lr.shape[0], dtype=torch.float64, device=FUSED_DEVICE)
    loss = torch.ones(lr.shape[0], device=FUSED_DEVICE)
    for step in grads:
        for view, grad in zip(layout.views(grad_flat), step):
            view.copy_(grad)
        fused.schedule(state, loss, losses, lrs)
        fused.adam(layout, flat, grad_flat, m, v, state)
    assert_matches([view.cpu() for view in layout.views(flat)], start, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.99)])
def test_the_device_step_count_gives_the_host_counts_numbers_bit_for_bit(betas):
    """Adam's bias corrections from a step count on the device (float64 powers, what a captured step reads) are
    the host's Python ones: the same weights bit for bit after thousands of steps and a changed learning rate."""
    g = torch.Generator().manual_seed(4)
    shapes = [(3, 5, 4), (3, 1, 4)]
    start = [torch.randn(s, generator=g) for s in shapes]
    lr = torch.tensor([1e-4, 3e-3, 0.05], dtype=torch.float64)
    host, device = [p.clone() for p in start], [p.clone() for p in start]
    adams = [batched_adam(host, lr, MODES[1], betas=betas), batched_adam(device, lr, MODES[2], betas=betas)]
    for step in range(2000):
        if step == 1000:
            lr[1] = 1e-3
        grads = [torch.randn(s, generator=g) for s in shapes]
        for adam in adams:
            adam.step(grads)
    assert adams[1].steps.item() == 2000 and adams[1].step_count == 0
    for p, q, p0 in zip(host, device, start):
        assert torch.equal(p, q) and not torch.equal(p, p0)


def test_batched_adam_follows_a_changing_learning_rate():
    torch.manual_seed(1)
    start = torch.randn(2, 3, 3)
    grads = [torch.randn(2, 3, 3) for _ in range(20)]
    lr = torch.tensor([1e-2, 1e-2], dtype=torch.float64)
    p = start.clone()
    adam = BatchedAdam([p], lr)
    ref = start[1].clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2)
    for step, g in enumerate(grads):
        if step == 10:
            lr[1] = 5e-3  # the plateau schedule halves member 1 only
            opt.param_groups[0]["lr"] = 5e-3
        adam.step([g])
        ref.grad = g[1].clone()
        opt.step()
    torch.testing.assert_close(p[1], ref.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(p[0], p[1])


def test_batched_plateau_matches_torch_scheduler():
    torch.manual_seed(2)
    epochs = 80
    # member 0 improves steadily, 1 stalls, 2 stalls then improves a little, 3 goes NaN (diverged)
    losses = torch.stack(
        [
            torch.linspace(1.0, 0.1, epochs),
            torch.full((epochs,), 0.5),
            torch.cat([torch.full((30,), 0.5), torch.linspace(0.49999, 0.49990, 50)]),
            torch.cat([torch.linspace(1.0, 0.9, 10), torch.full((70,), float("nan"))]),
        ]
    ).float()
    lr = torch.full((4,), 1e-2, dtype=torch.float64)
    plateau = BatchedPlateau(lr, factor=0.5, patience=7, threshold=1e-4)
    history = []
    for e in range(epochs):
        history.append(lr.clone())
        plateau.step(losses[:, e])
    history = torch.stack(history, 1)

    for i in range(4):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-2)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.5, patience=7, threshold=1e-4, threshold_mode="rel"
        )
        ref = []
        for e in range(epochs):
            ref.append(opt.param_groups[0]["lr"])
            sched.step(losses[i, e])
        assert history[i].tolist() == ref, f"member {i}"
    assert history[0, -1] == 1e-2 and history[1, -1] < 1e-3  # the schedule did act
