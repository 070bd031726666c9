"""Randomized smoothing: radii in closed form on a linear model, the error rate of CERTIFY, abstention."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from squiggles.certify.result import max_radius
from squiggles.certify.smoothing import (
    ABSTAIN,
    certified_accuracy,
    certify,
    lower_confidence_bound,
    predict,
    sample_counts,
)
from squiggles.errors import SquigglesError


def _halfplane() -> nn.Module:
    """Class 0 where x_0 > 0, else class 1: the distance to the boundary is |x_0|."""
    net = nn.Linear(3, 2, bias=False)
    net.weight.data = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    return net


def test_radius_matches_the_closed_form_on_a_linear_model():
    # For a linear classifier pA = Phi(d / sigma), so the radius sigma Phi^-1(pA) is the distance d itself.
    d = torch.tensor([0.1, 0.25, 0.4, -0.3])
    x = torch.zeros(4, 3)
    x[:, 0] = d
    cert = certify(_halfplane(), x, 0.25, n0=100, n=100_000, alpha=0.001, seed=0)
    assert cert.prediction.tolist() == [0, 0, 0, 1]
    assert (cert.radius <= d.abs() + 0.005).all(), "a lower confidence bound never overshoots by much"
    assert torch.allclose(cert.radius, d.abs(), atol=0.03)
    assert cert.model_calls == 4 * 100_100


def test_certify_errs_no_more_often_than_alpha():
    # A 1-D threshold model with known pA = Phi(0.5) ~ 0.69 under sigma 1; 400 independent certifications.
    class Threshold(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.stack([0.5 - z[:, 0], z[:, 0] - 0.5], 1)

    p_true = norm.cdf(0.5)
    alpha = 0.05
    cert = certify(Threshold(), torch.zeros(400, 1), 1.0, n0=20, n=200, alpha=alpha, seed=1)
    overshoots = int((cert.p_lower.double() > p_true).sum())
    # Binomial(400, <= 0.05): mean at most 20, three standard deviations above it is 33.
    assert overshoots <= 33
    assert cert.p_lower.mean() > p_true - 0.1, "the bound is not trivially loose"
    assert (cert.prediction == 0).float().mean() > 0.9


def test_lower_confidence_bound_is_clopper_pearson():
    from scipy.stats import binomtest

    # Cohen et al. take statsmodels' two-sided "beta" interval at level 2 alpha; scipy's exact interval is the same.
    k = torch.tensor([0, 1, 57, 99, 100])
    ours = lower_confidence_bound(k, 100, 0.001)
    theirs = [binomtest(int(v), 100).proportion_ci(1 - 2 * 0.001, method="exact").low for v in k]
    assert ours.tolist() == pytest.approx(theirs, abs=1e-10)


def test_abstention_on_a_coin_and_on_ties():
    class Coin(nn.Module):  # the base model's class is random: no class is favoured
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.stack([z[:, 0], -z[:, 0]], 1)

    cert = certify(Coin(), torch.zeros(6, 1), 0.5, n0=50, n=2000, alpha=0.001, seed=0)
    assert (cert.prediction == ABSTAIN).all() and (cert.radius == 0).all()
    assert (predict(Coin(), torch.zeros(6, 1), 0.5, n=2000, alpha=0.001, seed=0) == ABSTAIN).all()
    constant = nn.Linear(1, 3)
    constant.weight.data.zero_()
    constant.bias.data = torch.tensor([0.0, 1.0, 0.0])
    assert predict(constant, torch.zeros(2, 1), 0.5, n=100, seed=0).tolist() == [1, 1]
    cert = certify(constant, torch.zeros(2, 1), 0.5, n0=10, n=1000, alpha=0.001, seed=0)
    assert cert.prediction.tolist() == [1, 1]
    assert cert.radius.tolist() == pytest.approx([max_radius(0.5, 1000, 0.001)] * 2, abs=1e-5)


def test_counts_sum_to_the_draws_and_are_seeded():
    net = _halfplane()
    x = torch.randn(3, 3)
    a = sample_counts(net, x, 0.3, 777, 2, batch_size=200, generator=torch.Generator().manual_seed(5))
    b = sample_counts(net, x, 0.3, 777, 2, batch_size=200, generator=torch.Generator().manual_seed(5))
    assert a.sum(1).tolist() == [777] * 3 and torch.equal(a, b)


def test_certified_accuracy_counts_right_and_far_enough():
    pred = torch.tensor([0, 1, ABSTAIN, 2])
    radius = torch.tensor([0.6, 0.2, 0.0, 1.0])
    y = torch.tensor([0, 1, 1, 0])
    assert certified_accuracy(pred, radius, y, [0.0, 0.5, 1.0]) == [0.5, 0.25, 0.0]


@pytest.mark.parametrize("kwargs,message", [
    ({"sigma": 0.0}, "--sigma"), ({"sigma": -1.0}, "--sigma"), ({"n0": 0}, "--n0"), ({"n": 0}, "--samples"),
    ({"alpha": 0.0}, "--alpha"), ({"alpha": 1.5}, "--alpha"),
])
def test_bad_settings_are_refused(kwargs, message):
    settings = {"sigma": 0.25, "n0": 10, "n": 10, "alpha": 0.01} | kwargs
    sigma = settings.pop("sigma")
    with pytest.raises(SquigglesError, match=message):
        certify(_halfplane(), torch.zeros(1, 3), sigma, **settings)


def test_max_radius_matches_the_papers_cap():
    assert max_radius(1.0, 100_000, 0.001) == pytest.approx(3.8115, abs=1e-3)
    assert math.isclose(max_radius(0.25, 100_000, 0.001), 0.25 * max_radius(1.0, 100_000, 0.001))
