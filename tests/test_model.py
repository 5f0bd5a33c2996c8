"""The SIREN's shape and initialisation follow docs/protocol.md; both engines' models compute the same thing."""

import math

import pytest
import torch
from reference import batched_forward

from prefit.data import coordinate_grid
from prefit.model import FieldNet, init_params, layer_sizes, member_params, n_weights, stack_params, triple_generator


def test_layers_match_the_protocol():
    assert layer_sizes(2, 32) == [(2, 32), (32, 32), (32, 32), (32, 3)]  # hls = 2: four linear layers
    assert len(FieldNet(layer_sizes(5, 8)).layers) == 7
    assert n_weights(2, 32) == sum(p.numel() for p in FieldNet(layer_sizes(2, 32)).parameters())


@pytest.mark.parametrize("hls,hfs", [(2, 32), (3, 128)])
def test_init_bounds(hls, hfs):
    params = init_params(hls, hfs, 30.0, triple_generator(42, 0))
    w, b = params[0]
    assert w.abs().max() <= 1 / 2 and w.abs().max() > 0.4  # U(-1/fan_in, 1/fan_in), fan_in = 2
    assert b.abs().max() <= 1 / math.sqrt(2)
    for w, b in params[1:]:
        fan_in = w.shape[0]
        bound = math.sqrt(6 / fan_in) / 30
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert b.abs().max() <= 1 / math.sqrt(fan_in)
        assert abs(w.mean().item()) < bound / 5  # centred, not one-sided


def test_init_is_seeded_per_triple():
    a = init_params(2, 16, 30.0, triple_generator(42, 3))
    b = init_params(2, 16, 30.0, triple_generator(42, 3))
    c = init_params(2, 16, 30.0, triple_generator(42, 4))
    d = init_params(2, 16, 30.0, triple_generator(43, 3))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0]) and not torch.equal(a[0][0], d[0][0])


def test_module_and_batched_forward_agree():
    members = [init_params(3, 16, 30.0, triple_generator(1, t)) for t in range(3)]
    stacked = stack_params(members)
    coords = coordinate_grid()
    batched = batched_forward(stacked, coords, 30.0)
    for i in range(3):
        module = FieldNet.for_params(member_params(stacked, i))
        torch.testing.assert_close(module(coords), batched[i], rtol=1e-5, atol=1e-5)
        back = module.params()
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(back, members[i]))


def test_coordinate_grid_is_row_major_with_row_first():
    grid = coordinate_grid()
    assert grid.shape == (1024, 2)
    assert torch.equal(grid[0], torch.tensor([-1.0, -1.0]))
    assert torch.equal(grid[1], torch.tensor([-1.0, -1.0 + 2 / 31]))  # pixel 1: same row, next column
    assert torch.equal(grid[32], torch.tensor([-1.0 + 2 / 31, -1.0]))  # pixel 32: next row
    assert torch.equal(grid[-1], torch.tensor([1.0, 1.0]))
