"""HopSkipJumpAttack (Chen, Jordan & Wainwright 2020, arXiv 1904.02144): a decision-based attack in L2 and Linf.

From an adversarial start it walks along the decision boundary toward the clean input. Each iteration
(1) estimates the boundary's normal at the current point from the labels of ``B_t = B_0 sqrt(t)`` random probes
(Monte-Carlo, with the mean of the probes' outcomes as a baseline); (2) steps along it (its sign for Linf) with the
paper's geometric step-size search, ``xi = dist / sqrt(t)`` halved until the step stays adversarial; (3) bisects
back toward the clean input to the boundary. Step radius, probe radius and tolerances are the paper's
(``theta = gamma / d^(3/2)`` for L2, ``gamma / d^2`` for Linf).

Batched: every example and every probe of one step go to the model in one call (in chunks of ``max_batch``
rows, by default 128 on a CPU and 8,192 on a GPU); the examples run in lockstep and each stops at its own budget.

One departure from the paper, on by default: for the first ``subspace_iterations`` iterations the probes of an
image are drawn at ``1/subspace`` of its height and width and upsampled (Li et al.'s QEBA, arXiv 2005.14137):
fewer dimensions to estimate, so a better direction per query while the point is far from the clean input;
later iterations probe the full space, which the subspace would otherwise stop short of. On the validation split
(20 points each of the zoo's mnist-standard and mnist-linf-0.3, 5,000 calls) this beat both the paper's
full-space probes (median L2 at 1K calls 2.08 vs 2.66 and 2.70 vs 3.29; at 5K 1.77 vs 1.82 and 2.01 vs 2.05)
and subspace probes throughout (worse at 5K: 1.86 and 2.24). ``antithetic`` (off) probes in ``+u, -u`` pairs;
it did not help there. ``subspace=1`` gives the paper's attack.

Example:
    >>> import math, torch
    >>> from squiggles.attacks.hsja import hsja
    >>> from squiggles.threat import L2
    >>> net = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.eye(2, 4)), net.bias.zero_()
    >>> x = torch.tensor([[0.6, 0.2, 0.5, 0.5]])   # the boundary x0 = x1 is 0.4 / sqrt(2) = 0.283 away
    >>> res = hsja(net, x, None, L2(math.inf), queries=3000)
    >>> round(res.norms.item(), 2), res.backwards
    (0.29, 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from squiggles.attacks._core import Seed
from squiggles.attacks._decision import (
    CURVE_AT,
    LabelOracle,
    Trace,
    adversarial_start,
    bisect,
    blend,
    per_example,
    run_decision_attack,
)
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal
from squiggles.results import AttackResult
from squiggles.threat import ThreatModel

_PROBE_ROWS = 8192  # probes held in memory at once (rows of the input's size)
_MAX_HALVINGS = 20  # of the geometric step-size search; 2^-20 of the distance is far below any tolerance


def hsja(
    model: Callable[[Tensor], Any], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    queries: int = 5000, init_probes: int = 100, max_probes: int = 10_000, gamma: float = 1.0,
    antithetic: bool = False, subspace: int | str = "auto", subspace_iterations: int | None = 8,
    starts: Tensor | None = None, seed: Seed = 0,
    max_batch: int | None = None, curve_at: Sequence[int] = CURVE_AT,
) -> AttackResult:
    """HopSkipJump in L2 or Linf with at most ``queries`` model calls per example (all calls included).

    ``eps`` finite: an example stops as soon as it is within the budget; ``eps = math.inf``: the smallest
    adversarial found in the budget. ``starts``: a starting image per example (e.g. one of the target class
    for a targeted goal); where it is missing or not adversarial, blended uniform noise is used.
    ``subspace``: downsampling factor of the probes for images (``"auto"``: 2 for images of side >= 16, else 1),
    for the first ``subspace_iterations`` iterations (``None``: all of them).
    The model is only ever asked for labels (it may return scores or labels).
    """
    if threat.name not in ("l2", "linf"):
        raise SquigglesError(f"hsja supports --norm l2 and linf, got {threat.name}; use fmn for L1")
    if init_probes < 2 or max_probes < init_probes:
        raise SquigglesError(f"need 2 <= init_probes <= max_probes, got {init_probes} and {max_probes}")
    if not gamma > 0:
        raise SquigglesError(f"gamma must be > 0, got {gamma}")
    factor = _subspace(subspace, x)
    linf = threat.name == "linf"

    def core(oracle: LabelOracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator,
             starts: Tensor | None, trace: Trace) -> Tensor:
        n, d = len(x), x[0].numel()
        lo, hi = threat.bounds
        theta = gamma / (d ** 2 if linf else d ** 1.5)
        idx = torch.arange(n, device=x.device)
        far, found = adversarial_start(oracle, x, starts, gen, threat.bounds)
        cur = x.clone()
        rows = found.nonzero().flatten()
        if len(rows):
            cur[rows] = _to_boundary(oracle, x[rows], far[rows], rows, threat, theta, linf)
        dist = torch.where(found, threat.norm(cur - x), torch.full((n,), math.inf, device=x.device, dtype=x.dtype))
        best, best_dist = cur.clone(), dist.clone()
        trace.record(rows, dist[rows], oracle.queries[rows])
        eps = threat.eps_like(x).flatten()
        for t in range(1, 1_000_000):
            # Enough left for a few probes, a step and a bisection; not already inside the budget.
            act = (found & ((best_dist > eps) | torch.isinf(eps)) & (oracle.left(idx) >= 4)).nonzero().flatten()
            if len(act) == 0:
                break
            xa, ca, da = x[act], cur[act], dist[act]
            delta = torch.full_like(da, 0.1 * (hi - lo)) if t == 1 else (d * theta if linf else d**0.5 * theta) * da
            left = oracle.left(act)
            probes = torch.clamp(left - 2 - _bisect_cost(da, theta, linf), min=1,
                                 max=min(int(init_probes * math.sqrt(t)), max_probes))
            f_t = factor if subspace_iterations is None or t <= subspace_iterations else 1
            grad = _estimate_normal(oracle, ca, act, delta, probes, threat, gen, f_t, antithetic)
            update = grad.sign() if linf else grad
            moved, ok = _step_search(oracle, ca, act, update, da / math.sqrt(t), threat)
            new = ca.clone()
            good = ok.nonzero().flatten()
            if len(good):
                new[good] = _to_boundary(oracle, xa[good], moved[good], act[good], threat, theta, linf)
            cur[act] = new
            dist[act] = threat.norm(new - xa)
            better = dist[act] < best_dist[act]
            best[act[better]], best_dist[act[better]] = new[better], dist[act][better]
            trace.record(act, best_dist[act], oracle.queries[act])
        return torch.where(per_example(torch.isfinite(best_dist), x), best, x)

    config = {"init_probes": init_probes, "max_probes": max_probes, "gamma": gamma, "antithetic": antithetic,
              "subspace": factor, "subspace_iterations": subspace_iterations}
    return run_decision_attack("hsja", core, model, x, y_or_goal, threat, seed, queries, starts, config, curve_at,
                               max_batch)


def _subspace(subspace: int | str, x: Tensor) -> int:
    image = x.dim() == 4 and min(x.shape[2:]) >= 16
    if subspace == "auto":
        return 2 if image else 1
    if isinstance(subspace, bool) or not isinstance(subspace, int) or subspace < 1:
        raise SquigglesError(f"subspace must be 'auto' or an integer >= 1, got {subspace!r}")
    if subspace > 1 and x.dim() != 4:
        raise SquigglesError(f"subspace={subspace} needs image inputs N x C x H x W, got shape {tuple(x.shape)}")
    return subspace


def _bisect_cost(dist: Tensor, theta: float, linf: bool) -> Tensor:
    """Queries the bisection back to the boundary will take (the same rule as `_to_boundary`)."""
    span = torch.ones_like(dist) if not linf else dist
    tol = theta if not linf else torch.clamp(dist * theta, max=theta)
    return torch.ceil(torch.log2((span / tol).clamp_min(1))).long()


def _to_boundary(oracle: LabelOracle, x: Tensor, far: Tensor, idx: Tensor, threat: ThreatModel, theta: float,
                 linf: bool) -> Tensor:
    """Bisect from the adversarial ``far`` toward ``x``: along the segment (L2), or by shrinking the Linf box
    around ``x`` that ``far`` is clipped to (Linf), to the paper's tolerance."""
    if not linf:
        _, point = bisect(oracle, x, far, idx, blend, torch.ones(len(x), device=x.device, dtype=x.dtype), theta)
        return point
    dist = threat.norm(far - x)

    def clip_to(x: Tensor, far: Tensor, r: Tensor) -> Tensor:
        r = per_example(r, x)
        return torch.minimum(torch.maximum(far, x - r), x + r)

    _, point = bisect(oracle, x, far, idx, clip_to, dist, torch.clamp(dist * theta, max=theta))
    return point


