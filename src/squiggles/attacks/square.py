"""Square Attack (Andriushchenko et al. 2020, arXiv 1912.00049): a score-based black-box random search.

Each iteration changes the current best perturbation on one random square window (side set by a schedule
that shrinks it over time) and keeps the change only for the examples whose loss improved (or that are
broken). It uses forward passes only and stops spending queries on an example as soon as it is broken.

Queries: the stripes (Linf) or squares (L2) initialisation is the first of the ``queries`` forward passes
Square itself makes per example, as in the paper's code. ``result.queries`` also counts the clean and the
verifying forward passes that `run_attack` makes for every attack, so it is at most ``queries + 2``.

Cost: the loop keeps compacted tensors of the examples not yet broken (compacted again only when some
break); Linf windows take precomputed values ``clip(x +- eps)``, which need no projection; window offsets
and the L2 pattern are computed once per window size. Randomness: the Linf sign redraws are drawn at once,
``1 + _REDRAWS`` per iteration, so Linf results for a seed differ from versions before this (the
distribution is the same); the L2 draws are as before.

Example:
    >>> import torch
    >>> from squiggles.attacks.square import square
    >>> from squiggles.threat import Linf
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = square(net, torch.rand(4, 1, 4, 4), None, Linf(0.1), queries=50)
    >>> res.backwards, bool((res.queries <= 52).all()), bool((res.norms <= 0.1 + 1e-6).all())
    (0, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from squiggles.attacks._core import Oracle, Seed, run_attack, subset_threat
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal
from squiggles.losses import Loss, get_loss
from squiggles.results import AttackResult
from squiggles.threat import L2, Linf, ThreatModel

# Iterations (on a 10,000-iteration scale) after which p halves; rescaled to the budget as in AutoAttack.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Redraws of the Linf window signs when they would leave the window unchanged (the paper redraws until
# they change it); if the last draw still would, its signs are flipped, which always changes it when eps > 0.
_REDRAWS = 4


def square(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: ThreatModel,
    *,
    queries: int = 5000,
    p_init: float = 0.8,
    loss: str | Loss = "margin",
    seed: Seed = 0,
    precision: str = "fp32",
) -> AttackResult:
    """Square Attack in Linf or L2 with at most ``queries`` forward passes per example (plus the clean and
    the verifying one), window fraction ``p_init`` at the start, maximising ``loss``.

    ``precision="bf16"``: the search's forward passes run under bfloat16 autocast (2-3x faster convolutions on
    CPUs with AVX512-BF16 and on recent GPUs); a success they report is checked by a float32 pass before the
    example leaves the search (one more query for it), and the final verification is float32 as always.

    ``loss`` is any `squiggles.losses` loss (larger = closer to the goal). The default margin is
    best-other minus label logit, or, with a `Targeted` goal, target minus best-other logit; ``"ce"``
    gives the paper's cross-entropy (minus the target's for a targeted goal).

    Inputs N x C x H x W are images; N x H x W is read as one-channel images, and any other shape
    (tabular N x d included) as a one-row image N x 1 x 1 x D, so windows become runs of adjacent
    features. The result has the input's shape.
    """
    if not isinstance(threat, Linf | L2):
        raise SquigglesError(
            f"square supports the Linf and L2 threat models, got {type(threat).__name__}; use pgd for L1"
        )
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise SquigglesError(f"queries must be an integer >= 1, got {queries!r}")
    if not 0 < p_init <= 1:
        raise SquigglesError(
            f"p_init (the fraction of the image the first windows cover) must be in (0, 1], got {p_init}"
        )
    if precision not in ("fp32", "bf16"):
        raise SquigglesError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    loss_fn = get_loss(loss)
    linf = isinstance(threat, Linf)
    low = precision == "bf16"

    def search_logits(oracle: Oracle, z: Tensor, idx: Tensor, exact: Tensor) -> Tensor:
        """Logits for the search: bfloat16 where asked, float32 for the ``exact`` examples (near the boundary)."""
        if not low:
            return oracle.logits(z, idx)
        if not exact.any():
            with torch.autocast(z.device.type, dtype=torch.bfloat16):
                return oracle.logits(z, idx).to(z.dtype)
        near, rough = exact.nonzero().flatten(), (~exact).nonzero().flatten()
        part = oracle.logits(z[near], idx[near])
        out = part.new_empty(len(z), *part.shape[1:])
        out[near] = part
        if len(rough):
            with torch.autocast(z.device.type, dtype=torch.bfloat16):
                out[rough] = oracle.logits(z[rough], idx[rough]).to(z.dtype)
        return out

    def confirmed(oracle: Oracle, z: Tensor, idx: Tensor, goal: ResolvedGoal, done: Tensor,
                  exact: Tensor) -> Tensor:
        """``done`` with each bfloat16 success re-checked in float32; an example whose success was only a rounding
        is near the boundary, so it is queried in float32 from then on (``exact``, updated in place)."""
        if not low:  # float32 search: nothing to re-check, no work on the hot path
            return done
        check = done & ~exact
        if not check.any():
            return done
        hit = check.nonzero().flatten()
        done = done.clone()
        done[hit] = goal.subset(hit).success(oracle.logits(z[hit], idx[hit]))
        exact[hit] = True
        return done

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator) -> Tensor:
        img = _as_image(x)
        shape, (c, h, w) = x.shape[1:], img.shape[1:]
        eps = threat.eps_like(img).flatten()
        best = img.clone()
        idx = (eps > 0).nonzero().flatten()  # nothing can move inside a zero budget, so those points spend no queries
        if len(idx) == 0:
            return x
        # Working tensors hold only the active (not yet broken) examples, compacted in the iterations where
        # some break, so the loop does not re-index the full batch every query.
        xa, eps, goal, sub = img[idx], eps[idx], goal.subset(idx), subset_threat(threat, idx)
        cand = sub.project((_linf_init if linf else _l2_init)(xa, eps, gen), xa)
        # Linf windows only ever take the values clip(x - eps) or clip(x + eps): compute both once, already
        # inside ball and bounds, so no candidate needs projecting (run_attack's finalize projects anyway).
        ref = _lo_hi(xa, eps, sub) if linf else xa
        exact = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
        logits = search_logits(oracle, cand.reshape(len(idx), *shape), idx, exact)
        cur_loss = loss_fn(logits, goal.labels, goal.targets).to(x.dtype)
        done = confirmed(oracle, cand.reshape(len(idx), *shape), idx, goal, goal.success(logits), exact)
        cur = cand.clone()  # updated in place below, so not the tensor the model was given
        lo, hi = threat.bounds
        tol = 16 * torch.finfo(x.dtype).eps * max(1.0, abs(lo), abs(hi))
        p_last = _p_at(0, queries, p_init)
        stage = _stage(p_last, h, w, not linf, img)
        for it in range(queries - 1):
            if done.any():  # broken examples leave: write them back and compact the rest
                gone, keep = done.nonzero().flatten(), (~done).nonzero().flatten()
                best[idx[gone]] = cur[gone]
                if len(keep) == 0:
                    return best.reshape(x.shape)
                idx, ref, cur, eps, cur_loss = idx[keep], ref[keep], cur[keep], eps[keep], cur_loss[keep]
                exact = exact[keep] if low else exact
                goal = goal.subset(keep)
            p = _p_at(it, queries, p_init)
            if p != p_last:  # the window size (and the L2 pattern) only change at the schedule's halvings
                p_last, stage = p, _stage(p, h, w, not linf, img)
            if linf:
                cand, win, new, old = _linf_step(ref, cur, stage, tol, gen)
            else:
                cand = _l2_step(ref, cur, eps, stage, threat, gen)
            logits = search_logits(oracle, cand.reshape(len(idx), *shape), idx, exact)
            values = loss_fn(logits, goal.labels, goal.targets).to(x.dtype)
            done = confirmed(oracle, cand.reshape(len(idx), *shape), idx, goal, goal.success(logits), exact)
            take = (values > cur_loss) | done
            cur_loss = torch.where(take, values, cur_loss)
            if linf:  # the candidate differs from the current best only in the window
                cur.view(len(idx), c, -1).scatter_(2, win, torch.where(take.view(-1, 1, 1), new, old))
            else:
                cur = torch.where(take.view(-1, 1, 1, 1), cand, cur)
        best[idx] = cur
        return best.reshape(x.shape)

    config = {
        "queries": queries,
        "p_init": p_init,
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
        "precision": precision,
    }
    # Square only runs the model forward; under bfloat16 autocast the eager model is what speeds up.
    rows = 0 if low else len(x) * queries
    return run_attack("square", core, model, x, y_or_goal, threat, seed, config, forward_rows=rows)


# --- schedule and windows ------------------------------------------------------------------------


def _as_image(x: Tensor) -> Tensor:
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.reshape(len(x), 1, 1, -1)


def _p_at(it: int, queries: int, p_init: float) -> float:
    """The window fraction at iteration ``it``: the paper's schedule stretched to ``queries`` iterations."""
    scaled = int(it / queries * 10000)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


