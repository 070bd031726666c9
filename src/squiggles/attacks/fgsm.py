"""Fast Gradient Sign Method (Goodfellow et al. 2014, arXiv 1412.6572) and its random-start variant
used by fast adversarial training (Wong et al. 2020, arXiv 2001.03994).

One steepest-ascent step of the threat model's norm (the sign of the gradient for L-infinity).

Example:
    >>> import torch
    >>> from squiggles.attacks import fgsm
    >>> from squiggles.threat import Linf
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> res = fgsm(net, torch.rand(8, 4), torch.zeros(8, dtype=torch.long), Linf(0.1))
    >>> bool((res.norms <= 0.1 + 1e-6).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from squiggles.attacks._core import Oracle, Seed, run_attack
from squiggles.goals import GoalLike, ResolvedGoal
from squiggles.losses import get_loss
from squiggles.results import AttackResult
from squiggles.threat import ThreatModel


def fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: ThreatModel,
    *,
    random_start: bool = False,
    step_size: float | None = None,
    loss: str = "ce",
    seed: Seed = 0,
) -> AttackResult:
    """One gradient step of size ``step_size`` (default ``eps``; ``1.25 eps`` with ``random_start``)."""
    loss_fn = get_loss(loss)
    factor = step_size if step_size is not None else (1.25 if random_start else 1.0)
    relative = step_size is None

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator) -> Tensor:
        start = threat.random_init(x, gen) if random_start else x
        _, grad, _ = oracle.loss_grad(start, loss_fn, goal)
        size = factor * threat.eps_like(x).flatten() if relative else factor
        return threat.project(start + threat.step(grad, size), x)

    config = {"random_start": random_start, "step_size": step_size, "loss": loss}
    return run_attack("fgsm", core, model, x, y_or_goal, threat, seed, config)
