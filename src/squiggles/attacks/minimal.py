"""Minimal-norm attacks: Fast Minimum-Norm (FMN; Pintor et al. 2021, arXiv 2102.12827) for L2, Linf and L1,
and Carlini & Wagner L2 (CW; Carlini & Wagner 2017, arXiv 1608.04644).

Both look for the *smallest* perturbation that meets the goal, rather than the strongest one inside a budget.
How that meets the threat model's ``eps`` (the budget against which success is judged):

* ``eps = math.inf`` (e.g. ``L2(math.inf)``): purely minimal-norm. ``x_adv`` is, per example, the smallest
  adversarial input found and ``result.norms`` its norm; an example never broken comes back as ``x`` itself
  (``success`` False, norm 0). An example that already meets the goal comes back as ``x`` (success, norm 0).
* finite ``eps`` (a float or per-example tensor): an example whose smallest adversarial has norm ``<= eps``
  returns it (a success); otherwise the best effort is returned and projected onto the budget by
  `run_attack` (the smallest adversarial found, scaled into the ball, or the last iterate when none was
  found), which will typically not succeed. ``x_adv`` is always inside the budget and the bounds.

Both attacks are deterministic (no random start); ``seed`` is accepted and recorded for a uniform API.

Example:
    >>> import math, torch
    >>> from squiggles.attacks.minimal import cw, fmn
    >>> from squiggles.threat import L2
    >>> net = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.eye(2, 4)), net.bias.zero_()
    >>> x = torch.tensor([[0.6, 0.2, 0.5, 0.5]])   # the boundary x0 = x1 is 0.4 / sqrt(2) away
    >>> round(fmn(net, x, None, L2(math.inf)).norms.item(), 3)
    0.283
    >>> cw(net, x, None, L2(0.25)).success.item(), cw(net, x, None, L2(0.3)).success.item()
    (False, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from squiggles.attacks._core import Oracle, Seed, eps_value, run_attack
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal
from squiggles.losses import margin
from squiggles.results import AttackResult
from squiggles.threat import ThreatModel

# The dual norm of each threat model's norm: it turns a first-order loss estimate into a distance.
_DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}


def _view(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


class _Smallest:
    """Per example: the adversarial input of smallest norm seen so far."""

    def __init__(self, x: Tensor) -> None:
        self.x = x.clone()
        self.norm = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
        self.found = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def update(self, x_new: Tensor, norm: Tensor, ok: Tensor) -> None:
        better = ok & (norm < self.norm)
        self.x = torch.where(_view(better, x_new), x_new, self.x)
        self.norm = torch.where(better, norm, self.norm)
        self.found |= ok

    def output(self, x: Tensor, last: Tensor, threat: ThreatModel) -> Tensor:
        """The smallest adversarial where one was found; else ``x`` for an infinite budget (nothing to
        report) and the last iterate for a finite one (best effort; run_attack projects it)."""
        fallback = torch.where(_view(torch.isinf(eps_value(threat, x)), x), x, last)
        return torch.where(_view(self.found, x), self.x, fallback)


def _cosine(start: float, end: float, i: int, steps: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * i / steps)) / 2


def fmn(
    model: Callable[[Tensor], Tensor], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    steps: int = 100, alpha_init: float = 1.0, alpha_final: float | None = None, gamma_init: float = 0.05,
    gamma_final: float = 0.001, seed: Seed = 0,
) -> AttackResult:
    """Fast Minimum-Norm attack: gradient steps on the logit margin inside a ball whose radius adapts.

    Per example and step: while no adversarial has been found, the radius jumps to the first-order estimate of
    the distance to the boundary (``||delta|| + |margin| / ||grad||_dual``); afterwards it shrinks by
    ``1 - gamma`` when the iterate is adversarial and grows by ``1 + gamma`` when not. The step is an
    L2-normalised gradient step of size ``alpha``; ``alpha`` and ``gamma`` decay from ``*_init`` to
    ``*_final`` on a cosine schedule (``alpha_final`` defaults to ``alpha_init / 100``). L2, Linf and L1.

    Departures from the paper, each against a stall seen in practice: (1) gradient components that push a
    coordinate already on a bound further out are dropped (they inflate ``||grad||`` and waste radius on moves
    the box clips away; MNIST's zero pixels); (2) before the first adversarial, the radius is the estimate
    times ``1 + gamma`` (on a linear model the exact estimate lands on the boundary, where rounding can keep
    the iterate on the wrong side step after step), and (3) never below the previous radius times
    ``1 + gamma`` (with part of each step clipped by the box, the estimate alone can settle short of it).
    """
    alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
    if steps < 1:
        raise SquigglesError(f"steps must be >= 1, got {steps}")
    if not (alpha_init > 0 and alpha_final > 0):
        raise SquigglesError(f"alpha_init and alpha_final must be > 0, got {alpha_init} and {alpha_final}")
    if not (0 <= gamma_final < 1 and 0 <= gamma_init < 1):
        raise SquigglesError(f"gamma_init and gamma_final must lie in [0, 1), got {gamma_init} and {gamma_final}")
    if threat.name not in _DUAL:
        raise SquigglesError(f"fmn supports the {', '.join(_DUAL)} threat models, got {type(threat).__name__}")

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator) -> Tensor:
        lo, hi = threat.bounds
        tiny = torch.finfo(x.dtype).tiny
        dual = _DUAL[threat.name]
        # No point inside the bounds is farther than this, so a larger radius is never useful.
        worst = threat.norm(torch.maximum(x - lo, hi - x))
        radius = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        delta = torch.zeros_like(x)
        best = _Smallest(x)
        for i in range(steps):
            alpha = _cosine(alpha_init, alpha_final, i, steps)
            gamma = _cosine(gamma_init, gamma_final, i, steps)
            x_adv = x + delta
            values, grad, logits = oracle.loss_grad(x_adv, margin, goal)
            grad = grad.masked_fill(((x_adv <= lo) & (grad < 0)) | ((x_adv >= hi) & (grad > 0)), 0)
            adv = goal.success(logits)
            norm = threat.norm(delta)
            best.update(x_adv, norm, adv)
            to_boundary = values.abs() / grad.flatten(1).norm(p=dual, dim=1).clamp_min(tiny)
            search = torch.maximum(norm + to_boundary, radius) * (1 + gamma)
            radius = torch.where(adv, torch.minimum(radius * (1 - gamma), best.norm),
                                 torch.where(best.found, radius * (1 + gamma), search))
            radius = torch.minimum(radius, worst)
            delta = delta + alpha * grad / _view(grad.flatten(1).norm(dim=1).clamp_min(tiny), grad)
            delta = threat.with_eps(radius).project_delta(delta)
            delta = threat.clip(x + delta) - x
        last = x + delta
        best.update(last, threat.norm(delta), goal.success(oracle.logits(last)))
        return best.output(x, last, threat)

    config = {"steps": steps, "alpha_init": alpha_init, "alpha_final": alpha_final, "gamma_init": gamma_init,
              "gamma_final": gamma_final}
    return run_attack("fmn", core, model, x, y_or_goal, threat, seed, config)


def cw(
    model: Callable[[Tensor], Tensor], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    steps: int = 100, binary_steps: int = 9, lr: float = 0.1, initial_const: float = 1e-3,
    confidence: float = 0.0, seed: Seed = 0,
) -> AttackResult:
    """Carlini & Wagner L2: Adam on ``||x' - x||^2 + c * max(-margin(x'), -confidence)`` in tanh space.

    ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2`` keeps every iterate inside the bounds. Each of the
    ``binary_steps`` outer rounds restarts Adam (``steps`` steps, learning rate ``lr``) from ``x``; the constant
    ``c`` (per example, starting at ``initial_const``) is then bisected: lowered after a round that found an
    adversarial with margin ``>= confidence``, raised (times 10 until bracketed) after one that did not.

    Pixels sitting exactly on a bound start where tanh is flat and move slowly: on images with many such
    pixels (MNIST) CW needs many more steps (the paper used thousands) than ``fmn`` does.
    """
    if threat.name != "l2":
        raise SquigglesError(f"cw is an L2 attack; got a {type(threat).__name__} threat model: use "
                             "squiggles.threat.L2 (or fmn for Linf and L1)")
    if steps < 1 or binary_steps < 1:
        raise SquigglesError(f"steps and binary_steps must be >= 1, got steps={steps}, binary_steps={binary_steps}")
    if not (lr > 0 and initial_const > 0 and confidence >= 0):
        raise SquigglesError(f"lr and initial_const must be > 0 and confidence >= 0, got lr={lr}, "
                             f"initial_const={initial_const}, confidence={confidence}")
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator) -> Tensor:
        n = len(x)
        lo, hi = threat.bounds
        half = (hi - lo) / 2
        # Points on the bounds would map to w = +-inf; the margin used by Carlini & Wagner keeps them finite.
        w0 = torch.atanh(((x - lo) / half - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        best = _Smallest(x)
        best.update(x, torch.zeros(n, dtype=x.dtype, device=x.device), goal.success(oracle.logits(x)))
        const = torch.full((n,), initial_const, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        last = x
        for _ in range(binary_steps):
            w, m, v = w0.clone(), torch.zeros_like(x), torch.zeros_like(x)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            for t in range(1, steps + 1):
                tanh_w = torch.tanh(w)
                x_w = lo + half * (tanh_w + 1)
                values, grad, logits = oracle.loss_grad(x_w, margin, goal)
                ok = goal.success(logits) & (values >= confidence)
                best.update(x_w, threat.norm(x_w - x), ok)
                found |= ok
                # f = max(-margin, -confidence) is flat once the margin reaches the confidence.
                hinge = (values < confidence).to(x.dtype)
                grad_x = 2 * (x_w - x) - _view(const * hinge, x) * grad
                grad_w = grad_x * half * (1 - tanh_w**2)
                m = beta1 * m + (1 - beta1) * grad_w
                v = beta2 * v + (1 - beta2) * grad_w**2
                step = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + adam_eps)
                w = w - lr * step
            last = x_w
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return best.output(x, last, threat)

    config = {"steps": steps, "binary_steps": binary_steps, "lr": lr, "initial_const": initial_const,
              "confidence": confidence}
    return run_attack("cw", core, model, x, y_or_goal, threat, seed, config)
