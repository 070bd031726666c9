"""Patch attacks: a universal targeted patch (Brown et al. 2017) and per-image stickers (Eykholt et al. 2018).

* `universal_patch`: one patch, trained over many images with expectation over random placement (and small
  rotations and rescaling), so that any image wearing it reads as the target class (Brown et al., arXiv
  1712.09665). `patch_success` measures it on held-out images at random locations.
* `stickers`: per image, the content of k small rectangles optimised by projected signed-gradient steps so that
  the image is misclassified or reaches a target (Eykholt et al., arXiv 1707.08945); the rectangles are given,
  or placed where the loss's gradient is largest (saliency), greedily and without overlap.

Example:
    >>> import torch
    >>> from squiggles.attacks.patch import stickers
    >>> from squiggles.patches import Stickers
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3))
    >>> x = torch.rand(4, 1, 12, 12)
    >>> res = stickers(model, x, None, Stickers(2, 3, 3), steps=5)
    >>> bool(((res.x_adv != x).flatten(1).sum(1) <= 2 * 3 * 3).all())   # only the two 3 x 3 stickers change
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from squiggles.attacks._core import (
    Oracle,
    Seed,
    attack_mode,
    check_inputs,
    check_logits,
    make_generator,
    make_result,
)
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal, as_goal, resolve_goal
from squiggles.losses import margin
from squiggles.patches import Patch, PatchArea, Stickers, transformed
from squiggles.results import AttackResult
from squiggles.runtime import fast_layout


# --- the universal patch ---------------------------------------------------------------------------------
@dataclass
class UniversalPatch:
    """A trained patch: its content (C x h x w), the target, the settings and the training curve."""

    content: Tensor
    target: int
    patch: Patch
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # per checkpoint: step, training success
    wall_time_s: float = 0.0


def universal_patch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: int,
    patch: Patch,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 0.05,
    max_rotation: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    seed: Seed = 0,
    log_every: int = 100,
    progress: bool = True,
) -> UniversalPatch:
    """Train one patch that sends images of ``x`` (those not labelled ``target``) to ``target``: Adam on the
    patch content, projected onto the bounds, the targeted cross-entropy averaged over batches of images, each
    wearing the patch at a random location with a random small rotation and rescaling."""
    start = time.perf_counter()
    _check_patch_options(steps, batch_size, lr, target, max_rotation, scale)
    x = check_inputs(x, patch)  # type: ignore[arg-type]  # reads only .bounds
    patch.check_fits(x)
    keep = y.to(x.device) != target
    if not keep.any():
        raise SquigglesError(f"every training image is of the target class {target}; give images of other classes")
    x = x[keep]
    gen, seed_record = make_generator(seed, x.device)
    lo, hi = patch.bounds
    content = lo + (hi - lo) * torch.rand(x.shape[1], patch.height, patch.width, generator=gen, device=x.device,
                                          dtype=x.dtype)
    content.requires_grad_(True)
    opt = torch.optim.Adam([content], lr=lr)
    goal = torch.full((batch_size,), target, dtype=torch.long, device=x.device)
    history: list[dict[str, float]] = []
    hits, seen = 0, 0
    with attack_mode(model), fast_layout(model, x):
        for step in tqdm(range(1, steps + 1), desc="universal patch", disable=not progress):
            idx = torch.randint(0, len(x), (batch_size,), generator=gen, device=x.device)
            worn = _wear(patch, x[idx], content, gen, max_rotation, scale)
            with torch.enable_grad():
                logits = model(worn)
                loss = F.cross_entropy(logits, goal)
            opt.zero_grad(set_to_none=True)
            (grad,) = torch.autograd.grad(loss, content)
            content.grad = grad
            opt.step()
            with torch.no_grad():
                content.clamp_(lo, hi)
            hits += int((logits.argmax(1) == target).sum())
            seen += batch_size
            if step % log_every == 0 or step == steps:
                history.append({"step": step, "train_success": hits / seen})
                hits, seen = 0, 0
    config = {"steps": steps, "batch_size": batch_size, "lr": lr, "max_rotation": max_rotation,
              "scale": list(scale), "seed": seed_record, "area": patch.area(tuple(x.shape[-2:]))}
    return UniversalPatch(content.detach(), target, patch, config, history, time.perf_counter() - start)


def patch_success(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, trained: UniversalPatch, *, placements: int = 1,
    seed: Seed = 0, batch_size: int = 500, keep_examples: int = 16,
) -> dict[str, Any]:
    """The share of images of ``x`` not of the target class that read as the target while wearing the patch at
    a random location (``placements`` draws per image, no rotation), with the first ``keep_examples`` images
    as worn and the labels the model gave them."""
    gen, _ = make_generator(seed, x.device)
    xs = x[y.to(x.device) != trained.target]
    hits, shown, labels = 0, [], []
    with attack_mode(model), fast_layout(model, xs), torch.no_grad():
        for draw in range(placements):
            for i in range(0, len(xs), batch_size):
                chunk = xs[i : i + batch_size]
                rows, cols = trained.patch.random_locations(chunk, gen)
                worn = trained.patch.apply(chunk, trained.content.to(chunk), rows, cols)
                pred = model(worn).argmax(1)
                hits += int((pred == trained.target).sum())
                if draw == 0 and i == 0:
                    shown, labels = worn[:keep_examples], pred[:keep_examples]
    total = placements * len(xs)
    return {"success_rate": hits / total if total else float("nan"), "images": total, "target": trained.target,
            "examples": shown, "example_pred": labels}


def _wear(patch: Patch, x: Tensor, content: Tensor, gen: torch.Generator, max_rotation: float,
          scale: tuple[float, float]) -> Tensor:
    copies, masks = transformed(content, len(x), gen, max_rotation, scale)
    rows, cols = patch.random_locations(x, gen)
    return patch.apply(x, copies, rows, cols, masks)


def _check_patch_options(steps: int, batch_size: int, lr: float, target: int, max_rotation: float,
                         scale: tuple[float, float]) -> None:
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise SquigglesError(f"steps and batch_size must be >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise SquigglesError(f"the patch's target must be a class index >= 0, got {target!r}")
    if not 0 <= max_rotation <= 180 or not 0 < scale[0] <= scale[1]:
        raise SquigglesError(f"max_rotation must be in [0, 180] and scale a range 0 < low <= high, got "
                             f"{max_rotation} and {scale}")


# --- stickers and the per-image patch ---------------------------------------------------------------------
def stickers(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: Stickers,
    *,
    rows: Tensor | None = None,
    cols: Tensor | None = None,
    steps: int = 100,
    step_size: float = 0.1,
    restarts: int = 1,
    placement: str = "saliency",
    seed: Seed = 0,
) -> AttackResult:
    """Per image, the content of ``threat.count`` rectangles by signed-gradient ascent of the margin loss inside
    the mask (any value in the bounds there; nothing else changes), from random content, keeping the best
    iterate and stopping an image once it meets the goal.

    Placement: ``rows``/``cols`` (N x count top-left corners) when given; else ``placement="saliency"`` puts the
    first try where the gradient of the loss at the clean image is largest, and ``"random"`` draws it. Each of the
    ``restarts - 1`` further tries attacks the images not yet broken at freshly drawn random positions.
    """
    start = time.perf_counter()
    if not isinstance(threat, Stickers):
        raise SquigglesError(f"stickers needs a squiggles.patches.Stickers threat, got {type(threat).__name__}")
    _check_sticker_options(steps, step_size, restarts, placement)
    x = check_inputs(x, threat)  # type: ignore[arg-type]
    Patch(threat.height, threat.width).check_fits(x)
    gen, seed_record = make_generator(seed, x.device)
    with attack_mode(model), fast_layout(model, x):
        oracle = Oracle(model, len(x), x.device)
        clean_logits = oracle.logits(x)
        check_logits(clean_logits, len(x))
        goal = resolve_goal(as_goal(y_or_goal), clean_logits)
        given = None if rows is None or cols is None else (rows.to(x.device), cols.to(x.device))
        x_adv, corners = _tries(oracle, x, goal, threat, given, placement, restarts, steps, step_size, gen)
        logits = oracle.logits(x_adv)
    config = {"steps": steps, "step_size": step_size, "restarts": restarts,
              "placement": "given" if given else placement}
    area = threat.mask(x, corners[:, : threat.count], corners[:, threat.count :]).flatten(1).mean(1)
    return make_result("stickers", x_adv, logits, clean_logits, goal, oracle, area, threat.describe(),
                       seed_record, config, start, params=corners.to(x.dtype))


def patch_attack(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: PatchArea,
    *,
    steps: int = 100,
    step_size: float = 0.1,
    restarts: int = 1,
    placement: str = "saliency",
    seed: Seed = 0,
) -> AttackResult:
    """Per image, one square patch covering at most ``threat.eps`` of the image, placed by saliency or at random
    (``restarts`` tries, the later ones at random positions) with its content optimised as `stickers` does:
    the worst case a patch of that area can do to each image (the threat of ``evaluate --threat patch``).

    Example:
        >>> import torch
        >>> from squiggles.patches import PatchArea
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 3))
        >>> x = torch.rand(4, 1, 10, 10)
        >>> res = patch_attack(model, x, None, PatchArea(0.09), steps=5)   # a 3 x 3 patch: 9% of 10 x 10
        >>> bool(((res.x_adv != x).flatten(1).sum(1) <= 9).all()), tuple(res.params.shape)
        (True, (4, 2))
    """
    if not isinstance(threat, PatchArea):
        raise SquigglesError(f"patch needs a squiggles.patches.PatchArea threat, got {type(threat).__name__}")
    _check_sticker_options(steps, step_size, restarts, placement)
    x = check_inputs(x, threat)  # type: ignore[arg-type]
    patch = threat.patch_for(x)
    if patch is None:
        return _unchanged(model, x, y_or_goal, threat, seed)
    res = stickers(model, x, y_or_goal, Stickers(1, patch.height, patch.width, threat.bounds), steps=steps,
                   step_size=step_size, restarts=restarts, placement=placement, seed=seed)
    res.attack, res.threat = "patch", threat.describe()
    return res


def _unchanged(model: Callable[[Tensor], Tensor], x: Tensor, y_or_goal: GoalLike, threat: PatchArea,
               seed: Seed) -> AttackResult:
    """A budget under one pixel changes nothing: the clean images are the answer."""
    start = time.perf_counter()
    _, seed_record = make_generator(seed, x.device)
    with attack_mode(model):
        oracle = Oracle(model, len(x), x.device)
        logits = oracle.logits(x)
    check_logits(logits, len(x))
    goal = resolve_goal(as_goal(y_or_goal), logits)
    zeros = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    return make_result("patch", x.clone(), logits, logits, goal, oracle, zeros, threat.describe(), seed_record,
                       {"steps": 0}, start, params=torch.zeros(len(x), 2, dtype=x.dtype, device=x.device))


def _check_sticker_options(steps: int, step_size: float, restarts: int, placement: str) -> None:
    if steps < 0 or not step_size > 0 or restarts < 1:
        raise SquigglesError(f"steps must be >= 0, step_size > 0 and restarts >= 1, got {steps}, {step_size} and "
                             f"{restarts}")
    if placement not in ("saliency", "random"):
        raise SquigglesError(f"placement must be 'saliency' or 'random', got {placement!r}")


def _tries(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: Stickers, given: tuple[Tensor, Tensor] | None,
           placement: str, restarts: int, steps: int, step_size: float,
           gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The best image of every try and the N x (2 count) corners (rows, then columns) it used; each try runs
    only on the images no earlier try broke."""
    x_adv = x.clone()
    corners = torch.zeros(len(x), 2 * threat.count, dtype=torch.long, device=x.device)
    todo = torch.arange(len(x), device=x.device)
    for attempt in range(restarts):
        if len(todo) == 0:
            break
        xs, g = x[todo], goal.subset(todo)
        if attempt == 0 and given is not None:
            rows, cols = given[0][todo], given[1][todo]
        elif attempt == 0 and placement == "saliency":
            rows, cols = salient_corners(oracle, xs, g, threat, todo)
        else:
            rows, cols = random_corners(xs, threat, gen)
        mask = threat.mask(xs, rows, cols)
        best, value = _sticker_search(oracle, xs, g, mask, steps, step_size, gen, threat.bounds, todo)
        # the first try's answer stands unless a later one breaks the image
        take = (value > 0) | torch.tensor(attempt == 0, device=x.device)
        x_adv[todo[take]] = best[take]
        corners[todo[take]] = torch.cat([rows, cols], 1)[take]
        todo = todo[value <= 0]
    return x_adv, corners


