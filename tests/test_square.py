"""Square Attack: budget and bounds, black-box use of the model, query accounting, the accept-only-if-
improved rule, and the window schedule, on tiny deterministic models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from squiggles.attacks.square import _p_at, _pattern, _window, square
from squiggles.errors import SquigglesError
from squiggles.goals import Targeted
from squiggles.losses import margin
from squiggles.threat import L1, L2, Linf

THREATS = {"linf": lambda eps, **kw: Linf(eps, **kw), "l2": lambda eps, **kw: L2(eps, **kw)}
EPS = {"linf": 0.1, "l2": 0.8}


def _cnn(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4)).to(dtype)


def _images(n: int = 12, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _easy_linear() -> nn.Module:
    # Class 0 wins by a logit margin of 0.2 at x = 0.55: lowering the feature sum by 0.1 breaks it.
    model = nn.Linear(6, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0] * 6, [-1.0] * 6]))
        model.bias.copy_(torch.tensor([-3.2, 3.2]))
    return model


class _Recorder(nn.Module):
    """Records every input and output, and fails if a forward pass ever runs with gradients enabled."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "square must only run forward passes without autograd"
        out = self.net(x)
        self.inputs.append(x.clone())
        self.outputs.append(out.clone())
        return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_inside_budget_and_bounds_with_per_example_eps(norm):
    x = _images()
    eps = torch.linspace(0.5, 1.5, len(x)) * EPS[norm]
    for threat in (THREATS[norm](EPS[norm]), THREATS[norm](eps)):
        res = square(_cnn(), x, None, threat, queries=100)
        assert res.x_adv.shape == x.shape
        assert (threat.norm(res.x_adv - x) <= threat.eps + 1e-5).all()
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert res.success.any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_x_and_spends_no_attack_queries(norm):
    x = _images()
    res = square(_cnn(), x, None, THREATS[norm](0.0), queries=50)
    assert torch.equal(res.x_adv, x)
    assert (res.queries == 2).all()  # only run_attack's clean and verifying passes
    eps = torch.tensor([0.0, EPS[norm]] * 6)
    res = square(_cnn(), x, None, THREATS[norm](eps), queries=50)
    assert torch.equal(res.x_adv[eps == 0], x[eps == 0]) and (res.queries[eps == 0] == 2).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_easy_model_is_broken_within_a_few_queries(norm):
    x = torch.full((8, 6), 0.55)
    res = square(_easy_linear(), x, torch.zeros(8, dtype=torch.long), THREATS[norm](2 * EPS[norm]), queries=1000)
    assert res.success_rate == 1.0
    assert res.queries.max() <= 30


