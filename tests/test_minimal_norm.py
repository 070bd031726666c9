"""Minimal-norm attacks (FMN, CW): exact answers on linear classifiers, and the attack contract."""

from __future__ import annotations

import math

import pytest
import torch

from squiggles.attacks.minimal import cw, fmn
from squiggles.errors import SquigglesError
from squiggles.goals import Targeted, next_class
from squiggles.threat import L1, L2, Linf

BOX = (-10.0, 10.0)  # wide enough that the box never binds: the distances below are the true minima


def linear(k: int, d: int, seed: int, equal: bool) -> tuple[torch.nn.Linear, torch.Tensor]:
    """A linear classifier and points at L2 distance >= 1 from its decision boundary, well inside BOX.

    ``equal``: rows with disjoint supports and +-1 entries, so ``||w_i - w_j||_p`` is the same for every pair
    and every p; the nearest boundary is then the one of the runner-up class, which a minimal-norm attack
    following the margin must find (with unequal norms the problem has local minima).
    """
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Linear(d, k)
    with torch.no_grad():
        if equal:
            w = torch.zeros(k, d)
            s = d // k
            for i in range(k):
                w[i, i * s:(i + 1) * s] = torch.randint(0, 2, (s,), generator=g).float() * 2 - 1
        else:
            w = torch.randn(k, d, generator=g)
        net.weight.copy_(w)
        net.bias.copy_(torch.randn(k, generator=g) * 0.1)
    x = torch.randn(400, d, generator=g) * 2
    # CW's Adam moves every coordinate by about lr * (hi - lo) / 2 per step: points much nearer the boundary
    # than that cannot be resolved to 1% by it, so keep them away from it.
    keep = (distance(net, x, 2) >= 1) & (distance(net, x, 1) >= 0.3) & (x.abs().amax(1) < 4)
    return net, x[keep][:24]


def distance(net: torch.nn.Linear, x: torch.Tensor, dual: float) -> torch.Tensor:
    """Exact distance to the nearest decision boundary in the norm whose dual norm is ``dual``:
    min over o != y of (z_y - z_o) / ||w_y - w_o||_dual."""
    with torch.no_grad():
        z = net(x)
        y = z.argmax(1)
        diff = net.weight[y].unsqueeze(1) - net.weight.unsqueeze(0)        # N x K x d
        dist = (z.gather(1, y[:, None]) - z) / diff.norm(p=dual, dim=2)
        return dist.scatter(1, y[:, None], math.inf).amin(1)


CASES = [  # name, attack, threat, dual norm, options
    ("fmn-l2", fmn, L2, 2.0, {}),
    ("fmn-linf", fmn, Linf, 1.0, {"alpha_init": 10.0}),
    ("fmn-l1", fmn, L1, math.inf, {"alpha_init": 10.0}),
    ("cw-l2", cw, L2, 2.0, {"steps": 200, "lr": 3e-3}),
]


@pytest.mark.parametrize("k,equal", [(2, False), (3, True)], ids=["2-class", "3-class"])
@pytest.mark.parametrize("name,attack,threat,dual,options", CASES, ids=[c[0] for c in CASES])
def test_linear_minimal_distance(name, attack, threat, dual, options, k, equal):
    net, x = linear(k, 6, seed=k, equal=equal)
    assert len(x) >= 16
    true = distance(net, x, dual)
    res = attack(net, x, None, threat(math.inf, bounds=BOX), **options)
    assert res.success.all()
    rel = (res.norms - true) / true
    assert rel.max() < 0.01, f"{name}: worst relative excess {rel.max():.4f}"
    assert rel.min() > -1e-4  # nothing can beat the exact minimum (up to float32 rounding)


@pytest.mark.parametrize("threat,dual", [(L2, 2.0), (Linf, 1.0)], ids=["l2", "linf"])
def test_fmn_with_coordinates_pinned_on_a_bound(threat, dual):
    """Half the coordinates sit on the lower bound with the gradient pointing out of the box (MNIST's black
    pixels): the minimum uses only the free coordinates, and FMN must neither stall nor miss it."""
    net = torch.nn.Linear(6, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-1.0, -1.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.6, -0.5, 0.4]]))
        net.bias.zero_()
    free = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.3
    x = torch.cat([torch.zeros(64, 3), free], 1)
    assert (net(x).argmax(1) == 1).all()
    true = net(x).detach()[:, 1] / torch.tensor([0.6, -0.5, 0.4]).norm(p=dual)
    res = fmn(net, x, None, threat(math.inf))
    assert res.success.all()
    assert ((res.norms - true) / true).abs().max() < 0.01


