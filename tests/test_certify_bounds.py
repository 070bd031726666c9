"""Bound propagation: sound on random networks and regions, CROWN inside IBP, exact where it should be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from squiggles.certify.bounds import METHODS, margin_bounds, output_bounds, spec_bounds, verified
from squiggles.certify.layers import UnsupportedLayer, chain_of
from squiggles.errors import SquigglesError
from squiggles.models import Normalize, build_model


def _conv_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.1, 0.1)
    return nn.Sequential(
        Normalize(0.5, 0.25), nn.Conv2d(1, 4, 3, stride=2, padding=1), bn, nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)), nn.Flatten(),
        nn.Linear(6 * 2 * 2, 12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 4),
    ).eval()


def _samples(x: torch.Tensor, norm: str, eps: float, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random points of the region, corners and surface included."""
    noise = torch.rand((k, *x.shape), generator=gen) * 2 - 1
    if norm == "linf":
        noise = torch.where(torch.rand(noise.shape, generator=gen) < 0.5, noise.sign(), noise)
        return (x + eps * noise).clamp(0, 1)
    flat = noise.flatten(2)
    flat = flat / flat.norm(dim=2, keepdim=True) * eps * torch.rand((k, len(x), 1), generator=gen).sqrt()
    return x + flat.view_as(noise)


def _pgd_extremes(net: nn.Module, x: torch.Tensor, norm: str, eps: float, sign: float) -> torch.Tensor:
    """Every output pushed up (sign 1) or down (-1) by 30 signed-gradient steps inside the region."""
    from squiggles.threat import make_threat

    threat = make_threat(norm, eps, (0.0, 1.0) if norm == "linf" else (-10.0, 10.0))
    outs = []
    for j in range(net(x[:1]).shape[1]):
        xa = x.clone()
        for _ in range(30):
            xa.requires_grad_(True)
            (g,) = torch.autograd.grad(sign * net(xa)[:, j].sum(), xa)
            xa = threat.project(xa.detach() + threat.step(g, eps / 8), x)
        outs.append(net(xa)[:, j].detach())
    return torch.stack(outs, 1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("linf", 0.15), ("l2", 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_sampled_or_attacked_input_leaves_the_bounds(norm, eps, seed):
    net = _conv_net(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 1, 8, 8, generator=gen)
    samples = _samples(x, norm, eps, 300, gen)
    with torch.no_grad():
        outs = net(samples.flatten(0, 1)).view(300, 5, -1)
    hi_seen, lo_seen = outs.amax(0), outs.amin(0)
    hi_seen = torch.maximum(hi_seen, _pgd_extremes(net, x, norm, eps, 1.0))
    lo_seen = torch.minimum(lo_seen, _pgd_extremes(net, x, norm, eps, -1.0))
    widths = {}
    for method in METHODS:
        with torch.no_grad():
            lo, hi = output_bounds(net, x, norm, eps, method, bounds=(0.0, 1.0) if norm == "linf" else (-10, 10))
        assert (lo <= lo_seen + 1e-5).all() and (hi >= hi_seen - 1e-5).all(), method
        widths[method] = hi - lo
    # CROWN lies inside IBP everywhere, and is strictly tighter somewhere.
    assert (widths["crown"] <= widths["ibp"] + 1e-5).all()
    assert (widths["crown"] < widths["ibp"] - 1e-4).any()
    assert (widths["crown"] <= widths["crown-ibp"] + 1e-5).all()


def test_margin_bounds_are_sound_and_crown_is_inside_ibp():
    net = _conv_net(3)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 8, 8, generator=gen)
    y = net(x).argmax(1)
    samples = _samples(x, "linf", 0.05, 300, gen)
    with torch.no_grad():
        z = net(samples.flatten(0, 1)).view(300, 8, -1)
        true_margin = (z.gather(2, y.view(1, 8, 1).expand(300, 8, 1)) - z).amin(0)
        bounds = {m: margin_bounds(net, x, y, "linf", 0.05, m) for m in METHODS}
    for m, b in bounds.items():
        assert (b <= true_margin + 1e-5).all(), m
        assert torch.allclose(b.gather(1, y.unsqueeze(1)), torch.zeros(8, 1)), "the label's own margin is 0"
    assert (bounds["crown"] >= bounds["ibp"] - 1e-5).all() and (bounds["crown-ibp"] >= bounds["ibp"] - 1e-5).all()
    # A point verified is one the model gets right everywhere in the box.
    ok = verified(bounds["crown"], y)
    assert ((z.argmax(2) == y).all(0) | ~ok).all()


def test_bounds_on_a_linear_model_are_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).eval()
    x = torch.rand(4, 1, 6) * 0.6 + 0.2  # far enough from 0 and 1 that the box is not clipped
    eps = 0.1
    w, b = net[1].weight, net[1].bias
    centre = x.flatten(1) @ w.T + b
    for method in METHODS:
        lo, hi = output_bounds(net, x, "linf", eps, method)
        assert torch.allclose(lo, centre - eps * w.abs().sum(1), atol=1e-5)
        assert torch.allclose(hi, centre + eps * w.abs().sum(1), atol=1e-5)
        lo2, hi2 = output_bounds(net, x, "l2", eps, method)
        assert torch.allclose(hi2 - lo2, 2 * eps * w.norm(dim=1).expand(4, 3), atol=1e-5)


