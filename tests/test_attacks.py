"""One property test suite over every attack in the registry, on tiny deterministic models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from squiggles.attacks.registry import ATTACKS
from squiggles.threat import L2, Linf, make_threat

# Small budgets so the suite stays fast; properties do not depend on them.
FAST = {"square": {"queries": 200}, "cw": {"steps": 30, "binary_steps": 3}, "hsja": {"queries": 300},
        "boundary": {"queries": 300}, "rays": {"queries": 300}}
CASES = [(name, norm) for name, spec in ATTACKS.items() for norm in ("linf", "l2") if norm in spec.norms]


def _options(name: str) -> dict:
    spec = ATTACKS[name]
    opts = dict(FAST.get(name, {}))
    if spec.steps_option and spec.steps_option not in opts:
        opts[spec.steps_option] = 10
    return opts


def _cnn(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4)).to(dtype)


def _tabular(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def _images(dtype=torch.float32) -> torch.Tensor:
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _eps(norm: str, scale: float = 1.0) -> float:
    return scale * (0.1 if norm == "linf" else 0.8)


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_inside_budget_and_bounds_and_success_is_verified(name, norm):
    model, x = _cnn(), _images()
    threat = make_threat(norm, _eps(norm))
    res = ATTACKS[name](model, x, None, threat, **_options(name))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert (threat.norm(res.x_adv - x) <= threat.eps + 1e-5).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred, res.pred)
    assert torch.equal(res.success, pred != res.labels)
    assert res.labels_source == "pred" and res.forwards >= 2 * len(x)
    assert torch.allclose(res.norms, threat.norm(res.x_adv - x))


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_eps_zero_changes_nothing(name, norm):
    model, x = _cnn(), _images()
    res = ATTACKS[name](model, x, None, make_threat(norm, 0.0), **_options(name))
    assert torch.equal(res.x_adv, x)
    assert not res.success.any()


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_succeeds_on_an_easy_model(name, norm):
    # A linear model with a margin of 0.2 in logits between classes 0 and 1: every point is well within eps
    # of that boundary. Classes 2 and 3 are never close; they exist so that losses needing >= 4 classes apply.
    model = nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0], model.weight[1] = 1.0, -1.0
        model.bias.copy_(torch.tensor([-3.2, 3.2, -5.0, -6.0]))
    x = torch.full((8, 6), 0.55)
    res = ATTACKS[name](
        model, x, torch.zeros(8, dtype=torch.long), make_threat(norm, _eps(norm, 2.0)), **_options(name)
    )
    assert res.success.all(), f"{name} failed on an easy model: {res.success.tolist()}"


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_same_seed_same_result_and_global_rng_untouched(name, norm):
    model, x = _cnn(), _images()
    threat = make_threat(norm, _eps(norm))
    state = torch.get_rng_state()
    a = ATTACKS[name](model, x, None, threat, seed=3, **_options(name))
    assert torch.equal(torch.get_rng_state(), state)
    b = ATTACKS[name](model, x, None, threat, seed=3, **_options(name))
    assert torch.equal(a.x_adv, b.x_adv) and a.seed == 3


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_parameter_grad_and_mode_untouched(name, norm):
    model = _cnn()
    model.train()
    marker = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, m in zip(model.parameters(), marker, strict=True):
        p.grad = m.clone()
    ATTACKS[name](model, _images(), None, make_threat(norm, _eps(norm)), **_options(name))
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    for p, m in zip(model.parameters(), marker, strict=True):
        assert torch.equal(p.grad, m)


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_float64_and_tabular_inputs(name, norm):
    x64 = _images(torch.float64)
    res = ATTACKS[name](_cnn(torch.float64), x64, None, make_threat(norm, _eps(norm)), **_options(name))
    assert res.x_adv.dtype == torch.float64
    tab = torch.rand(10, 6, generator=torch.Generator().manual_seed(2))
    res = ATTACKS[name](_tabular(), tab, None, make_threat(norm, _eps(norm)), **_options(name))
    assert res.x_adv.shape == (10, 6)
    assert (make_threat(norm, _eps(norm)).norm(res.x_adv - tab) <= _eps(norm) + 1e-5).all()


class _Overshoot(nn.Module):
    """1-D model whose class-1 logit peaks at x = 0.35: PGD from 0 with step 0.3 visits 0.3 (broken)
    and then 0.6 (not broken), so the last iterate is worse than the best."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1 = 1 - 10 * (x[:, :1] - 0.35).abs()
        return torch.cat([torch.zeros_like(z1), z1], 1)


def test_pgd_returns_the_best_iterate_not_the_last():
    res = ATTACKS["pgd"](
        _Overshoot(),
        torch.zeros(1, 1),
        torch.tensor([0]),
        Linf(1.0, bounds=(-5.0, 5.0)),
        steps=2,
        step_size=0.3,
        random_start=False,
    )
    assert res.success.item()
    assert res.x_adv.item() == pytest.approx(0.3)


def test_pgd_l2_starts_inside_half_the_ball_by_default():
    # steps=1 with a zero step returns the random start itself, so its radius can be read off the norms.
    x = torch.full((64, 1, 8, 8), 0.5)
    net = _cnn()
    half = ATTACKS["pgd"](net, x, None, L2(2.0), steps=1, step_size=0.0, seed=3)
    whole = ATTACKS["pgd"](net, x, None, L2(2.0), steps=1, step_size=0.0, seed=3, init_scale=1.0)
    assert half.config["init_scale"] == 0.5 and whole.config["init_scale"] == 1.0
    assert half.norms.max() <= 1.0 + 1e-5 and half.norms.min() > 0.7  # uniform in the ball: radius near the rim
    assert whole.norms.min() > 1.4
    linf = ATTACKS["pgd"](net, x, None, Linf(0.1), steps=1, step_size=0.0, seed=3)
    assert linf.config["init_scale"] == 1.0 and linf.norms.max() > 0.09
    with pytest.raises(Exception, match="init_scale"):
        ATTACKS["pgd"](net, x, None, L2(2.0), init_scale=2.0)


def _linear_problem(k: int = 3):
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(5, k).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, 5, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    w = model.weight.detach()
    dists = {}
    for p, dual in (("l2", 2), ("linf", 1)):
        per_class = []
        for j in range(k):
            dw = w[y] - w[j]
            gap = logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]
            per_class.append(
                torch.where(
                    torch.arange(k)[None, :].expand(20, k)[:, j] == y,
                    torch.full_like(gap, math.inf),
                    gap / dw.norm(p=dual, dim=1),
                )
            )
        dists[p] = torch.stack(per_class, 1).amin(1)
    return model, x, y, dists


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_on_a_linear_model_breaks_just_above_the_closed_form_distance(norm):
    # Two classes: the gradient points straight at the only boundary, so PGD must find it.
    model, x, y, dists = _linear_problem(k=2)
    d = dists[norm]
    cls = Linf if norm == "linf" else L2
    above = ATTACKS["pgd"](
        model, x, y, cls(d * 1.01, bounds=(-50.0, 50.0)), steps=100, random_start=False, loss="margin"
    )
    below = ATTACKS["pgd"](
        model, x, y, cls(d * 0.99, bounds=(-50.0, 50.0)), steps=100, random_start=False, loss="margin"
    )
    assert above.success.all()
    assert not below.success.any()