def _window(p: float, h: int, w: int, min_side: int = 1, odd: bool = False) -> tuple[int, int]:
    """Window height and width covering about a fraction ``p`` of an h x w image.

    Square (side ``round(sqrt(p h w))``) whenever it fits; on narrow images (one-row tabular inputs) the
    short side is clipped and the long side stretched to keep the area.
    """
    s = max(round(math.sqrt(p * h * w)), min_side)
    if odd and s % 2 == 0:
        s += 1
    sh = min(s, h)
    return sh, min(w, max(1, round(s * s / sh)))


class _Stage(NamedTuple):
    """What only changes when the window fraction p does: the window's sides, the flat offsets of its cells
    from its top-left corner (1 x 1 x sh*sw), and for L2 the window pattern and its transpose (2 x sh*sw)."""

    sh: int
    sw: int
    offsets: Tensor
    patterns: Tensor


def _stage(p: float, h: int, w: int, l2: bool, like: Tensor) -> _Stage:
    sh, sw = _window(p, h, w, min_side=3, odd=True) if l2 else _window(p, h, w)
    rows, cols = torch.arange(sh, device=like.device), torch.arange(sw, device=like.device)
    offsets = (rows.view(-1, 1) * w + cols).view(1, 1, -1)
    if not l2:
        return _Stage(sh, sw, offsets, like.new_empty(0))
    pat = _pattern(sh, sw, like)
    # Only square windows can be transposed; a stretched one keeps its orientation.
    return _Stage(sh, sw, offsets, torch.stack([pat.flatten(), (pat.t() if sh == sw else pat).flatten()]))