def test_targeted_goal_reaches_the_target():
    x = _images(8)
    with torch.no_grad():
        pred = _cnn()(x).argmax(1)
    targets = (pred + 1) % 4
    res = square(_cnn(), x, Targeted(targets), Linf(0.3), queries=300)
    assert res.targets is not None and res.success.any()
    assert torch.equal(res.success, res.pred == targets)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_result_other_seed_differs_global_rng_untouched(norm):
    x, threat = _images(), THREATS[norm](EPS[norm])
    state = torch.get_rng_state()
    a = square(_cnn(), x, None, threat, queries=60, seed=3)
    b = square(_cnn(), x, None, threat, queries=60, seed=3)
    c = square(_cnn(), x, None, threat, queries=60, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_forward_passes_only(norm):
    net = _cnn()
    model = _Recorder(net)
    res = square(model, _images(), None, THREATS[norm](EPS[norm]), queries=40)
    assert res.backwards == 0
    assert all(p.grad is None for p in net.parameters())
    assert res.forwards == sum(len(i) for i in model.inputs)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_queries_within_budget_and_broken_points_stop(norm):
    budget = 150
    res = square(_cnn(), _images(), None, THREATS[norm](EPS[norm]), queries=budget)
    # Square's own forward passes (initialisation included) stay within the budget; run_attack adds two.
    assert (res.queries <= budget + 2).all()
    assert res.success.any() and (~res.success).any()
    assert (res.queries[~res.success] == budget + 2).all()
    assert res.queries[res.success].float().mean() < budget / 2


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_float64_tabular_and_channel_less_inputs(norm):
    threat = THREATS[norm](EPS[norm])
    x64 = _images(dtype=torch.float64)
    res = square(_cnn(torch.float64), x64, None, threat, queries=50)
    assert res.x_adv.dtype == torch.float64 and (threat.norm(res.x_adv - x64) <= EPS[norm] + 1e-9).all()
    torch.manual_seed(0)
    tab_model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    tab = torch.rand(10, 6, generator=torch.Generator().manual_seed(2))
    res = square(tab_model, tab, None, threat, queries=50)
    assert res.x_adv.shape == (10, 6) and (threat.norm(res.x_adv - tab) <= EPS[norm] + 1e-5).all()
    assert not torch.equal(res.x_adv, tab)
    gray = _images()[:, 0]
    net = _cnn()
    res = square(lambda z: net(z.unsqueeze(1)), gray, None, threat, queries=50)
    assert res.x_adv.shape == gray.shape


def test_loss_never_decreases_and_each_candidate_changes_one_window_of_the_best():
    # One example, a budget too small to break it: replay every query and check the search rule.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    model = _Recorder(net)
    x = _images(1)
    res = square(model, x, None, Linf(0.005), queries=80, seed=1)
    assert not res.success.item()
    label = res.labels
    queried = model.inputs[1:-1]  # drop run_attack's clean and verifying passes
    margins = [margin(out, label).item() for out in model.outputs[1:-1]]
    assert len(queried) == 80
    best_x, best_m, accepted, track = queried[0], margins[0], 0, [margins[0]]
    side = round(math.sqrt(0.8 * 64))
    for cand, m in zip(queried[1:], margins[1:], strict=True):
        changed = ((cand - best_x).abs() > 1e-6)[0, 0]
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert len(rows) > 0, "a candidate that changes nothing wastes a query"
        assert rows.max() - rows.min() < side and cols.max() - cols.min() < side
        if m > best_m:
            best_x, best_m, accepted = cand, m, accepted + 1
        track.append(best_m)
    assert 0 < accepted < 79
    assert all(b >= a for a, b in zip(track, track[1:], strict=False))
    assert torch.allclose(res.x_adv, best_x, atol=1e-6)
    assert margin(model.outputs[-1], label).item() == pytest.approx(best_m, abs=1e-5)


def test_l2_perturbation_uses_the_whole_budget_away_from_the_bounds():
    x = _images(6) * 0.2 + 0.4
    threat = L2(0.5, bounds=(-10.0, 10.0))
    res = square(_cnn(), x, None, threat, queries=30)
    assert torch.allclose(res.norms, torch.full_like(res.norms, 0.5), atol=1e-5)


def test_schedule_and_windows():
    assert _p_at(0, 10000, 0.8) == 0.8 and _p_at(11, 10000, 0.8) == 0.4 and _p_at(9000, 10000, 0.8) == 0.8 / 512
    assert _p_at(100, 1000, 0.8) == 0.8 / 16  # rescaled: 100 of 1000 is 1000 of 10000, in (500, 1000]
    assert _window(0.8, 28, 28) == (25, 25)
    assert _window(0.01, 28, 28, min_side=3, odd=True) == (3, 3)
    assert _window(0.8, 1, 6) == (1, 4)  # one-row inputs: a run of features of about the same area
    pat = _pattern(5, 5, torch.zeros(1, dtype=torch.float64))
    assert pat.norm().item() == pytest.approx(1.0) and (pat[:2] > 0).all() and (pat[2:] < 0).all()


def test_bad_options_are_refused():
    x = _images(2)
    with pytest.raises(SquigglesError, match="Linf and L2"):
        square(_cnn(), x, None, L1(1.0))
    with pytest.raises(SquigglesError, match="queries"):
        square(_cnn(), x, None, Linf(0.1), queries=0)
    with pytest.raises(SquigglesError, match="p_init"):
        square(_cnn(), x, None, Linf(0.1), p_init=1.5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_replaying_the_queries_per_example_gives_the_counts_the_stops_and_the_result(norm):
    # Square works on a compacted batch of the examples not yet broken, in the input's order. Split every
    # forward pass back into examples: each is queried until its breaking query or its whole budget, and
    # its result is the candidate that the accept-if-improved-or-broken rule keeps.
    budget, x = 60, _images(16)
    # From no budget (no query) to easily broken, some in the same query (at the initialisation here).
    eps = torch.cat([torch.linspace(0, 2.5, 12), torch.full((4,), 8.0)]) * EPS[norm]
    model = _Recorder(_cnn())
    res = square(model, x, None, THREATS[norm](eps), queries=budget, seed=2)
    spent, broken = res.queries - 2, res.success  # run_attack adds the clean and the verifying pass
    assert spent[0] == 0 and (spent[1:] >= 1).all() and broken[1:].any() and (~broken[1:]).any()
    assert (spent[1:][~broken[1:]] == budget).all() and (spent[broken] < budget).all()
    assert len(set(spent[broken].tolist())) < broken.sum()  # two break together: compaction drops both
    calls = list(zip(model.inputs[1:-1], model.outputs[1:-1], strict=True))
    assert len(calls) == spent.max()
    history: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(x))}
    for k, (inp, out) in enumerate(calls):
        active = (spent > k).nonzero().flatten().tolist()
        assert len(inp) == len(active)  # broken examples leave the batch at once
        for row, i in enumerate(active):
            history[i].append((inp[row], out[row]))
    for i, seen in history.items():
        label = res.labels[i : i + 1]
        hits = [bool(out.argmax() != label) for _, out in seen]
        assert hits == [False] * (len(seen) - 1) + [bool(broken[i])] * (len(seen) > 0)  # stops at its break
        best_x, best_m = x[i], -math.inf
        for cand, out in seen:
            m = margin(out[None], label).item()
            if m > best_m or out.argmax() != label:
                best_x, best_m = cand, m
        assert torch.allclose(res.x_adv[i], best_x, atol=1e-6)


