"""Auto-PGD (Croce & Hein 2020, arXiv 2003.01690): PGD with momentum and a step size that halves itself,
per example, at fixed checkpoints when progress stalls; no step-size tuning. ``apgd`` is APGD-CE / APGD-DLR
(or a targeted APGD when given a `Targeted` goal); ``apgd_targeted`` is AutoAttack's APGD-T, untargeted in
effect: it runs the targeted DLR loss against each of the top-k other classes in turn.

Example:
    >>> import torch
    >>> from squiggles.attacks.apgd import apgd
    >>> from squiggles.threat import Linf
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> res = apgd(net, torch.rand(8, 4), None, Linf(0.1), steps=10)
    >>> res.attack, bool((res.norms <= 0.1 + 1e-6).all())
    ('apgd-ce', True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Generator, Tensor

from squiggles.attacks._core import Best, Oracle, Seed, evaluate_last, run_attack, subset_threat
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal, Targeted
from squiggles.losses import Loss, dlr, get_loss
from squiggles.results import AttackResult
from squiggles.threat import L1, ThreatModel

MOMENTUM = 0.75  # alpha of the paper; fixed there, not a tuning knob


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` where APGD may halve its step size.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while ``p_j <= 1``.
    Computed in hundredths so that float round-off cannot push a ceiling up by one.

    >>> checkpoints(100)
    [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    ps = [0, 22]
    while True:
        nxt = ps[-1] + max(ps[-1] - ps[-2] - 3, 6)
        if nxt > 100:
            break
        ps.append(nxt)
    return sorted({-(-p * steps // 100) for p in ps})


def apgd(
    model: Callable[[Tensor], Tensor], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    loss: str | Loss = "ce", steps: int = 100, restarts: int = 1, rho: float = 0.75, seed: Seed = 0,
    early_stop: bool = True,
) -> AttackResult:
    """APGD with ``loss`` (``"ce"``, ``"dlr"``, ``"margin"`` or a callable) for ``steps`` iterations.

    Untargeted goals push away from the labels; a `Targeted` goal uses the targeted form of the loss.
    The step size starts at ``2 eps`` (``eps`` for L1) and halves at the `checkpoints` for an example when
    fewer than a fraction ``rho`` of its steps since the last checkpoint raised the loss, or when its step
    was not halved last time and its best loss has not improved since; it then restarts from its best point.
    Restarts after the first run only on the points not yet broken, each from a new random start.
    ``early_stop`` drops each example from the batch as soon as it is broken.
    Cost per example and run: ``steps`` gradient evaluations and one forward pass (the last iterate).
    DLR needs at least 3 classes (4 targeted); with fewer the loss raises `SquigglesError` on the first
    call (no silent fallback: use ``"margin"``).
    """
    _check_options(steps, restarts, rho)
    loss_fn = get_loss(loss)
    loss_name = loss if isinstance(loss, str) else "custom"

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: Generator) -> Tensor:
        best = Best(x)
        idx = None
        for _ in range(restarts):
            apgd_run(oracle, x, goal, goal, threat, best, idx, loss_fn, steps, rho, early_stop, gen)
            idx = (~best.success).nonzero().flatten()
            if len(idx) == 0:
                break
        return best.result()

    config = {"loss": loss_name, "steps": steps, "restarts": restarts, "rho": rho, "momentum": MOMENTUM,
              "early_stop": early_stop}
    return run_attack(f"apgd-{loss_name}", core, model, x, y_or_goal, threat, seed, config)


def apgd_targeted(
    model: Callable[[Tensor], Tensor], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    n_target_classes: int = 9, steps: int = 100, restarts: int = 1, rho: float = 0.75, seed: Seed = 0,
) -> AttackResult:
    """AutoAttack's APGD-T: an *untargeted* attack (success = misclassification) that runs APGD on the
    targeted DLR loss once per target class, trying the ``n_target_classes`` classes with the highest clean
    logits other than the label (fewer if the model has fewer other classes), most likely first.

    Each round attacks only the points not yet broken (clean misclassified points count as broken with no
    perturbation), ``restarts`` times. Needs at least 4 classes. To attack one chosen class, pass a
    `Targeted` goal to `apgd` instead; this function rejects it.
    """
    if isinstance(y_or_goal, Targeted):
        raise SquigglesError("apgd_targeted is untargeted in effect (it picks its own target classes among "
                             "the top-k clean logits); pass labels or Untargeted(...), or use "
                             "apgd(..., Targeted(...), loss='dlr') to reach one chosen class")
    _check_options(steps, restarts, rho)
    if n_target_classes < 1:
        raise SquigglesError(f"n_target_classes must be >= 1, got {n_target_classes}")

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: Generator) -> Tensor:
        clean = _clean_logits_apgd_t(oracle, x)
        # Target ranking from the clean logits, label excluded; one forward pass serves every round.
        ranked = clean.scatter(1, goal.labels.unsqueeze(1), -torch.inf).argsort(1, descending=True)
        best = Best(x)
        best.update(None, x, torch.full((len(x),), -torch.inf, dtype=x.dtype, device=x.device),
                    goal.success(clean), clean)
        for r in range(min(n_target_classes, clean.shape[1] - 1)):
            loss_goal = ResolvedGoal(goal.labels, ranked[:, r], goal.labels_source)
            for _ in range(restarts):
                idx = (~best.success).nonzero().flatten()
                if len(idx) == 0:
                    return best.result()
                apgd_run(oracle, x, goal, loss_goal, threat, best, idx, dlr, steps, rho, True, gen)
        return best.result()

    config = {"loss": "dlr-targeted", "n_target_classes": n_target_classes, "steps": steps,
              "restarts": restarts, "rho": rho, "momentum": MOMENTUM, "early_stop": True}
    return run_attack("apgd-t", core, model, x, y_or_goal, threat, seed, config)


@dataclass
class _State:
    """Per-example state of one APGD run on the working batch; every field is indexed by example."""

    x: Tensor             # clean inputs
    x_adv: Tensor         # current iterate x_k
    x_prev: Tensor        # x_{k-1}, for the momentum term
    grad: Tensor          # gradient at x_adv
    eta: Tensor           # step size
    loss_prev: Tensor     # loss at x_{k-1}
    loss_max: Tensor      # best loss of this run, at x_max
    x_max: Tensor
    grad_max: Tensor      # gradient at x_max, so a restart from x_max needs no extra model call
    loss_max_check: Tensor  # loss_max at the last checkpoint
    halved_last: Tensor   # bool: the step was halved at the last checkpoint (w_0 = 0 counts as not halved)
    increases: Tensor     # steps since the last checkpoint that raised the loss

    def keep(self, keep: Tensor) -> _State:
        return _State(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})


def apgd_run(
    oracle: Oracle, x_all: Tensor, goal_all: ResolvedGoal, loss_goal_all: ResolvedGoal,
    threat_all: ThreatModel, best: Best, idx: Tensor | None, loss_fn: Loss, steps: int, rho: float,
    early_stop: bool, gen: Generator,
) -> None:
    """One APGD run on the examples ``idx`` (all when None) from a random start, writing into ``best``.

    ``goal_all`` decides success; ``loss_goal_all`` feeds the loss (they differ for APGD-T, whose loss
    targets a class while success is any misclassification).
    """
    x = x_all if idx is None else x_all[idx]
    goal = goal_all if idx is None else goal_all.subset(idx)
    loss_goal = loss_goal_all if idx is None else loss_goal_all.subset(idx)
    threat = threat_all if idx is None else subset_threat(threat_all, idx)
    # The step is half the ball's diameter at first (the L1 step is sparse, so the reference uses eps).
    start = 1.0 if isinstance(threat, L1) else 2.0
    marks = checkpoints(steps)
    period = {w: w - v for v, w in zip(marks, marks[1:], strict=False)}
    s: _State | None = None
    x_adv = threat.random_init(x, gen)
    for t in range(steps):
        values, grad, logits = oracle.loss_grad(x_adv, loss_fn, loss_goal, idx)
        success = goal.success(logits)
        best.update(idx, x_adv, values, success, logits)
        if s is None:
            eta = start * threat.eps_like(x).flatten()
            s = _State(x, x_adv, x_adv, grad, eta, values, values, x_adv, grad, values,
                       torch.zeros_like(success), torch.zeros_like(values, dtype=torch.long))
        else:
            s.x_adv, s.grad = x_adv, grad
            _bookkeep(s, values, t, period.get(t), rho)
        if early_stop and success.any():
            keep = (~success).nonzero().flatten()
            if len(keep) == 0:
                return
            idx = keep if idx is None else idx[keep]
            s, goal, loss_goal = s.keep(keep), goal.subset(keep), loss_goal.subset(keep)
            threat = subset_threat(threat, keep)
        x_adv = _step(s, threat, first=t == 0)
    evaluate_last(oracle, x_adv, goal, loss_goal, loss_fn, best, idx)


def _bookkeep(s: _State, values: Tensor, t: int, period: int | None, rho: float) -> None:
    """Record the loss of iterate ``t``; at a checkpoint (``period`` given) halve the step where it stalls."""
    s.increases += values > s.loss_prev
    s.loss_prev = values
    better = values > s.loss_max
    s.loss_max = torch.where(better, values, s.loss_max)
    s.x_max = torch.where(_col(better, s.x), s.x_adv, s.x_max)
    s.grad_max = torch.where(_col(better, s.x), s.grad, s.grad_max)
    if period is None:
        return
    oscillating = s.increases < rho * period
    stalled = ~s.halved_last & (s.loss_max <= s.loss_max_check)
    halve = oscillating | stalled
    s.eta = torch.where(halve, s.eta / 2, s.eta)
    # Restart from the best point; its momentum is dropped, so the next move is the plain step from x_max.
    h = _col(halve, s.x)
    s.x_adv = torch.where(h, s.x_max, s.x_adv)
    s.grad = torch.where(h, s.grad_max, s.grad)
    s.x_prev = torch.where(h, s.x_max, s.x_prev)
    s.halved_last, s.loss_max_check = halve, s.loss_max
    s.increases = torch.zeros_like(s.increases)


def _step(s: _State, threat: ThreatModel, first: bool) -> Tensor:
    """x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})) with z = P(x_k + eta step(grad));
    a = 1 on the first step (there is no previous move yet)."""
    z = threat.project(s.x_adv + threat.step(s.grad, s.eta), s.x)
    a = 1.0 if first else MOMENTUM
    nxt = threat.project(s.x_adv + a * (z - s.x_adv) + (1 - a) * (s.x_adv - s.x_prev), s.x)
    s.x_prev = s.x_adv
    return nxt


def _col(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _check_options(steps: int, restarts: int, rho: float) -> None:
    if steps < 1 or restarts < 1:
        raise SquigglesError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    if not 0 < rho <= 1 or math.isnan(rho):
        raise SquigglesError(f"rho must lie in (0, 1] (the paper uses 0.75), got {rho}")


def _clean_logits_apgd_t(oracle: Oracle, x: Tensor) -> Tensor:
    """Clean logits, after checking the model has the 4 classes the targeted DLR loss needs."""
    clean = oracle.logits(x)
    if clean.shape[1] < 4:
        raise SquigglesError(f"APGD-T (targeted DLR) needs at least 4 classes but the model has "
                             f"{clean.shape[1]}; use apgd(..., loss='margin') or loss='ce' instead")
    return clean
