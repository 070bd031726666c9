"""FAB-T: the contract (budget, bounds, verified success), exactness on a linear model whose boundary lies at a
known distance, and the refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squiggles.attacks.fab import _project, fab_targeted
from squiggles.errors import SquigglesError
from squiggles.goals import Targeted
from squiggles.threat import L1, L2, Linf


def _linear(gap: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Three classes on 4 features; at x = 0.5 class 0 beats class 1 by ``gap`` (class 2 is far behind)."""
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [-5.0, -5, 0, 0]]))
        model.bias.copy_(torch.tensor([gap, 0.0, 0.0]))
    return model, torch.full((3, 4), 0.5), torch.zeros(3, dtype=torch.long)


@pytest.mark.parametrize(("norm", "distance"), [("l2", 0.2 / 2**0.5), ("linf", 0.1)])
def test_breaks_exactly_the_points_within_the_boundary_distance(norm, distance):
    # The boundary z0 - z1 = 0 is at L2 distance gap / sqrt(2), Linf distance gap / 2, from x.
    model, x, y = _linear(0.2)
    threat = {"l2": L2, "linf": Linf}[norm]
    inside = fab_targeted(model, x, y, threat(distance * 1.1), steps=30)
    assert inside.success.all() and bool((inside.norms <= distance * 1.1 + 1e-6).all())
    outside = fab_targeted(model, x, y, threat(distance * 0.9), steps=30)
    assert not outside.success.any() and torch.equal(outside.x_adv, x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_contract_on_a_small_cnn(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    threat = L2(1.0) if norm == "l2" else Linf(0.1)
    res = fab_targeted(model, x, y, threat, steps=40, n_target_classes=4)
    assert bool((res.norms <= float(threat.eps) + 1e-5).all()) and bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert res.success.any()


def test_projection_lands_on_the_plane_inside_the_box():
    g = torch.Generator().manual_seed(0)
    p, w = torch.rand(5, 10, generator=g), torch.randn(5, 10, generator=g)
    b = (w * torch.rand(5, 10, generator=g)).sum(1)  # a plane through a point of the box: they meet
    for linf in (False, True):
        z = _project(p, w, b, 0.0, 1.0, linf)
        assert torch.allclose((w * z).sum(1), b, atol=1e-4) and bool(((z >= 0) & (z <= 1)).all())


def test_refusals():
    model, x, y = _linear(0.2)
    with pytest.raises(SquigglesError, match="picks its own target classes"):
        fab_targeted(model, x, Targeted(torch.ones(3, dtype=torch.long), labels=y), L2(1.0))
    with pytest.raises(SquigglesError, match="Linf and L2"):
        fab_targeted(model, x, y, L1(1.0))
    with pytest.raises(SquigglesError, match=">= 1"):
        fab_targeted(model, x, y, L2(1.0), steps=0)
