"""Projected Gradient Descent (Madry et al. 2017, arXiv 1706.06083): iterated steepest ascent with
projection, random start, restarts, the best iterate per example, and optional per-example early stop.

Example:
    >>> import torch
    >>> from squiggles.attacks import pgd
    >>> from squiggles.threat import L2
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> res = pgd(net, torch.rand(8, 4), None, L2(0.5), steps=10, seed=1)
    >>> res.labels_source, bool((res.norms <= 0.5 + 1e-6).all())
    ('pred', True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from squiggles.attacks._core import Best, Oracle, Seed, evaluate_last, run_attack, subset_threat
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal
from squiggles.losses import Loss, get_loss
from squiggles.results import AttackResult
from squiggles.threat import L2, ThreatModel


def pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: ThreatModel,
    *,
    steps: int = 40,
    step_size: float | None = None,
    rel_step_size: float = 2.5,
    loss: str | Loss = "ce",
    random_start: bool = True,
    init_scale: float | None = None,
    restarts: int = 1,
    early_stop: bool = False,
    seed: Seed = 0,
) -> AttackResult:
    """PGD with ``steps`` steps of size ``step_size`` (default ``rel_step_size * eps / steps``).

    Restarts after the first run only on the points not yet broken, always from a random start.
    ``early_stop`` drops each example from the batch as soon as it is broken (saves compute in evaluation).
    ``init_scale``: the random start is uniform in the ball of radius ``init_scale * eps``; None means 1 for
    Linf and L1 and 0.5 for L2. In high dimension almost all of an L2 ball's volume lies at its surface, so a
    start uniform in the whole ball spends the entire budget on a random direction; on MNIST half the radius
    is measurably stronger (see benchmarks/README.md).
    """
    if steps < 1 or restarts < 1:
        raise SquigglesError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    if init_scale is not None and not 0 <= init_scale <= 1:
        raise SquigglesError(f"init_scale is a fraction of eps in [0, 1], got {init_scale}")
    scale = init_scale if init_scale is not None else (0.5 if isinstance(threat, L2) else 1.0)
    loss_fn = get_loss(loss)

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator) -> Tensor:
        best = Best(x)
        idx = None
        for r in range(restarts):
            pgd_run(
                oracle,
                x,
                goal,
                threat,
                best,
                idx,
                loss_fn,
                steps,
                step_size,
                rel_step_size,
                random_start or r > 0,
                scale,
                early_stop,
                gen,
            )
            idx = (~best.success).nonzero().flatten()
            if len(idx) == 0:
                break
        return best.result()

    config = {
        "steps": steps,
        "step_size": step_size,
        "rel_step_size": rel_step_size,
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
        "random_start": random_start,
        "init_scale": scale,
        "restarts": restarts,
        "early_stop": early_stop,
    }
    return run_attack("pgd", core, model, x, y_or_goal, threat, seed, config)


def pgd_run(
    oracle: Oracle,
    x_all: Tensor,
    goal_all: ResolvedGoal,
    threat_all: ThreatModel,
    best: Best,
    idx: Tensor | None,
    loss_fn: Loss,
    steps: int,
    step_size: float | None,
    rel_step_size: float,
    random_start: bool,
    init_scale: float,
    early_stop: bool,
    gen: torch.Generator,
) -> None:
    """One PGD run on the examples ``idx`` (all when None), writing the best iterates into ``best``.

    The loss and success of each iterate come from the forward pass that also gives its gradient, so
    tracking the best iterate costs at most one extra forward pass (the last iterate, on the examples that
    no earlier iterate broke).
    """
    x = x_all if idx is None else x_all[idx]
    goal = goal_all if idx is None else goal_all.subset(idx)
    threat = threat_all if idx is None else subset_threat(threat_all, idx)
    size = step_size if step_size is not None else rel_step_size * threat.eps_like(x).flatten() / steps
    x_adv = _start(x, threat, init_scale, gen) if random_start else x.clone()
    for _ in range(steps):
        values, grad, logits = oracle.loss_grad(x_adv, loss_fn, goal, idx)
        success = goal.success(logits)
        best.update(idx, x_adv, values, success, logits)
        if early_stop and success.any():
            keep = (~success).nonzero().flatten()
            if len(keep) == 0:
                return
            idx = keep if idx is None else idx[keep]
            x, x_adv, grad, goal = x[keep], x_adv[keep], grad[keep], goal.subset(keep)
            threat = subset_threat(threat, keep)
            if isinstance(size, Tensor):
                size = size[keep]
        x_adv = threat.project(x_adv + threat.step(grad, size), x)
    evaluate_last(oracle, x_adv, goal, goal, loss_fn, best, idx)


def _start(x: Tensor, threat: ThreatModel, init_scale: float, gen: torch.Generator) -> Tensor:
    """A uniform random point of the ball of radius ``init_scale * eps`` (inside the bounds)."""
    if init_scale == 1.0:
        return threat.random_init(x, gen)
    return threat.with_eps(threat.eps * init_scale).random_init(x, gen)
