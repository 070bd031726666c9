"""Label-only attacks (hsja, boundary, rays): label-only access, exact query counts, convergence on a linear
model to the closed-form distance, targeted runs, and their bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from squiggles.attacks.registry import ATTACKS
from squiggles.errors import SquigglesError
from squiggles.goals import Targeted
from squiggles.threat import L2, Linf

DECISION = [name for name, spec in ATTACKS.items() if spec.kind == "decision"]


class LabelsOnly:
    """A model behind an API: it returns a LongTensor of labels, never a score, and counts calls per input."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.rows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        with torch.no_grad():
            return self.model(x).argmax(1)


def _linear(d: int = 6, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Linear(d, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(2, d, generator=g, dtype=torch.float64))
        net.bias.zero_()
    return net


def _points(net: nn.Module, n: int = 8, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x, net(x).argmax(1).detach()


def _distance(net: nn.Module, x: torch.Tensor, dual: float) -> torch.Tensor:
    """Closed form: |w0 - w1 . x| / ||w0 - w1||_dual for a two-class linear model with no box in the way."""
    w = net.weight.detach()
    gap = (x @ (w[0] - w[1])).abs()
    return gap / (w[0] - w[1]).norm(p=dual)


@pytest.mark.parametrize("name", DECISION)
def test_only_labels_are_read_and_every_call_is_counted(name):
    net = _linear()
    x, y = _points(net)
    oracle = LabelsOnly(net)
    norm = ATTACKS[name].norms[0]
    threat = (Linf if norm == "linf" else L2)(math.inf, bounds=(-50.0, 50.0))
    res = ATTACKS[name](oracle, x, y, threat, queries=400)
    assert res.success.all()
    assert int(res.queries.sum()) == oracle.rows == res.forwards  # exact, per call and in total
    assert (res.queries <= 400).all() and res.backwards == 0


@pytest.mark.parametrize(("name", "norm", "queries"), [("hsja", "l2", 3000), ("hsja", "linf", 3000),
                                                       ("boundary", "l2", 6000), ("rays", "linf", 2000)])
def test_converges_to_the_closed_form_distance_on_a_linear_model(name, norm, queries):
    net = _linear()
    x, y = _points(net)
    dual = 2.0 if norm == "l2" else 1.0
    threat = (Linf if norm == "linf" else L2)(math.inf, bounds=(-50.0, 50.0))
    res = ATTACKS[name](LabelsOnly(net), x, y, threat, queries=queries)
    exact = _distance(net, x, dual)
    assert res.success.all()
    assert (res.norms >= exact * (1 - 1e-6)).all()  # never below the true minimum
    assert (res.norms <= exact * 1.05).all(), (res.norms / exact).tolist()


@pytest.mark.parametrize("name", DECISION)
def test_a_finite_budget_stops_early_and_stays_inside(name):
    net = _linear()
    x, y = _points(net)
    norm = ATTACKS[name].norms[0]
    dual = 2.0 if norm == "l2" else 1.0
    exact = _distance(net, x, dual)
    cls = Linf if norm == "linf" else L2
    roomy = ATTACKS[name](net, x, y, cls(float(exact.max()) * 3, bounds=(-50.0, 50.0)), queries=2000)
    assert roomy.success.all() and (roomy.norms <= exact.max() * 3 + 1e-9).all()
    tight = ATTACKS[name](net, x, y, cls(float(exact.min()) * 0.5, bounds=(-50.0, 50.0)), queries=300)
    assert not tight.success.any()  # nothing exists that close: no false success, the inputs come back clean
    assert torch.equal(tight.x_adv, x)
    assert roomy.queries.float().mean() < 2000  # stopped once inside the budget


def test_hsja_targeted_ends_in_the_target_class_from_a_target_example():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = net(x).argmax(1)
    target = (pred + 1) % 4
    pool = torch.rand(4000, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        pool_pred = net(pool).argmax(1)
    have = torch.tensor([bool((pool_pred == t).any()) for t in target.tolist()])
    starts = torch.stack([pool[(pool_pred == t).nonzero()[0, 0]] if h else x[i]
                          for i, (t, h) in enumerate(zip(target.tolist(), have.tolist(), strict=True))])
    res = ATTACKS["hsja"](LabelsOnly(net), x, Targeted(target, labels=pred), L2(math.inf), queries=1500,
                          starts=starts)
    assert res.targets is not None
    assert (res.pred[res.success] == target[res.success]).all()
    assert res.success[have].all()
    with torch.no_grad():
        assert torch.equal(net(res.x_adv).argmax(1)[res.success], target[res.success])


def test_the_trace_is_monotone_and_ends_at_the_result():
    net = _linear()
    x, y = _points(net)
    res = ATTACKS["hsja"](net, x, y, L2(math.inf, bounds=(-50.0, 50.0)), queries=1000, curve_at=(100, 300, 600))
    assert res.curve_queries == [100, 300, 600, 1000]
    trace = res.curve_norms
    assert (trace[:, 1:] <= trace[:, :-1]).all()
    # The final figure is the smallest found within the budget (the verifying call is the budget's last).
    assert torch.allclose(trace[:, -1], res.norms)
    curve = res.norm_curve()
    assert curve["queries"] == [100, 300, 600, 1000] and curve["median_norm"][-1] == pytest.approx(
        float(res.norms.sort().values[(len(res.norms) - 1) // 2]))


def test_scores_beyond_labels_cannot_be_reached():
    """The oracle a core receives has no logits method, and the model is private to it."""
    from squiggles.attacks._decision import LabelOracle

    oracle = LabelOracle(_linear(), 3, torch.device("cpu"), budget=10)
    assert not hasattr(oracle, "logits") and not hasattr(oracle, "loss_grad")
    with pytest.raises(RuntimeError, match="exceed its query budget"):
        oracle.labels(torch.zeros(11, 6, dtype=torch.float64), torch.zeros(11, dtype=torch.long))


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("hsja", {"queries": 0}, "queries must be an integer >= 10"),
    ("rays", {"queries": -5}, "queries must be an integer >= 10"),
    ("hsja", {"starts": torch.zeros(3, 5)}, "starts must be a tensor shaped like the inputs"),
    ("hsja", {"subspace": 2}, "subspace=2 needs image inputs"),
])
def test_bad_input_is_one_clear_error(name, kwargs, match):
    net = _linear()
    x, y = _points(net)
    threat = Linf(0.5) if name == "rays" else L2(1.0)
    with pytest.raises(SquigglesError, match=match):
        ATTACKS[name](net, x.float().clamp(0, 1), y, threat, **kwargs)


@pytest.mark.parametrize(("name", "threat", "match"), [
    ("rays", L2(1.0), "rays is an Linf attack"), ("boundary", Linf(0.1), "boundary is an L2 attack"),
])
def test_unsupported_norms_are_refused(name, threat, match):
    with pytest.raises(SquigglesError, match=match):
        ATTACKS[name](_linear().float(), torch.rand(2, 6), None, threat)


def test_a_model_returning_something_else_is_refused():
    with pytest.raises(SquigglesError, match="class scores shaped"):
        ATTACKS["hsja"](lambda z: z.sum(1), torch.rand(4, 6), None, L2(1.0))
