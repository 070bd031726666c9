"""Spatial attacks: the worst rotation and translation of each image (Engstrom et al. 2019, arXiv 1712.02779).

Three searches over a `Spatial` threat's parameters, as in the paper:

* `spatial_grid`: every transform of a grid (31 rotations x 5 x 5 translations = 775 by default), run as large
  batches of transformed copies; each example stops at its first transform that meets the goal.
* `spatial_random`: worst of ``k`` random transforms per example (k = 10, the paper's training adversary).
* `spatial_fo`: a first-order attack, projected signed-gradient ascent on the parameters themselves (the
  transform is differentiable through ``grid_sample``), from a random start, keeping its best iterate.

Each returns an `AttackResult` whose ``x_adv`` is the transformed image, ``params`` the transform (N x 3:
degrees, pixels right, pixels down) and ``norms`` the largest parameter as a fraction of the full box
(at most the threat's ``eps``).

Example:
    >>> import torch
    >>> from squiggles.attacks.spatial import spatial_grid
    >>> from squiggles.transforms import Spatial
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> res = spatial_grid(model, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]), Spatial(30, 1))
    >>> res.params.shape, bool((res.norms <= 1).all())
    (torch.Size([4, 3]), True)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from squiggles.attacks._core import (
    Oracle,
    Seed,
    attack_mode,
    check_inputs,
    check_logits,
    make_generator,
    make_result,
)
from squiggles.attacks._decision import call_rows
from squiggles.errors import SquigglesError
from squiggles.goals import GoalLike, ResolvedGoal, as_goal, resolve_goal
from squiggles.losses import margin
from squiggles.results import AttackResult
from squiggles.runtime import fast_layout
from squiggles.transforms import GRID_ROTATIONS, GRID_TRANSLATIONS, Spatial, check_images

# A spatial core returns the chosen parameters per example (N x 3).
SpatialCore = Callable[[Oracle, Tensor, ResolvedGoal, Spatial, torch.Generator], Tensor]


def spatial_grid(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: Spatial,
    *,
    rotations: int = GRID_ROTATIONS,
    translations: int = GRID_TRANSLATIONS,
    early_stop: bool = True,
    seed: Seed = 0,
    max_batch: int | None = None,
) -> AttackResult:
    """Exhaustive search over ``threat.grid(rotations, translations)``; per example the first transform that
    meets the goal (largest transforms first), else the one with the highest margin loss.

    ``early_stop=False`` evaluates the whole grid for every example (the transform then is the one of highest
    margin among all). Each model call holds as many transforms of every active example as fit in ``max_batch``
    rows (default 128 on a CPU, 8,192 on a GPU), and at least one."""

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: Spatial, gen: torch.Generator) -> Tensor:
        grid = _largest_first(threat.grid(rotations, translations, like=x), threat)
        best = _Best(x, threat)
        rows = max_batch or call_rows(x.device)
        t = 0
        while t < len(grid):
            act = (~best.done).nonzero().flatten() if early_stop else torch.arange(len(x), device=x.device)
            if len(act) == 0:
                break
            k = max(1, min(len(grid) - t, rows // len(act)))  # transforms per call
            params = grid[t : t + k].repeat_interleave(len(act), 0)  # transform-major: k blocks of len(act)
            idx = act.repeat(k)
            best.offer(oracle, x, goal, idx, params)
            t += k
        return best.params

    _check_grid(rotations, translations)
    config = {"rotations": rotations, "translations": translations, "transforms": rotations * translations**2,
              "early_stop": early_stop}
    return run_spatial_attack("spatial-grid", core, model, x, y_or_goal, threat, seed, config)


def spatial_random(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: Spatial,
    *,
    k: int = 10,
    draw: str = "uniform",
    seed: Seed = 0,
    max_batch: int | None = None,
) -> AttackResult:
    """Worst of ``k`` transforms drawn per example (Engstrom et al.'s worst-of-10): uniformly from the box
    (``draw="uniform"``), or from the points of the evaluation's 31 x 5 x 5 grid (``"grid"``), which puts
    two fifths of the shifts on each axis at the box's edges, where the grid finds its errors."""

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: Spatial, gen: torch.Generator) -> Tensor:
        best = _Best(x, threat)
        draws = torch.cat([_draw(threat, x, gen, draw) for _ in range(k)])  # draw-major: k blocks of N
        idx = torch.arange(len(x), device=x.device).repeat(k)
        rows = max_batch or call_rows(x.device)
        for s in range(0, len(draws), rows):
            best.offer(oracle, x, goal, idx[s : s + rows], draws[s : s + rows])
        return best.params

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SquigglesError(f"k (random transforms per example) must be an integer >= 1, got {k!r}")
    if draw not in DRAWS:
        raise SquigglesError(f"draw must be one of {', '.join(DRAWS)}, got {draw!r}")
    return run_spatial_attack("spatial-random", core, model, x, y_or_goal, threat, seed, {"k": k, "draw": draw})


DRAWS = ("uniform", "grid")


def _draw(threat: Spatial, x: Tensor, gen: torch.Generator, draw: str) -> Tensor:
    if draw == "uniform":
        return threat.sample(x, gen)
    grid = threat.grid(like=x)
    return grid[torch.randint(0, len(grid), (len(x),), generator=gen, device=x.device)]