def _window_index(n: int, h: int, w: int, stage: _Stage, gen: torch.Generator) -> Tensor:
    """Flat (H*W) indices of one uniformly placed window per example, shaped N x 1 x sh*sw."""
    device = stage.offsets.device
    top = torch.randint(0, h - stage.sh + 1, (n, 1, 1), generator=gen, device=device)
    left = torch.randint(0, w - stage.sw + 1, (n, 1, 1), generator=gen, device=device)
    return torch.add(left, top, alpha=w) + stage.offsets


def _signs(shape: tuple[int, ...], like: Tensor, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1


# --- Linf ------------------------------------------------------------------------------------------


def _linf_init(x: Tensor, eps: Tensor, gen: torch.Generator) -> Tensor:
    """Vertical stripes: one random sign per example, channel and column, of size eps."""
    n, c, _, w = x.shape
    return x + eps.view(-1, 1, 1, 1) * _signs((n, c, 1, w), x, gen)


def _lo_hi(x: Tensor, eps: Tensor, threat: ThreatModel) -> Tensor:
    """The two values a Linf window can give each cell, x - eps and x + eps projected: N x C x 2 x H*W."""
    e = eps.view(-1, 1, 1, 1)
    return torch.stack([threat.project(x - e, x), threat.project(x + e, x)], 2).flatten(3)


def _linf_step(
    lo_hi: Tensor, best: Tensor, stage: _Stage, tol: float, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Set one random window of each channel to x +- eps (one sign per channel), starting from ``best``.

    Returns the candidate, the window's flat indices (N x C x sh*sw), and its new and its current values.
    """
    n, c, h, w = best.shape
    win = _window_index(n, h, w, stage, gen)
    k = win.shape[2]
    flat = best.view(n, c, h * w)
    old = flat.gather(2, win.expand(n, c, k))
    both = lo_hi.gather(3, win.view(n, 1, 1, k).expand(n, c, 2, k))
    # A candidate equal to the best (common on saturated pixels) wastes a query, so signs that would leave
    # the window as it is are redrawn, up to _REDRAWS times. All draws are made at once and the first
    # that changes the window is kept per example: the same distribution as redrawing in a loop, without
    # a loop of small ops and host syncs.
    same_as = (both - old.unsqueeze(2)).abs().amax(3) <= tol  # N x C x 2: sign index 0 is -, 1 is +
    draws = torch.randint(0, 2, (_REDRAWS + 1, n, c, 1), generator=gen, device=best.device)
    same = same_as.expand(_REDRAWS + 1, n, c, 2).gather(3, draws).all(2, keepdim=True)  # R x N x 1 x 1
    first = (~same).to(torch.uint8).argmax(0, keepdim=True).expand(1, n, c, 1)
    signs = torch.where(same.all(0), 1 - draws[-1], draws.gather(0, first).squeeze(0))
    new = both.gather(2, signs.unsqueeze(3).expand(n, c, 1, k)).squeeze(2)
    win = win.expand(n, c, k)
    return flat.scatter(2, win, new).view_as(best), win, new, old


# --- L2 --------------------------------------------------------------------------------------------


def _rings(rows: int, cols: int, like: Tensor) -> Tensor:
    """Concentric rectangles around the centre with weights 1/k^2 summed from the outside in, unit norm
    (the paper's smooth bump): a cell at Chebyshev distance d from the centre gets sum_{k>d} 1/k^2."""
    if rows == 0 or cols == 0:
        return like.new_zeros(rows, cols)
    ci, cj = rows // 2, cols // 2
    i = torch.arange(rows, device=like.device).view(-1, 1)
    j = torch.arange(cols, device=like.device).view(1, -1)
    dist = torch.maximum((i - ci).abs(), (j - cj).abs())
    k = torch.arange(1, max(ci, cj) + 2, device=like.device, dtype=like.dtype)
    tail = (1 / k**2).flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k > d} 1/k^2
    bump = tail[dist]
    return bump / bump.norm()


def _pattern(rows: int, cols: int, like: Tensor) -> Tensor:
    """The paper's window update: a positive bump over the top half, a negative one below, unit norm."""
    top = rows // 2
    pat = torch.cat([_rings(top, cols, like), -_rings(rows - top, cols, like)], 0)
    return pat / pat.norm().clamp_min(torch.finfo(like.dtype).tiny)


def _oriented(rows: int, cols: int, flips: Tensor, like: Tensor) -> Tensor:
    """The window pattern, transposed where ``flips`` (only square windows can be), flattened per example."""
    pat = _pattern(rows, cols, like)
    flat = pat.flatten().expand(len(flips), -1)
    if rows != cols:
        return flat
    return torch.where(flips.view(-1, 1), pat.t().flatten().expand_as(flat), flat)


def _unit(v: Tensor, dims: tuple[int, ...]) -> Tensor:
    return v / torch.linalg.vector_norm(v, dim=dims, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _l2_init(x: Tensor, eps: Tensor, gen: torch.Generator) -> Tensor:
    """A centred grid of window patterns (tiles of about a fifth of the image side), each with a random
    sign per channel and a random orientation, scaled to L2 norm eps."""
    n, c, h, w = x.shape
    th, tw = max(h // 5, 1), max(w // 5, 1)
    nh, nw = h // th, w // tw
    flips = torch.rand((n * nh * nw,), generator=gen, device=x.device) < 0.5
    tiles = _oriented(th, tw, flips, x).view(n, 1, nh, nw, th, tw)
    tiles = tiles * _signs((n, c, nh, nw), x, gen).view(n, c, nh, nw, 1, 1)
    grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * th, nw * tw)
    delta = torch.zeros_like(x)
    top, left = (h - nh * th) // 2, (w - nw * tw) // 2
    delta[:, :, top : top + nh * th, left : left + nw * tw] = grid
    return x + _unit(delta, (1, 2, 3)) * eps.view(-1, 1, 1, 1)


def _l2_step(x: Tensor, best: Tensor, eps: Tensor, stage: _Stage, threat: ThreatModel, gen: torch.Generator) -> Tensor:
    """Move the perturbation's mass from a second random window into the first, add a fresh pattern
    there with the unused budget, rescale the whole perturbation to norm eps, and clip to the bounds."""
    n, c, h, w = x.shape
    delta = (best - x).view(n, c, h * w)  # this step's own tensor: edited in place below
    win = _window_index(n, h, w, stage, gen)
    win2 = _window_index(n, h, w, stage, gen)
    k = win.shape[2]
    flips = torch.rand((n,), generator=gen, device=x.device) < 0.5
    signs = _signs((n, c, 1), x, gen)
    win, win2 = win.expand(n, c, k), win2.expand(n, c, k)
    norm2 = torch.linalg.vector_norm(delta, dim=(1, 2)).square()
    old = delta.gather(2, win)
    # Empty both windows, summing the mass they held from the windows alone (a cell in both counted once).
    held2 = old.square().sum((1, 2)) + delta.scatter_(2, win, 0.0).gather(2, win2).square().sum((1, 2))
    delta.scatter_(2, win2, 0.0)
    pattern = torch.where(flips.view(-1, 1), stage.patterns[1], stage.patterns[0]).unsqueeze(1)
    new = pattern * signs + _unit(old, (2,))
    # Each channel's window gets what the two windows held plus an equal share of the unused budget.
    eps2 = eps.square()
    size2 = (eps2 - norm2).clamp_min(0) / c + held2
    delta.scatter_(2, win, _unit(new, (2,)) * size2.sqrt().view(-1, 1, 1))
    # The new norm follows from the pieces (the mass outside the windows, c windows of norm size), which
    # saves a pass over the image; only the bounds can then be left (run_attack's finalize projects anyway).
    scale = (eps2 / ((norm2 - held2).clamp_min(0) + c * size2).clamp_min(torch.finfo(x.dtype).tiny)).sqrt()
    return torch.addcmul(x, delta.view_as(x), scale.view(-1, 1, 1, 1)).clamp_(*threat.bounds)
