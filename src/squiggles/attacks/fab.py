"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020, arXiv 1907.02044), AutoAttack's third
stage, as a fixed-budget attack: a point is broken when FAB finds an adversarial input within ``eps``.

Each step linearises the difference of two logits (the target's minus the label's) around the current iterate,
projects both the iterate and the clean input onto that linear decision boundary inside the box bounds, and
moves to a convex combination of the two projections, a little past the boundary (``eta``), biased towards the
clean input (at most ``alpha_max``) so that the perturbation stays small; after each step that crosses the
boundary it steps back towards the clean input (``beta``). It needs only one gradient per step, and because it
follows the boundary's geometry instead of a loss, it breaks points whose loss gradients mislead APGD, as
AutoAttack's FAB-T does on a Linf-trained MNIST model attacked in L2 (README, the evaluation panel).

Targets: the ``n_target_classes`` classes with the highest clean logits other than the label, most likely
first, each tried on the points still standing.

Example:
    >>> import torch
    >>> from squiggles.attacks.fab import fab_targeted
    >>> from squiggles.threat import L2
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    >>> res = fab_targeted(net, torch.rand(6, 1, 4, 4), None, L2(2.0), steps=20)
    >>> bool((res.norms <= 2.0 + 1e-5).all()), res.config["n_target_classes"]
    (True, 9)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Generator, Tensor

from squiggles.attacks._core import Oracle, Seed, run_attack
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal, Targeted
from squiggles.results import AttackResult
from squiggles.threat import L2, Linf, ThreatModel

_BISECTIONS = 30


def fab_targeted(
    model: Callable[[Tensor], Tensor], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    n_target_classes: int = 9, steps: int = 100, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
    seed: Seed = 0,
) -> AttackResult:
    """Targeted FAB in Linf or L2, untargeted in effect (success = misclassified within ``eps``), over the top
    ``n_target_classes`` other classes with ``steps`` steps each."""
    if isinstance(y_or_goal, Targeted):
        raise SquigglesError("fab-t picks its own target classes among the top-k clean logits; pass labels")
    if not isinstance(threat, Linf | L2):
        raise SquigglesError(f"fab-t supports the Linf and L2 threat models, got {type(threat).__name__}")
    if n_target_classes < 1 or steps < 1:
        raise SquigglesError(f"n_target_classes and steps must be >= 1, got {n_target_classes} and {steps}")
    if not (0 <= alpha_max < 1 and eta >= 1 and 0 < beta < 1):
        raise SquigglesError(f"need 0 <= alpha_max < 1, eta >= 1, 0 < beta < 1; got {alpha_max}, {eta}, {beta}")
    linf = isinstance(threat, Linf)

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: Generator) -> Tensor:
        clean = oracle.logits(x)
        ranked = clean.scatter(1, goal.labels.unsqueeze(1), -torch.inf).argsort(1, descending=True)
        best, best_norm = x.clone(), torch.full((len(x),), torch.inf, dtype=x.dtype, device=x.device)
        eps = threat.eps_like(x).flatten()
        for r in range(min(n_target_classes, clean.shape[1] - 1)):
            idx = (~(best_norm <= eps) & ~goal.success(clean)).nonzero().flatten()
            if len(idx) == 0:
                break
            adv, norm = _run(oracle, x[idx], goal.labels[idx], ranked[idx, r], threat, idx, linf, steps,
                             alpha_max, eta, beta)
            better = norm < best_norm[idx]
            best[idx[better]], best_norm[idx[better]] = adv[better], norm[better]
        return torch.where((best_norm <= eps).view(-1, *[1] * (x.dim() - 1)), best, x)

    config = {"n_target_classes": n_target_classes, "steps": steps, "alpha_max": alpha_max, "eta": eta,
              "beta": beta}
    return run_attack("fab-t", core, model, x, y_or_goal, threat, seed, config)


