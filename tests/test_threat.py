from __future__ import annotations

import math

import pytest
import torch

from squiggles.errors import SquigglesError
from squiggles.threat import L1, L2, Linf, make_threat

THREATS = [Linf, L2, L1]


@pytest.mark.parametrize("cls", THREATS)
@pytest.mark.parametrize("shape", [(64, 1, 5, 5), (64, 7)])
def test_random_init_is_inside_ball_and_bounds(cls, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    t = cls(0.5)
    x0 = t.random_init(x, g)
    assert x0.shape == x.shape
    assert (t.norm(x0 - x) <= 0.5 + 1e-6).all()
    assert x0.min() >= 0 and x0.max() <= 1


def test_l2_random_init_radius_follows_u_to_the_one_over_d():
    # Without bounds binding, P(radius <= r eps) = r^d; for d=2 the median radius is sqrt(0.5) eps.
    t = L2(1.0, bounds=(-10.0, 10.0))
    x = torch.zeros(20000, 2)
    r = t.norm(t.random_init(x, torch.Generator().manual_seed(1)) - x)
    assert r.median().item() == pytest.approx(math.sqrt(0.5), abs=0.02)
    assert r.max().item() <= 1.0 + 1e-6


@pytest.mark.parametrize("cls", THREATS)
def test_projection_lands_in_ball_and_bounds_and_is_idempotent(cls):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 10, generator=g)
    t = cls(0.3)
    far = x + 3 * torch.randn(32, 10, generator=g)
    p = t.project(far, x)
    assert (t.norm(p - x) <= 0.3 + 1e-5).all()
    assert p.min() >= 0 and p.max() <= 1
    assert torch.allclose(t.project(p, x), p, atol=1e-6)


def test_l2_projection_is_the_nearest_point_of_the_ball():
    t = L2(1.0, bounds=(-100.0, 100.0))
    x = torch.zeros(1, 2)
    assert torch.allclose(t.project(torch.tensor([[3.0, 4.0]]), x), torch.tensor([[0.6, 0.8]]))


def test_l1_projection_matches_soft_threshold_by_hand():
    t = L1(1.0, bounds=(-100.0, 100.0))
    # |(3, 1)|_1 = 4 > 1: soft-threshold by theta = 2 gives (1, 0).
    assert torch.allclose(t.project(torch.tensor([[3.0, 1.0]]), torch.zeros(1, 2)), torch.tensor([[1.0, 0.0]]))


def test_steps_have_the_right_size_in_their_norm():
    g = torch.randn(4, 3, 3)
    assert torch.allclose(Linf(1).norm(Linf(1).step(g, 0.1)), torch.full((4,), 0.1))
    assert torch.allclose(L2(1).norm(L2(1).step(g, 0.1)), torch.full((4,), 0.1))
    assert torch.allclose(L1(1).norm(L1(1).step(g, 0.1)), torch.full((4,), 0.1))


def test_per_example_eps_and_dtype_follow_input():
    t = Linf(torch.tensor([0.0, 0.5]))
    x = torch.full((2, 3), 0.5, dtype=torch.float64)
    p = t.project(x + 1, x)
    assert p.dtype == torch.float64
    assert torch.equal(p[0], x[0]) and torch.allclose(p[1], torch.ones(3, dtype=torch.float64))


def test_bad_budgets_are_refused():
    with pytest.raises(SquigglesError, match="eps must be >= 0"):
        Linf(-0.1)
    with pytest.raises(SquigglesError, match="low < high"):
        L2(1.0, bounds=(1.0, 0.0))
    with pytest.raises(SquigglesError, match="unknown norm"):
        make_threat("l3", 0.1)
    assert isinstance(make_threat("inf", 0.1), Linf) and isinstance(make_threat("L2", 0.1), L2)