def mlp(seed: int = 1, k: int = 3) -> torch.nn.Module:
    """A small ReLU network whose classes all have regions inside the unit box."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, k))
    with torch.no_grad():  # steep first layer, hinges through the middle of the box
        net[1].weight.mul_(6)
        net[1].bias.sub_(net[1].weight.sum(1) * 0.5)
    return net


def images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 2, 2, 2, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


# Short runs for speed; CW with so few steps needs a larger learning rate and constant than its defaults.
ATTACKS = [(fmn, L2, {"steps": 30}), (fmn, Linf, {"steps": 30}),
           (cw, L2, {"steps": 30, "binary_steps": 4, "lr": 0.05, "initial_const": 1.0})]
IDS = ["fmn-l2", "fmn-linf", "cw-l2"]


@pytest.mark.parametrize("attack,threat,options", ATTACKS, ids=IDS)
def test_finite_eps_keeps_exactly_the_minima_within_budget(attack, threat, options):
    net, x = mlp(), images()
    free = attack(net, x, None, threat(math.inf), **options)
    assert free.success.all()
    eps = free.norms.median().item()
    for budget in (eps, torch.linspace(0.5, 1.5, len(x)) * eps):
        res = attack(net, x, None, threat(budget), **options)
        limit = torch.as_tensor(budget).expand(len(x))
        assert (res.norms <= limit + 1e-5).all()
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        # eps does not steer the search, only what is returned: where the free minimum fits the budget it is
        # returned as is (a success); elsewhere the best effort is projected into the budget.
        fits = free.norms <= limit
        assert res.success[fits].all() and torch.equal(res.norms[fits], free.norms[fits])
        assert fits.any() and not fits.all()


@pytest.mark.parametrize("attack,threat,options", ATTACKS, ids=IDS)
def test_deterministic_and_model_untouched(attack, threat, options):
    net, x = mlp(), images()
    net.train()
    grads = [torch.full_like(p, 0.5) for p in net.parameters()]
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g.clone()
    a = attack(net, x, None, threat(math.inf), seed=3, **options)
    b = attack(net, x, None, threat(math.inf), seed=3, **options)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.norms, b.norms)
    assert net.training
    for p, g in zip(net.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g) and p.requires_grad


@pytest.mark.parametrize("attack,threat,options", ATTACKS, ids=IDS)
def test_float64(attack, threat, options):
    net, x = mlp().double(), images().double()
    res = attack(net, x, None, threat(math.inf), **options)
    assert res.x_adv.dtype == torch.float64 and res.norms.dtype == torch.float64
    assert res.success.all()


@pytest.mark.parametrize("attack,threat,options", ATTACKS, ids=IDS)
def test_targeted_reaches_the_target(attack, threat, options):
    net, x = mlp(k=4), images()
    with torch.no_grad():
        targets = next_class(net(x).argmax(1), 4)
    res = attack(net, x, Targeted(targets), threat(math.inf), **{**options, "steps": 60})
    assert res.success.all()
    assert torch.equal(res.pred, targets)


@pytest.mark.parametrize("attack,threat,options", ATTACKS, ids=IDS)
def test_unbreakable_and_already_wrong_points_come_back_as_x(attack, threat, options):
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    x = images(4)
    never = attack(constant, x, None, threat(math.inf), **options)
    assert not never.success.any() and torch.equal(never.x_adv, x) and (never.norms == 0).all()
    wrong = attack(constant, x, torch.tensor([1, 2, 1, 2]), threat(math.inf), **options)
    assert wrong.success.all() and torch.equal(wrong.x_adv, x) and (wrong.norms == 0).all()


def test_cw_is_l2_only_and_options_are_checked():
    net, x = mlp(), images(4)
    for threat in (Linf(0.1), L1(1.0)):
        with pytest.raises(SquigglesError, match="L2"):
            cw(net, x, None, threat)
    with pytest.raises(SquigglesError, match="steps"):
        cw(net, x, None, L2(1.0), binary_steps=0)
    with pytest.raises(SquigglesError, match="gamma"):
        fmn(net, x, None, L2(1.0), gamma_init=1.5)
    with pytest.raises(SquigglesError, match="alpha"):
        fmn(net, x, None, L2(1.0), alpha_init=0.0)