def _run(oracle: Oracle, x0: Tensor, y: Tensor, t: Tensor, threat: ThreatModel, idx: Tensor, linf: bool,
         steps: int, alpha_max: float, eta: float, beta: float) -> tuple[Tensor, Tensor]:
    """One FAB run towards targets ``t``; the smallest adversarial input found per example and its norm."""
    lo, hi = threat.bounds
    shape = (-1, *[1] * (x0.dim() - 1))
    flat0 = x0.flatten(1)
    best, best_norm = x0.clone(), torch.full((len(x0),), torch.inf, dtype=x0.dtype, device=x0.device)
    xk = x0.clone()
    goal = ResolvedGoal(y, t, "given")
    for _ in range(steps):
        diff, grad, _ = oracle.loss_grad(xk, _target_minus_label, goal, idx)
        w = grad.flatten(1)
        b = (w * xk.flatten(1)).sum(1) - diff  # the linearised boundary: w . z = b
        dk = _project(xk.flatten(1), w, b, lo, hi, linf) - xk.flatten(1)
        d0 = _project(flat0, w, b, lo, hi, linf) - flat0
        nk, n0 = _norm(dk, linf), _norm(d0, linf)
        alpha = (nk / (nk + n0).clamp_min(1e-12)).clamp(0, alpha_max).view(-1, 1)
        step = ((1 - alpha) * (xk.flatten(1) + eta * dk) + alpha * (flat0 + eta * d0)).clamp(lo, hi)
        xk = step.view_as(x0)
        fooled = oracle.logits(xk, idx).argmax(1) != y
        if fooled.any():
            norm = _norm((xk - x0).flatten(1), linf)
            better = fooled & (norm < best_norm)
            best[better], best_norm[better] = xk[better], norm[better]
            # Back towards the clean input from the points that crossed, to look for a smaller perturbation.
            xk = torch.where(fooled.view(shape), (1 - beta) * x0 + beta * xk, xk)
    return best, best_norm


def _target_minus_label(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    assert targets is not None
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.gather(1, labels.unsqueeze(1)).squeeze(1)


def _norm(d: Tensor, linf: bool) -> Tensor:
    return d.abs().amax(1) if linf else d.norm(dim=1)


def _project(p: Tensor, w: Tensor, b: Tensor, lo: float, hi: float, linf: bool) -> Tensor:
    """The point of the box ``[lo, hi]`` on the hyperplane ``w . z = b`` closest to ``p`` in the threat's norm
    (the nearest point of the box to the hyperplane where they do not meet), by bisection on one scalar.

    L2: ``z = clip(p + lam * w)``; Linf: ``z = clip(p + s * sign(w))``. In both, ``w . z`` grows monotonically
    with the scalar, so the one that meets the hyperplane is found by bisection.
    """
    direction = w if not linf else w.sign()
    gap = (b - (w * p).sum(1)).view(-1, 1)
    sign = gap.sign()
    # Bracket: the scalar at which the move alone, unclipped, reaches the hyperplane, then doubled as needed.
    unit = (w * direction).sum(1, keepdim=True).abs().clamp_min(1e-12)
    top = (gap.abs() / unit).clamp_min(1e-12)
    for _ in range(20):  # widen until the clipped move reaches the plane (or stops changing)
        z = (p + sign * top * direction).clamp(lo, hi)
        short = ((w * z).sum(1, keepdim=True) - (b.view(-1, 1))) * sign < 0
        if not short.any():
            break
        top = torch.where(short, top * 4, top)
    low = torch.zeros_like(top)
    for _ in range(_BISECTIONS):
        mid = (low + top) / 2
        z = (p + sign * mid * direction).clamp(lo, hi)
        short = ((w * z).sum(1, keepdim=True) - b.view(-1, 1)) * sign < 0
        low, top = torch.where(short, mid, low), torch.where(short, top, mid)
    return (p + sign * top * direction).clamp(lo, hi)