def _probe_directions(shape: torch.Size, count: int, gen: torch.Generator, factor: int, linf: bool,
                      antithetic: bool, like: Tensor) -> Tensor:
    """``count`` unit directions per example, ``count x N x ...``: Gaussian (L2) or uniform (Linf), drawn at
    ``1/factor`` resolution for images, in ``+u, -u`` pairs when ``antithetic``."""
    draw = (count + 1) // 2 if antithetic else count
    n, rest = shape[0], tuple(shape[1:])
    small = rest if factor == 1 else (rest[0], math.ceil(rest[1] / factor), math.ceil(rest[2] / factor))
    size = (draw * n, *small)
    u = (torch.randn(size, generator=gen, device=like.device, dtype=like.dtype) if not linf else
         2 * torch.rand(size, generator=gen, device=like.device, dtype=like.dtype) - 1)
    if factor > 1:
        u = F.interpolate(u, size=rest[1:], mode="bilinear", align_corners=False)
    u = u.view(draw, n, *rest)
    if antithetic:
        u = torch.cat([u, -u])[:count]
    flat = u.flatten(2)
    return (flat / flat.norm(dim=2, keepdim=True).clamp_min(torch.finfo(like.dtype).tiny)).view(count, n, *rest)


def _estimate_normal(oracle: LabelOracle, cur: Tensor, idx: Tensor, delta: Tensor, probes: Tensor,
                     threat: ThreatModel, gen: torch.Generator, factor: int, antithetic: bool,
) -> Tensor:
    """The paper's Monte-Carlo estimate of the boundary normal at ``cur``, ``probes[i]`` probes for example i.

    Probes are drawn in chunks (memory stays at ``_PROBE_ROWS`` rows); the baseline is the mean outcome over all
    of an example's probes, so the sums are kept and combined at the end.
    """
    lo, hi = threat.bounds
    n = len(cur)
    total = int(probes.max())
    chunk = max(2, (_PROBE_ROWS // max(n, 1)) // 2 * 2)
    s_phi_u = torch.zeros_like(cur)
    s_u = torch.zeros_like(cur)
    s_phi = torch.zeros(n, device=cur.device, dtype=cur.dtype)
    for first in range(0, total, chunk):
        count = min(chunk, total - first)
        u = _probe_directions(cur.shape, count, gen, factor, threat.name == "linf", antithetic, cur)
        z = (cur[None] + per_example(delta, cur)[None] * u).clamp(lo, hi)
        u = (z - cur[None]) / per_example(delta, cur)[None]  # what the clipped probe really moved
        use = (first + torch.arange(count, device=cur.device))[:, None] < probes[None, :]  # count x n
        k, e = use.nonzero(as_tuple=True)
        phi = torch.zeros(count, n, device=cur.device, dtype=cur.dtype)
        phi[k, e] = oracle.adversarial(z[k, e], idx[e]).to(cur.dtype) * 2 - 1
        s_phi_u += (phi.view(count, n, *([1] * (cur.dim() - 1))) * u).sum(0)
        s_u += (use.to(cur.dtype).view(count, n, *([1] * (cur.dim() - 1))) * u).sum(0)
        s_phi += phi.sum(0)
    m = per_example(probes.to(cur.dtype), cur)
    mean_phi = per_example(s_phi, cur) / m
    # All probes on one side: the baseline would cancel the estimate, so use the plain mean (as the paper does).
    one_sided = per_example(mean_phi.flatten().abs() == 1, cur)
    grad = torch.where(one_sided, s_phi_u / m, s_phi_u / m - mean_phi * s_u / m)
    return grad / per_example(grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(cur.dtype).tiny), cur)


def _step_search(oracle: LabelOracle, cur: Tensor, idx: Tensor, update: Tensor, size: Tensor,
                 threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """The geometric step-size search: halve ``size`` until ``cur + size * update`` is adversarial."""
    lo, hi = threat.bounds
    size = size.clone()
    out = cur.clone()
    ok = torch.zeros(len(cur), dtype=torch.bool, device=cur.device)
    for _ in range(_MAX_HALVINGS):
        rows = (~ok & (oracle.left(idx) > 0)).nonzero().flatten()
        if len(rows) == 0:
            break
        cand = (cur[rows] + per_example(size[rows], cur) * update[rows]).clamp(lo, hi)
        adv = oracle.adversarial(cand, idx[rows])
        out[rows[adv]] = cand[adv]
        ok[rows[adv]] = True
        size[rows[~adv]] /= 2
    return out, ok
