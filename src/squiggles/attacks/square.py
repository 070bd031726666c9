"""Square Attack (Andriushchenko et al. 2020, arXiv 1912.00049): a score-based black-box random search.

Each iteration changes the current best perturbation on one random square window (side set by a schedule
that shrinks it over time) and keeps the change only for the examples whose loss improved (or that are
broken). It uses forward passes only and stops spending queries on an example as soon as it is broken.

Queries: the stripes (Linf) or squares (L2) initialisation is the first of the ``queries`` forward passes
Square itself makes per example, as in the paper's code. ``result.queries`` also counts the clean and the
verifying forward passes that `run_attack` makes for every attack, so it is at most ``queries + 2``.

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
# they change it); after these, the signs are flipped, which always changes it when eps > 0.
_REDRAWS = 4


def square(
    model: Callable[[Tensor], Tensor], x: Tensor, y_or_goal: GoalLike, threat: ThreatModel, *,
    queries: int = 5000, p_init: float = 0.8, loss: str | Loss = "margin", seed: Seed = 0,
) -> AttackResult:
    """Square Attack in Linf or L2 with at most ``queries`` forward passes per example (plus the clean and
    the verifying one), window fraction ``p_init`` at the start, maximising ``loss``.

    ``loss`` is any `squiggles.losses` loss (larger = closer to the goal). The default margin is
    best-other minus label logit, or, with a `Targeted` goal, target minus best-other logit; ``"ce"``
    gives the paper's cross-entropy (minus the target's for a targeted goal).

    Inputs N x C x H x W are images; N x H x W is read as one-channel images, and any other shape
    (tabular N x d included) as a one-row image N x 1 x 1 x D, so windows become runs of adjacent
    features. The result has the input's shape.
    """
    if not isinstance(threat, Linf | L2):
        raise SquigglesError(f"square supports the Linf and L2 threat models, got {type(threat).__name__}; "
                             "use pgd for L1")
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise SquigglesError(f"queries must be an integer >= 1, got {queries!r}")
    if not 0 < p_init <= 1:
        raise SquigglesError(f"p_init (the fraction of the image the first windows cover) must be in (0, 1], "
                             f"got {p_init}")
    loss_fn = get_loss(loss)
    linf = isinstance(threat, Linf)

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: ThreatModel, gen: torch.Generator) -> Tensor:
        img = _as_image(x)
        shape = x.shape[1:]
        eps = threat.eps_like(img).flatten()
        best = img.clone()
        best_loss = torch.full((len(x),), -torch.inf, dtype=x.dtype, device=x.device)
        done = eps <= 0  # nothing can move inside a zero budget, so those points spend no queries

        def evaluate(idx: Tensor, cand: Tensor, accept_all: bool) -> None:
            logits = oracle.logits(cand.reshape(len(idx), *shape), idx)
            g = goal.subset(idx)
            values, success = loss_fn(logits, g.labels, g.targets), g.success(logits)
            take = torch.ones_like(success) if accept_all else (values > best_loss[idx]) | success
            where = idx[take]
            best[where] = cand[take]
            best_loss[where] = values[take].to(x.dtype)
            done[where] = success[take]

        idx = (~done).nonzero().flatten()
        if len(idx) == 0:
            return x
        sub = subset_threat(threat, idx)
        init = _linf_init if linf else _l2_init
        evaluate(idx, sub.project(init(img[idx], eps[idx], gen), img[idx]), accept_all=True)
        step = _linf_step if linf else _l2_step
        for it in range(queries - 1):
            idx = (~done).nonzero().flatten()
            if len(idx) == 0:
                break
            sub = subset_threat(threat, idx)
            cand = step(img[idx], best[idx], eps[idx], _p_at(it, queries, p_init), sub, gen)
            evaluate(idx, sub.project(cand, img[idx]), accept_all=False)
        return best.reshape(x.shape)

    config = {"queries": queries, "p_init": p_init,
              "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")}
    return run_attack("square", core, model, x, y_or_goal, threat, seed, config)


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


def _window_index(n: int, h: int, w: int, sh: int, sw: int, c: int, gen: torch.Generator,
                  device: torch.device) -> Tensor:
    """Flat (H*W) indices of one uniformly placed sh x sw window per example, shaped N x C x sh*sw."""
    top = torch.randint(0, h - sh + 1, (n, 1, 1), generator=gen, device=device)
    left = torch.randint(0, w - sw + 1, (n, 1, 1), generator=gen, device=device)
    rows = top + torch.arange(sh, device=device).view(1, -1, 1)
    cols = left + torch.arange(sw, device=device).view(1, 1, -1)
    return (rows * w + cols).view(n, 1, sh * sw).expand(n, c, sh * sw)


def _signs(shape: tuple[int, ...], like: Tensor, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1


# --- Linf ------------------------------------------------------------------------------------------


def _linf_init(x: Tensor, eps: Tensor, gen: torch.Generator) -> Tensor:
    """Vertical stripes: one random sign per example, channel and column, of size eps."""
    n, c, _, w = x.shape
    return x + eps.view(-1, 1, 1, 1) * _signs((n, c, 1, w), x, gen)


def _linf_step(x: Tensor, best: Tensor, eps: Tensor, p: float, threat: ThreatModel,
               gen: torch.Generator) -> Tensor:
    """Set one random window of each channel to x +- eps (one sign per channel), starting from ``best``."""
    n, c, h, w = x.shape
    sh, sw = _window(p, h, w)
    idx = _window_index(n, h, w, sh, sw, c, gen, x.device)
    x_win = x.flatten(2).gather(2, idx)
    best_win = best.flatten(2).gather(2, idx)
    step = eps.view(-1, 1, 1)
    lo, hi = threat.bounds
    tol = 16 * torch.finfo(x.dtype).eps * max(1.0, abs(lo), abs(hi))
    signs = _signs((n, c, 1), x, gen)
    # A window that would stay as it is (common on saturated pixels) wastes a query: redraw its signs.
    for r in range(_REDRAWS + 1):
        new_win = threat.clip(x_win + step * signs)
        same = (new_win - best_win).abs().flatten(1).amax(1) <= tol
        if not same.any():
            break
        fresh = -signs if r == _REDRAWS else _signs((n, c, 1), x, gen)
        signs = torch.where(same.view(-1, 1, 1), fresh, signs)
    new_win = threat.clip(x_win + step * signs)
    return best.flatten(2).scatter(2, idx, new_win).view_as(x)


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
    delta[:, :, top:top + nh * th, left:left + nw * tw] = grid
    return x + _unit(delta, (1, 2, 3)) * eps.view(-1, 1, 1, 1)


def _l2_step(x: Tensor, best: Tensor, eps: Tensor, p: float, threat: ThreatModel,
             gen: torch.Generator) -> Tensor:
    """Move the perturbation's mass from a second random window into the first, add a fresh pattern
    there with the unused budget, and rescale the whole perturbation to norm eps."""
    n, c, h, w = x.shape
    sh, sw = _window(p, h, w, min_side=3, odd=True)
    delta = (best - x).flatten(2)
    win = _window_index(n, h, w, sh, sw, c, gen, x.device)
    win2 = _window_index(n, h, w, sh, sw, c, gen, x.device)
    both = torch.zeros_like(delta[:, :1]).scatter(2, win[:, :1], 1.0).scatter(2, win2[:, :1], 1.0)
    norm_all = torch.linalg.vector_norm(delta, dim=(1, 2), keepdim=True)
    norm_both = torch.linalg.vector_norm(delta * both, dim=(1, 2), keepdim=True)
    eps_ = eps.view(-1, 1, 1)
    flips = torch.rand((n,), generator=gen, device=x.device) < 0.5
    new = _oriented(sh, sw, flips, x).unsqueeze(1) * _signs((n, c, 1), x, gen)
    new = new + _unit(delta.gather(2, win), (2,))
    # Each channel's window gets what the two windows held plus an equal share of the unused budget.
    size = ((eps_**2 - norm_all**2).clamp_min(0) / c + norm_both**2).sqrt()
    delta = delta.scatter(2, win2, 0.0).scatter(2, win, _unit(new, (2,)) * size)
    return x + (_unit(delta, (1, 2)) * eps_).view_as(x)
