from __future__ import annotations

import pytest
import torch
from torch import nn

from squiggles.attacks.apgd import _bookkeep, _State, apgd, apgd_targeted, checkpoints
from squiggles.attacks.pgd import pgd
from squiggles.errors import SquigglesError
from squiggles.goals import Targeted, Untargeted, next_class
from squiggles.threat import L1, L2, Linf

STEPS = 20


def mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """A small random MLP: 10 inputs, 5 classes."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5)).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    return net


def data(n: int = 64, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 10, generator=torch.Generator().manual_seed(1), dtype=dtype)


def labels(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x).argmax(1)


def test_checkpoints_follow_the_paper_schedule():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (steps shrink by .03 down to .06); w = ceil(p N).
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(200) == [0, 44, 82, 114, 140, 160, 174, 186, 198]
    assert checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1) == [0, 1]


@pytest.mark.parametrize("threat", [Linf(0.1), L2(0.5), L1(1.0)], ids=["linf", "l2", "l1"])
@pytest.mark.parametrize("loss", ["ce", "dlr", "margin"])
def test_inside_budget_and_bounds(threat, loss):
    net, x = mlp(), data()
    res = apgd(net, x, labels(net, x), threat, loss=loss, steps=STEPS)
    assert res.attack == f"apgd-{loss}"
    assert (res.norms <= threat.eps + 1e-5).all()
    assert res.x_adv.min() >= -1e-5 and res.x_adv.max() <= 1 + 1e-5
    assert res.success.any()


@pytest.mark.parametrize("threat", [Linf(0.1), L2(0.5)], ids=["linf", "l2"])
def test_apgd_t_inside_budget_and_bounds(threat):
    net, x = mlp(), data()
    res = apgd_targeted(net, x, labels(net, x), threat, steps=STEPS, n_target_classes=3)
    assert res.attack == "apgd-t"
    assert (res.norms <= threat.eps + 1e-5).all()
    assert res.x_adv.min() >= -1e-5 and res.x_adv.max() <= 1 + 1e-5


def test_per_example_eps():
    net, x = mlp(), data(8)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.0, 0.4])
    for res in [apgd(net, x, labels(net, x), Linf(eps), steps=STEPS),
                apgd_targeted(net, x, labels(net, x), Linf(eps), steps=STEPS, n_target_classes=2)]:
        assert (res.norms <= eps + 1e-6).all()
        assert torch.equal(res.x_adv[eps == 0], x[eps == 0])


@pytest.mark.parametrize("attack", [apgd, apgd_targeted])
def test_eps_zero_leaves_x_and_success_is_clean_misclassification(attack):
    net, x = mlp(), data()
    y = (labels(net, x) + (torch.arange(len(x)) % 3 == 0).long()) % 5  # a third of the labels wrong
    res = attack(net, x, y, Linf(0.0), steps=5)
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.success, labels(net, x) != y)


def test_easy_model_is_always_broken():
    net, x = mlp(), data()
    y = labels(net, x)
    assert apgd(net, x, y, Linf(1.0), steps=STEPS).success_rate == 1.0
    assert apgd(net, x, y, L2(3.0), steps=STEPS, loss="dlr").success_rate == 1.0
    assert apgd_targeted(net, x, y, Linf(1.0), steps=STEPS, n_target_classes=1).success_rate == 1.0


def test_same_seed_same_result_other_seed_other_start():
    net, x = mlp(), data()
    y = labels(net, x)
    a = apgd(net, x, y, Linf(0.05), steps=STEPS, seed=3, early_stop=False)
    b = apgd(net, x, y, Linf(0.05), steps=STEPS, seed=3, early_stop=False)
    c = apgd(net, x, y, Linf(0.05), steps=STEPS, seed=4, early_stop=False)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)
    t1 = apgd_targeted(net, x, y, Linf(0.05), steps=STEPS, seed=3, n_target_classes=2)
    t2 = apgd_targeted(net, x, y, Linf(0.05), steps=STEPS, seed=3, n_target_classes=2)
    assert torch.equal(t1.x_adv, t2.x_adv)


@pytest.mark.parametrize("attack", [apgd, apgd_targeted])
def test_model_state_untouched(attack):
    net, x = mlp(), data()
    net.train()
    before = torch.get_rng_state()
    attack(net, x, None, Linf(0.1), steps=5)
    assert net.training
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), before)


def test_float64():
    net, x = mlp(torch.float64), data(dtype=torch.float64)
    for res in [apgd(net, x, None, Linf(0.1), steps=STEPS, loss="dlr"),
                apgd(net, x, None, L2(0.5), steps=STEPS),
                apgd_targeted(net, x, None, Linf(0.1), steps=STEPS, n_target_classes=2)]:
        assert res.x_adv.dtype == torch.float64
        assert (res.norms <= 0.5 + 1e-12).all()
        assert res.success.any()


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_apgd_ce_at_least_as_strong_as_pgd(eps):
    net, x = mlp(), data(200)
    y = labels(net, x)
    ours = apgd(net, x, y, Linf(eps), steps=STEPS, seed=0)
    base = pgd(net, x, y, Linf(eps), steps=20, seed=0)
    assert 0 < base.success.sum() < len(x)
    assert ours.success.sum() >= base.success.sum()


def test_apgd_t_breaks_points_and_its_goal_is_untargeted():
    net, x = mlp(), data()
    y = labels(net, x)
    res = apgd_targeted(net, x, y, Linf(0.1), steps=STEPS)
    assert res.targets is None and res.config["loss"] == "dlr-targeted"
    assert torch.equal(res.success, res.pred != y)
    ce = apgd(net, x, y, Linf(0.1), steps=STEPS)
    assert res.success.sum() >= ce.success.sum() > 0
    assert torch.equal(apgd(net, x, Untargeted(y), Linf(0.1), steps=STEPS).success, ce.success)


def test_apgd_t_rejects_a_targeted_goal_and_too_few_classes():
    net, x = mlp(), data(4)
    with pytest.raises(SquigglesError, match="untargeted in effect"):
        apgd_targeted(net, x, Targeted(next_class(labels(net, x), 5)), Linf(0.1))
    three = nn.Linear(10, 3)
    with pytest.raises(SquigglesError, match="at least 4 classes"):
        apgd_targeted(three, x, None, Linf(0.1), steps=2)


def test_dlr_needs_three_classes_and_says_so():
    two = nn.Linear(10, 2)
    with pytest.raises(SquigglesError, match="at least 3 classes"):
        apgd(two, data(4), None, Linf(0.1), loss="dlr", steps=2)
    assert apgd(two, data(4), None, Linf(0.1), loss="margin", steps=2).attack == "apgd-margin"


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_targeted_goal_with_apgd(loss):
    net, x = mlp(), data()
    y = labels(net, x)
    goal = Targeted(next_class(y, 5), labels=y)
    res = apgd(net, x, goal, Linf(0.3), loss=loss, steps=STEPS)
    assert torch.equal(res.targets, goal.targets)
    assert torch.equal(res.success, res.pred == goal.targets)
    assert res.success.float().mean() > 0.3


def test_bad_options_are_clear_errors():
    net, x = mlp(), data(4)
    with pytest.raises(SquigglesError, match="steps and restarts"):
        apgd(net, x, None, Linf(0.1), steps=0)
    with pytest.raises(SquigglesError, match="rho"):
        apgd(net, x, None, Linf(0.1), rho=1.5)
    with pytest.raises(SquigglesError, match="unknown loss"):
        apgd(net, x, None, Linf(0.1), loss="hinge")
    with pytest.raises(SquigglesError, match="n_target_classes"):
        apgd_targeted(net, x, None, Linf(0.1), n_target_classes=0)


def test_query_counts_per_example():
    net, x = mlp(), data()
    y = labels(net, x)
    # Per run: STEPS gradient evaluations, plus run_attack's clean forward pass, plus a forward pass for the
    # last iterate only where no earlier iterate succeeded. The best iterates come back with the logits they
    # were evaluated with, so there is no final pass.
    full = apgd(net, x, y, Linf(0.05), steps=STEPS, early_stop=False)
    assert ((full.queries == STEPS + 1) | (full.queries == STEPS + 2)).all()
    assert (full.queries[~full.success] == STEPS + 2).all()
    assert 0 < (full.queries == STEPS + 1).sum() < len(x)  # both kinds occur, so the test can tell them apart
    assert full.backwards == STEPS * len(x)
    early = apgd(net, x, y, Linf(0.05), steps=STEPS)
    assert (early.queries <= STEPS + 2).all()
    assert (early.queries[~early.success] == STEPS + 2).all()
    assert (early.queries[early.success] < STEPS + 2).all()
    assert early.forwards < full.forwards and early.backwards < full.backwards
    assert torch.equal(early.success, full.success)
    # Restarts run only on the points not yet broken.
    again = apgd(net, x, y, Linf(0.05), steps=STEPS, restarts=3)
    assert (again.queries <= 3 * (STEPS + 1) + 1).all()
    assert (again.queries[~again.success] == 3 * (STEPS + 1) + 1).all()
    assert (again.queries[early.success] == early.queries[early.success]).all()
    # APGD-T: one clean forward for the target ranking, then a run per target class and restart.
    t = apgd_targeted(net, x, y, Linf(0.05), steps=STEPS, n_target_classes=3)
    assert (t.queries[~t.success] == 2 + 3 * (STEPS + 1)).all()
    assert (t.queries[t.success] < 2 + 3 * (STEPS + 1)).all()


def _state(losses: list[float], loss_max: float, loss_max_check: float, halved_last: bool, increases: int):
    n = len(losses)
    x = torch.zeros(n, 2)
    return _State(
        x=x, x_adv=torch.full((n, 2), 0.5), x_prev=torch.full((n, 2), 0.4), grad=torch.ones(n, 2),
        eta=torch.ones(n), loss_prev=torch.full((n,), -1e3), loss_max=torch.full((n,), loss_max),
        x_max=torch.full((n, 2), 0.9), grad_max=torch.full((n, 2), -1.0),
        loss_max_check=torch.full((n,), loss_max_check), halved_last=torch.full((n,), halved_last),
        increases=torch.full((n,), increases, dtype=torch.long),
    )


def test_step_size_halves_on_oscillation_and_restarts_from_the_best_point():
    # 10 steps since the last checkpoint, rho 0.75: 7 increases (+1 from this step = 8) keep the step,
    # 5 (+1 = 6 < 7.5) halve it and move the iterate and its gradient back to x_max.
    keep = _state([0.0], loss_max=5.0, loss_max_check=1.0, halved_last=False, increases=7)
    _bookkeep(keep, torch.tensor([0.0]), 10, 10, 0.75)
    assert keep.eta.item() == 1.0 and keep.x_adv[0, 0] == 0.5 and keep.increases.item() == 0
    halve = _state([0.0], loss_max=5.0, loss_max_check=1.0, halved_last=False, increases=5)
    _bookkeep(halve, torch.tensor([0.0]), 10, 10, 0.75)
    assert halve.eta.item() == 0.5 and halve.halved_last.item()
    assert (halve.x_adv == 0.9).all() and (halve.x_prev == 0.9).all() and (halve.grad == -1.0).all()
    # Not at a checkpoint: only bookkeeping; a new best loss moves x_max.
    between = _state([0.0], loss_max=5.0, loss_max_check=1.0, halved_last=False, increases=0)
    _bookkeep(between, torch.tensor([6.0]), 9, None, 0.75)
    assert between.eta.item() == 1.0 and between.increases.item() == 1
    assert between.loss_max.item() == 6.0 and (between.x_max == 0.5).all() and (between.grad_max == 1.0).all()


def test_step_size_halves_when_the_best_loss_stalls_unless_just_halved():
    for halved_last, expect in [(False, 0.5), (True, 1.0)]:
        s = _state([0.0], loss_max=5.0, loss_max_check=5.0, halved_last=halved_last, increases=9)
        _bookkeep(s, torch.tensor([0.0]), 10, 10, 0.75)
        assert s.eta.item() == expect