class _BoundaryCounter(nn.Module):
    """Class 1 beats class 0 by 0.001 in float32, always; in bfloat16 the two logits round to the same value, a
    tie that argmax gives to class 0, so a bfloat16 pass claims a success float32 denies. Counts float32 calls."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear.weight.fill_(1.0)
            self.linear.bias.copy_(torch.tensor([0.0, 0.001]))
        self.fp32_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fp32_calls += not torch.is_autocast_enabled("cpu")
        return self.linear(x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bf16_search_has_the_same_contract_and_strength_on_a_real_model(norm):
    model, x = _cnn(), _images(24)
    y = model(x).argmax(1)
    threat = THREATS[norm](EPS[norm] * 3)
    full = square(model, x, y, threat, queries=200, seed=3)
    low = square(model, x, y, threat, queries=200, seed=3, precision="bf16")
    assert low.config["precision"] == "bf16" and low.backwards == 0
    assert bool((low.norms <= threat.eps + 1e-6).all()) and bool(((low.x_adv >= 0) & (low.x_adv <= 1)).all())
    # Every reported success is real in float32 (the final pass), and the search is not weaker than float32's
    # by more than a point in eight here.
    assert torch.equal(low.success, model(low.x_adv).argmax(1) != y)
    assert low.success.sum() >= full.success.sum() - 3
    # A success is re-checked at most once per example: at most one query beyond float32's bound.
    assert int(low.queries.max()) <= 200 + 3


def test_bf16_successes_that_are_only_rounding_are_not_counted():
    model = _BoundaryCounter()
    x, y = torch.full((6, 4), 0.75), torch.ones(6, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (model(x).argmax(1) == 0).all()  # bfloat16 alone would call every point broken
    calls = model.fp32_calls
    res = square(model, x, y, Linf(0.2), queries=30, seed=0, precision="bf16")
    assert not res.success.any() and (res.pred == 1).all()  # float32 never sees class 0 win
    # The clean pass, one re-check per point (after which it is searched in float32), and the final pass.
    assert model.fp32_calls - calls >= 3
    # ... and the search went on to the end of the budget instead of stopping at the false success.
    assert int(res.queries.min()) >= 30 and int(res.queries.max()) <= 30 + 3


def test_bad_precision_is_refused():
    with pytest.raises(SquigglesError, match="precision must be 'fp32' or 'bf16'"):
        square(_cnn(), _images(2), None, Linf(0.1), precision="fp16")
