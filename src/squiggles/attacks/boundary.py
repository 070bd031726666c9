"""The Boundary Attack (Brendel, Rauber & Bethge 2018, arXiv 1712.04248): the first decision-based attack, L2.

From an adversarial start it takes random steps along the boundary: an orthogonal step on the sphere around the
clean input (size ``spherical_step`` times the distance), then a step toward the clean input (``source_step``
times the distance), kept only if the result stays adversarial. Every ``adapt_every`` steps the two sizes
are checked, and after ten checks the two sizes adapt to the success rates as in the paper (and Foolbox 3): both
grow by ``step_adaptation`` when more than half the orthogonal candidates stayed adversarial and shrink when
fewer than a fifth did; the source step also grows when more than a quarter of the full steps succeeded and
shrinks below a tenth. The orthogonal candidate alone is queried only on the check steps (one extra call).

The baseline against which `hsja` is measured: it needs many more queries for the same distance.

Example:
    >>> import math, torch
    >>> from squiggles.attacks.boundary import boundary
    >>> from squiggles.threat import L2
    >>> net = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.eye(2, 4)), net.bias.zero_()
    >>> res = boundary(net, torch.tensor([[0.6, 0.2, 0.5, 0.5]]), None, L2(math.inf), queries=3000)
    >>> bool(res.success), round(res.norms.item(), 2)   # the boundary is 0.283 away
    (True, 0.28)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
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

_WINDOW = 10  # checks per adaptation of the step sizes


def boundary(
    model: Callable[[Tensor], Any], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    queries: int = 5000, spherical_step: float = 0.01, source_step: float = 0.01, step_adaptation: float = 1.5,
    adapt_every: int = 10, starts: Tensor | None = None, seed: Seed = 0, max_batch: int | None = None,
    curve_at: Sequence[int] = CURVE_AT,
) -> AttackResult:
    """The Boundary Attack in L2 with at most ``queries`` model calls per example (all calls included).

    The start is blended uniform noise (or ``starts``) bisected toward the clean input. ``eps`` finite: an
    example stops once within it; ``math.inf``: the smallest adversarial found. Labels only are read.
    """
    if threat.name != "l2":
        raise SquigglesError(f"boundary is an L2 attack, got --norm {threat.name}; use rays for Linf")
    if not (spherical_step > 0 and source_step > 0 and step_adaptation > 1 and adapt_every >= 1):
        raise SquigglesError("boundary needs spherical_step > 0, source_step > 0, step_adaptation > 1 and "
                             f"adapt_every >= 1, got {spherical_step}, {source_step}, {step_adaptation}, {adapt_every}")

    def core(oracle: LabelOracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator,
             starts: Tensor | None, trace: Trace) -> Tensor:
        n = len(x)
        idx = torch.arange(n, device=x.device)
        far, found = adversarial_start(oracle, x, starts, gen, threat.bounds)
        cur = x.clone()
        rows = found.nonzero().flatten()
        if len(rows):
            one = torch.ones(len(rows), device=x.device, dtype=x.dtype)
            _, cur[rows] = bisect(oracle, x[rows], far[rows], rows, blend, one, 1e-3)
        dist = torch.where(found, threat.norm(cur - x), torch.full((n,), math.inf, device=x.device, dtype=x.dtype))
        trace.record(rows, dist[rows], oracle.queries[rows])
        sph = torch.full((n,), spherical_step, device=x.device, dtype=x.dtype)
        src = torch.full((n,), source_step, device=x.device, dtype=x.dtype)
        sph_hits = torch.zeros(n, device=x.device)
        full_hits = torch.zeros(n, device=x.device)
        checks = torch.zeros(n, device=x.device)
        eps = threat.eps_like(x).flatten()
        for step in range(1, 10_000_000):
            check = step % adapt_every == 0
            need = 2 if check else 1
            act = (found & ((dist > eps) | torch.isinf(eps)) & (oracle.left(idx) >= need)).nonzero().flatten()
            if len(act) == 0:
                break
            spherical, cand = _proposals(x[act], cur[act], sph[act], src[act], threat, gen)
            adv = oracle.adversarial(cand, act)
            if check:
                sph_hits[act] += oracle.adversarial(spherical, act).float()
                full_hits[act] += adv.float()
                checks[act] += 1
            new_dist = threat.norm(cand - x[act])
            keep = adv & (new_dist < dist[act])
            cur[act[keep]], dist[act[keep]] = cand[keep], new_dist[keep]
            trace.record(act, dist[act], oracle.queries[act])
            ready = act[checks[act] >= _WINDOW]
            if len(ready):
                _adapt(ready, sph, src, sph_hits, full_hits, checks, step_adaptation)
        return torch.where(per_example(torch.isfinite(dist), x), cur, x)

    config = {"spherical_step": spherical_step, "source_step": source_step, "step_adaptation": step_adaptation,
              "adapt_every": adapt_every}
    return run_decision_attack("boundary", core, model, x, y_or_goal, threat, seed, queries, starts, config,
                               curve_at, max_batch)


def _proposals(x: Tensor, cur: Tensor, sph: Tensor, src: Tensor, threat: ThreatModel,
               gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The orthogonal candidate (on the sphere of radius ``||cur - x||`` around ``x``) and the full candidate
    (that one moved toward ``x`` by ``src`` times the distance), both clipped to the bounds."""
    lo, hi = threat.bounds
    tiny = torch.finfo(x.dtype).tiny
    to_x = x - cur
    r = threat.norm(to_x).clamp_min(tiny)
    unit = to_x / per_example(r, x)
    eta = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    eta = eta - per_example((eta * unit).flatten(1).sum(1), x) * unit
    eta = eta * per_example(sph * r / threat.norm(eta).clamp_min(tiny), x)
    # cur + eta leaves the sphere by a factor sqrt(1 + sph^2); scaling the offset from x brings it back.
    spherical = (x + (eta - to_x) / per_example(torch.sqrt(1 + sph**2), x)).clamp(lo, hi)
    back = x - spherical
    r_new = threat.norm(back).clamp_min(tiny)
    length = (src * r + r_new - r).clamp_min(0) / r_new
    full = (spherical + per_example(length, x) * back).clamp(lo, hi)
    return spherical, full


def _adapt(rows: Tensor, sph: Tensor, src: Tensor, sph_hits: Tensor, full_hits: Tensor, checks: Tensor,
           factor: float) -> None:
    """The paper's step-size adaptation from the success rates over the last window of checks; counters restart."""
    p_sph = sph_hits[rows] / checks[rows]
    p_full = full_hits[rows] / checks[rows]
    both = torch.where(p_sph > 0.5, factor, torch.where(p_sph < 0.2, 1 / factor, 1.0)).to(sph.dtype)
    sph[rows] *= both
    src[rows] *= both * torch.where(p_full > 0.25, factor, torch.where(p_full < 0.1, 1 / factor, 1.0)).to(src.dtype)
    sph_hits[rows] = 0
    full_hits[rows] = 0
    checks[rows] = 0