def random_corners(x: Tensor, threat: Stickers, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``threat.count`` top-left corners per image, uniform over the positions where a rectangle fits."""
    n, _, h, w = x.shape
    rows = torch.randint(0, h - threat.height + 1, (n, threat.count), generator=gen, device=x.device)
    cols = torch.randint(0, w - threat.width + 1, (n, threat.count), generator=gen, device=x.device)
    return rows, cols


def _sticker_search(oracle: Oracle, x: Tensor, goal: ResolvedGoal, mask: Tensor, steps: int, step_size: float,
                    gen: torch.Generator, bounds: tuple[float, float], idx: Tensor) -> tuple[Tensor, Tensor]:
    """The best iterate per image and its margin (> 0: the goal is met)."""
    lo, hi = bounds
    noise = lo + (hi - lo) * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    z = x * (1 - mask) + noise * mask
    best, best_value = x.clone(), torch.full((len(x),), -torch.inf, dtype=x.dtype, device=x.device)
    act = torch.arange(len(x), device=x.device)
    for _ in range(steps + 1):
        values, grad, _ = oracle.loss_grad(z[act], margin, goal.subset(act), idx[act])
        better = values > best_value[act]
        best[act[better]], best_value[act[better]] = z[act][better], values[better]
        live = best_value[act] <= 0
        act = act[live]
        if len(act) == 0:
            break
        z[act] = (z[act] + step_size * (hi - lo) * grad[live].sign() * mask[act]).clamp(lo, hi)
    return best, best_value


def salient_corners(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: Stickers,
                    idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-left corners of ``threat.count`` non-overlapping rectangles per image where the summed absolute
    gradient of the margin loss at the clean image is largest (chosen greedily, one rectangle per round for all
    images at once)."""
    _, grad, _ = oracle.loss_grad(x, margin, goal, idx)
    sal = grad.abs().sum(1, keepdim=True)
    h, w = threat.height, threat.width
    score = F.avg_pool2d(sal, (h, w), stride=1).squeeze(1)  # N x (H-h+1) x (W-w+1): mean gradient per window
    n, gh, gw = score.shape
    rows, cols = [], []
    ii = torch.arange(gh, device=x.device).view(1, gh, 1)
    jj = torch.arange(gw, device=x.device).view(1, 1, gw)
    for _ in range(threat.count):
        pick = score.flatten(1).argmax(1)
        r, c = pick // gw, pick % gw
        rows.append(r)
        cols.append(c)
        # windows that would overlap this one may not be picked again
        near = ((ii - r.view(n, 1, 1)).abs() < h) & ((jj - c.view(n, 1, 1)).abs() < w)
        score = score.masked_fill(near, -torch.inf)
    return torch.stack(rows, 1), torch.stack(cols, 1)