def _lp_lower_bound(net: nn.Sequential, x: torch.Tensor, eps: float, c: torch.Tensor) -> float:
    """min c . f(x') over the box with CROWN's relaxation of each ReLU, solved exactly by scipy's linprog."""
    from scipy.optimize import linprog

    w1, b1 = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    w2, b2 = net[2].weight.detach().double().numpy(), net[2].bias.detach().double().numpy()
    x0 = x.double().numpy()
    lo_x, hi_x = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    lo = w1.clip(0) @ lo_x + w1.clip(max=0) @ hi_x + b1
    hi = w1.clip(0) @ hi_x + w1.clip(max=0) @ lo_x + b1
    d, h = len(x0), len(b1)
    # variables [x (d), y (h)]; z = W1 x + b1 is substituted in.
    obj = np.concatenate([np.zeros(d), c.double().numpy() @ w2])
    a_ub, b_ub, a_eq, b_eq = [], [], [], []
    bounds = [(lo_x[i], hi_x[i]) for i in range(d)] + [(None, None)] * h
    for j in range(h):
        row = np.zeros(d + h)
        if lo[j] >= 0:          # active: y = z
            row[:d], row[d + j] = -w1[j], 1.0
            a_eq.append(row)
            b_eq.append(b1[j])
        elif hi[j] <= 0:        # dead: y = 0
            row[d + j] = 1.0
            a_eq.append(row)
            b_eq.append(0.0)
        else:
            slope = hi[j] / (hi[j] - lo[j])
            up = np.zeros(d + h)  # y <= slope (z - l)
            up[:d], up[d + j] = -slope * w1[j], 1.0
            a_ub.append(up)
            b_ub.append(slope * (b1[j] - lo[j]))
            down = np.zeros(d + h)  # y >= a z with CROWN's adaptive a (1 where u > -l, else 0)
            a = 1.0 if hi[j] > -lo[j] else 0.0
            down[:d], down[d + j] = a * w1[j], -1.0
            a_ub.append(down)
            b_ub.append(-a * b1[j])
    res = linprog(obj, A_ub=np.array(a_ub) if a_ub else None, b_ub=b_ub or None,
                  A_eq=np.array(a_eq) if a_eq else None, b_eq=b_eq or None, bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return float(res.fun + c.double().numpy() @ b2)


def test_crown_equals_the_exact_lp_of_its_relaxation_on_one_hidden_layer():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval().double()
    gen = torch.Generator().manual_seed(4)
    for trial in range(4):
        x = torch.rand(1, 5, generator=gen, dtype=torch.float64)
        c = torch.randn(1, 1, 3, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            ours = spec_bounds(net, x, c, "linf", 0.3, "crown")
        lp = _lp_lower_bound(net, x[0], 0.3, c[0, 0])
        assert ours.item() == pytest.approx(lp, abs=1e-6), trial


def test_zoo_architectures_are_chained_and_unsupported_layers_are_named():
    for arch in ("small-cnn", "madry-cnn", "trades-cnn", "mlp", "linear"):
        net = build_model(arch, mean=0.1307, std=0.3081).eval()
        x = torch.rand(2, 1, 28, 28)
        out = x
        for op in chain_of(net, (1, 28, 28)):
            out = op.forward(out)
        assert torch.allclose(out, net(x), atol=1e-5), arch
    with pytest.raises(UnsupportedLayer, match=r"layer 2 \(Tanh\)"):
        chain_of(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh()), (4,))
    with pytest.raises(UnsupportedLayer, match=r"Recenter"):
        chain_of(build_model("small-cnn", recenter=True), (1, 28, 28))
    train_mode = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(UnsupportedLayer, match="training mode"):
        chain_of(train_mode, (4,))


def test_bad_regions_are_refused():
    net = nn.Sequential(nn.Linear(3, 2)).eval()
    x = torch.rand(2, 3)
    with pytest.raises(SquigglesError, match="outside the input range"):
        output_bounds(net, x, "linf", 1.5)
    with pytest.raises(SquigglesError, match=">= 0"):
        output_bounds(net, x, "l2", -0.1)
    with pytest.raises(SquigglesError, match="unknown bound method"):
        output_bounds(net, x, "linf", 0.1, "deepz")
    with pytest.raises(SquigglesError, match="linf or l2"):
        output_bounds(net, x, "l1", 0.1)


def test_bounds_are_differentiable_in_the_weights():
    net = build_model("small-cnn").eval()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    for method in ("ibp", "crown-ibp"):
        m = margin_bounds(net, x, y, "linf", 0.05, method)
        (g,) = torch.autograd.grad(m.sum(), net[0].weight)
        assert g.abs().sum() > 0, method