def spatial_fo(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: Spatial,
    *,
    steps: int = 50,
    step_size: float = 0.1,
    restarts: int = 1,
    seed: Seed = 0,
) -> AttackResult:
    """First-order attack on the transform: projected signed-gradient ascent of the margin loss in parameter
    space (``step_size`` is a fraction of each parameter's bound), from a random start per restart, keeping
    each example's best iterate and stopping an example once it meets the goal."""

    def core(oracle: Oracle, x: Tensor, goal: ResolvedGoal, threat: Spatial, gen: torch.Generator) -> Tensor:
        best = _Best(x, threat)
        for _ in range(restarts):
            act = (~best.done).nonzero().flatten()
            if len(act) == 0:
                break
            params = threat.sample(x[act], gen)
            for _ in range(steps + 1):
                values, grad = _loss_grad(oracle, x[act], goal.subset(act), act, params, threat)
                best.keep(act, params, values)
                live = ~best.done[act]
                if not live.any():
                    break
                act, params, grad = act[live], params[live], grad[live]
                params = threat.project(params.detach() + threat.step(grad, step_size))
        return best.params

    if steps < 0 or restarts < 1 or not step_size > 0:
        raise SquigglesError(f"steps must be >= 0, restarts >= 1 and step_size > 0, got steps={steps}, "
                             f"restarts={restarts}, step_size={step_size}")
    config = {"steps": steps, "step_size": step_size, "restarts": restarts}
    return run_spatial_attack("spatial-fo", core, model, x, y_or_goal, threat, seed, config)


def run_spatial_attack(
    name: str,
    core: SpatialCore,
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: Spatial,
    seed: Seed,
    config: dict[str, Any],
) -> AttackResult:
    """Validate, run ``core`` for the parameters, apply them, verify with a final forward pass."""
    start = time.perf_counter()
    if not isinstance(threat, Spatial):
        raise SquigglesError(f"{name} needs a squiggles.transforms.Spatial threat, got {type(threat).__name__}; "
                             "e.g. Spatial(max_rotation=30, max_translation=3)")
    x = check_inputs(x, threat)  # type: ignore[arg-type]  # reads only .bounds
    check_images(x)
    generator, seed_record = make_generator(seed, x.device)
    with attack_mode(model), fast_layout(model, x):
        oracle = Oracle(model, len(x), x.device)
        clean_logits = oracle.logits(x)
        check_logits(clean_logits, len(x))
        goal = resolve_goal(as_goal(y_or_goal), clean_logits)
        params = core(oracle, x, goal, threat, generator) if len(x) else threat.identity(x)
        params = threat.project(params.detach())
        x_adv = threat.apply(x, params).clamp(*threat.bounds)
        logits = oracle.logits(x_adv)
    return make_result(name, x_adv, logits, clean_logits, goal, oracle, parameter_size(params, threat),
                       threat.describe(), seed_record, config, start, params=params)


def parameter_size(params: Tensor, threat: Spatial) -> Tensor:
    """The largest parameter as a fraction of the threat's full box (`Spatial.size`)."""
    return threat.size(params)


class _Best:
    """Per example, the parameters of the highest margin loss seen so far, and whether they meet the goal."""

    def __init__(self, x: Tensor, threat: Spatial) -> None:
        self.threat = threat
        self.params = threat.identity(x)
        self.value = torch.full((len(x),), -torch.inf, dtype=x.dtype, device=x.device)
        self.done = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def offer(self, oracle: Oracle, x: Tensor, goal: ResolvedGoal, idx: Tensor, params: Tensor) -> None:
        """Evaluate ``params`` on ``x[idx]`` (rows may repeat an example) and keep each example's best."""
        with torch.no_grad():
            logits = oracle.logits(self.threat.apply(x[idx], params).clamp(*self.threat.bounds), idx)
        self.keep(idx, params, margin(logits, goal.labels[idx], None if goal.targets is None else goal.targets[idx]))

    def keep(self, idx: Tensor, params: Tensor, values: Tensor) -> None:
        # Successful rows first (margin > 0 means the goal is met), then the highest value per example.
        order = torch.argsort(values, descending=True, stable=True)
        idx, params, values = idx[order], params[order], values[order]
        first = _first_occurrence(idx)
        idx, params, values = idx[first], params[first], values[first]
        better = values > self.value[idx]
        idx, params, values = idx[better], params[better], values[better]
        self.params[idx] = params.detach().to(self.params.dtype)
        self.value[idx] = values.detach()
        self.done[idx] = values > 0


def _loss_grad(
    oracle: Oracle, x: Tensor, goal: ResolvedGoal, idx: Tensor, params: Tensor, threat: Spatial
) -> tuple[Tensor, Tensor]:
    """Margin loss at ``params`` and its gradient with respect to the parameters (not the image)."""
    p = params.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = oracle.model(threat.apply(x, p).clamp(*threat.bounds))
        values = margin(logits, goal.labels, goal.targets)
        (grad,) = torch.autograd.grad(values.sum(), p)
    oracle.count(len(x), idx, backward=True)
    return values.detach(), grad.detach()


def _first_occurrence(idx: Tensor) -> Tensor:
    """Positions of the first row of each distinct value of ``idx`` (in the given order)."""
    uniq, inverse = torch.unique(idx, return_inverse=True)
    pos = torch.arange(len(idx), device=idx.device)
    first = torch.full((len(uniq),), len(idx), dtype=torch.long, device=idx.device)
    return first.scatter_reduce(0, inverse, pos, reduce="amin")


def _largest_first(grid: Tensor, threat: Spatial) -> Tensor:
    """The grid ordered by decreasing parameter size, so that early stopping reaches the strong transforms
    (which break the most points) first; the set of transforms is unchanged."""
    order = torch.argsort(parameter_size(grid, threat), descending=True, stable=True)
    return grid[order]


def _check_grid(rotations: int, translations: int) -> None:
    for what, v in (("rotations", rotations), ("translations", translations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SquigglesError(f"{what} (grid points) must be an integer >= 1, got {v!r}")
