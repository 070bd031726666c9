"""What every attack shares: input checks, eval mode with frozen parameters, a counting oracle for model
calls, seeded generators, and the final verified forward pass that produces the `AttackResult`.

An attack is written as a *core* ``core(oracle, x, goal, threat, generator) -> x_adv`` and wrapped by
`run_attack`, which guarantees the contract (budget, bounds, success from a final forward pass, mode and
``.grad`` of the model untouched, global RNG untouched) for all attacks at once.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.errors import SquigglesError
from squiggles.frozen import forward_for
from squiggles.goals import GoalLike, ResolvedGoal, as_goal, resolve_goal
from squiggles.losses import Loss
from squiggles.results import AttackResult
from squiggles.runtime import eval_mode, fast_layout
from squiggles.threat import ThreatModel

Seed = int | torch.Generator | None
# A core returns x_adv, or (x_adv, logits) when it already evaluated exactly those inputs.
Core = Callable[["Oracle", Tensor, ResolvedGoal, ThreatModel, torch.Generator], Tensor | tuple[Tensor, Tensor]]


class Oracle:
    """The model as an attack sees it: logits, or loss and input-gradient, with every call counted.

    ``idx`` names which examples of the full batch a call is about, so per-example query counts stay right
    when an attack works on a subset (early stop, restarts on the remaining points).
    """

    def __init__(self, model: Callable[[Tensor], Tensor], n: int, device: torch.device) -> None:
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self.queries = torch.zeros(n, dtype=torch.long, device=device)

    def count(self, k: int, idx: Tensor | None, backward: bool) -> None:
        """Record a call of ``k`` rows about the examples ``idx`` (all when None)."""
        self.forwards += k
        self.backwards += k if backward else 0
        if idx is None:
            self.queries += 1
        else:
            self.queries[idx] += 1

    def logits(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            out = self.model(x)
        self.count(len(x), idx, backward=False)
        return out

    def loss_grad(
        self, x: Tensor, loss: Loss, goal: ResolvedGoal, idx: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-example loss, its gradient with respect to ``x`` only, and the logits (all detached)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            values = loss(logits, goal.labels, goal.targets)
            (grad,) = torch.autograd.grad(values.sum(), x)
        self.count(len(x), idx, backward=True)
        return values.detach(), grad.detach(), logits.detach()


@contextlib.contextmanager
def attack_mode(model: Any) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on parameters for the attack, both restored exactly after.

    Freezing parameters keeps their ``.grad`` untouched and skips the weight-gradient work of every backward.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    with eval_mode(model):
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)


def make_generator(seed: Seed, device: torch.device) -> tuple[torch.Generator, int | None]:
    """A generator on ``device`` and the seed to record; never the global RNG."""
    if isinstance(seed, torch.Generator):
        return seed, seed.initial_seed()
    seed = 0 if seed is None else int(seed)
    return torch.Generator(device=device).manual_seed(seed), seed


def check_inputs(x: Any, threat: ThreatModel) -> Tensor:
    """A floating tensor with a batch dimension, inside the bounds (tiny round-off is clamped, not refused)."""
    if not isinstance(x, Tensor):
        raise SquigglesError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise SquigglesError(f"inputs must be floating point, got {x.dtype}; scale integer images to the bounds first")
    if x.dim() < 2:
        raise SquigglesError(f"inputs need a batch dimension (N x ...), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise SquigglesError("inputs contain NaN or infinity")
    lo, hi = threat.bounds
    tol = 1e-5 * max(1.0, hi - lo)
    if len(x) and (x.min() < lo - tol or x.max() > hi + tol):
        raise SquigglesError(
            f"inputs range over [{x.min().item():.4g}, {x.max().item():.4g}] but the threat model's bounds are "
            f"{threat.bounds}; attack raw inputs and put normalisation inside the model (squiggles.Normalize)"
        )
    return x.detach().clamp(lo, hi)


def check_logits(logits: Tensor, n: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != n:
        raise SquigglesError(f"the model must return logits shaped (N, classes); got {tuple(logits.shape)} for N={n}")
    if n and logits.shape[1] > 1 and (logits >= 0).all() and (logits <= 1).all():
        if torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-3):
            warnings.warn(
                "the model's outputs look like probabilities (rows in [0, 1] summing to 1); attacks need "
                "logits: remove the final softmax, or gradients will vanish and robustness will look "
                "better than it is",
                stacklevel=3,
            )


def run_attack(
    name: str,
    core: Core,
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y_or_goal: GoalLike,
    threat: ThreatModel,
    seed: Seed,
    config: dict[str, Any],
    forward_rows: int = 0,
) -> AttackResult:
    """Validate, run ``core`` under the attack contract, project, verify with a final forward pass.

    ``forward_rows``: for a core that never asks for a gradient, about how many rows its forward passes take;
    a long enough search then runs on a frozen inference graph (`squiggles.frozen`).
    """
    start = time.perf_counter()
    x = check_inputs(x, threat)
    goal_in = as_goal(y_or_goal)
    generator, seed_record = make_generator(seed, x.device)
    with attack_mode(model), fast_layout(model, x):
        oracle = Oracle(forward_for(model, x, forward_rows) if forward_rows else model, len(x), x.device)
        clean_logits = oracle.logits(x)
        check_logits(clean_logits, len(x))
        goal = resolve_goal(goal_in, clean_logits)
        out = core(oracle, x, goal, threat, generator) if len(x) else x.clone()
        x_adv, logits = finalize(oracle, x, out, threat)
    return make_result(name, x_adv, logits, clean_logits, goal, oracle, threat.norm(x_adv - x), threat.describe(),
                       seed_record, config, start)


def make_result(
    name: str, x_adv: Tensor, logits: Tensor, clean_logits: Tensor, goal: ResolvedGoal, oracle: Oracle,
    norms: Tensor, threat: dict[str, Any], seed: int | None, config: dict[str, Any], start: float,
    params: Tensor | None = None,
) -> AttackResult:
    """The `AttackResult` of an attack whose ``logits`` come from a forward pass on exactly ``x_adv``."""
    return AttackResult(
        attack=name,
        x_adv=x_adv,
        success=goal.success(logits),
        pred=logits.argmax(1),
        labels=goal.labels,
        clean_correct=clean_logits.argmax(1) == goal.labels,
        norms=norms,
        queries=oracle.queries,
        forwards=oracle.forwards,
        backwards=oracle.backwards,
        threat=threat,
        seed=seed,
        config=config,
        targets=goal.targets,
        labels_source=goal.labels_source,
        wall_time_s=time.perf_counter() - start,
        params=params,
    )


def finalize(
    oracle: Oracle, x: Tensor, out: Tensor | tuple[Tensor, Tensor], threat: ThreatModel
) -> tuple[Tensor, Tensor]:
    """The returned inputs, guaranteed inside budget and bounds, and logits from a forward pass on exactly them.

    When the core hands back logits it computed on exactly ``x_adv`` (its best iterates), those are kept for
    every example already inside the budget and the bounds (up to float round-off), which saves one forward
    pass; any other example is projected and evaluated again.
    """
    x_adv, logits = out if isinstance(out, tuple) else (out, None)
    x_adv = x_adv.detach()
    if logits is None:
        x_adv = threat.project(x_adv, x)
        return x_adv, oracle.logits(x_adv)
    lo, hi = threat.bounds
    tol = 64 * torch.finfo(x.dtype).eps * max(1.0, hi - lo)
    eps = threat.eps_like(x).flatten()
    flat = x_adv.flatten(1)
    inside = (threat.norm(x_adv - x) <= eps * (1 + tol) + tol) & (flat >= lo).all(1) & (flat <= hi).all(1)
    redo = (~inside).nonzero().flatten()
    if len(redo):
        x_adv, logits = x_adv.clone(), logits.clone()
        x_adv[redo] = threat.project(x_adv[redo], x[redo])
        logits[redo] = oracle.logits(x_adv[redo], redo)
    return x_adv, logits


def subset_threat(threat: ThreatModel, idx: Tensor) -> ThreatModel:
    """The threat model for a subset of the batch (per-example budgets follow the subset)."""
    if isinstance(threat.eps, Tensor) and threat.eps.dim() > 0:
        return threat.with_eps(threat.eps.to(idx.device)[idx])
    return threat


class Best:
    """Per-example best iterate: success first, then the higher loss. Updated in place on a subset.

    It keeps the logits each iterate was evaluated with, so the attack can return them with ``x``.
    """

    def __init__(self, x: Tensor) -> None:
        self.x = x.clone()
        self.loss = torch.full((len(x),), -torch.inf, dtype=x.dtype, device=x.device)
        self.success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.logits: Tensor | None = None

    def update(
        self, idx: Tensor | None, x: Tensor, loss: Tensor, success: Tensor, logits: Tensor | None = None
    ) -> None:
        cur_s = self.success if idx is None else self.success[idx]
        cur_l = self.loss if idx is None else self.loss[idx]
        better = (success & ~cur_s) | ((success == cur_s) & (loss > cur_l))
        where = better.nonzero().flatten() if idx is None else idx[better]
        self.x[where] = x[better]
        self.loss[where] = loss[better].to(self.loss.dtype)
        self.success[where] = (cur_s | success)[better]
        if logits is not None:
            if self.logits is None:
                self.logits = torch.full(
                    (len(self.x), logits.shape[1]), torch.nan, dtype=logits.dtype, device=logits.device
                )
            self.logits[where] = logits[better]

    def result(self) -> Tensor | tuple[Tensor, Tensor]:
        """``x``, with the logits of exactly those inputs when every example has them."""
        if self.logits is None or torch.isnan(self.logits).any():
            return self.x
        return self.x, self.logits


def evaluate_last(
    oracle: Oracle,
    x_adv: Tensor,
    goal: ResolvedGoal,
    loss_goal: ResolvedGoal,
    loss_fn: Loss,
    best: Best,
    idx: Tensor | None,
) -> None:
    """Score the last iterate of a run (the one no gradient step needed), but only where it can matter.

    An example that some earlier iterate already broke has a verified adversarial input in ``best``, so the
    forward pass is spent only on the others: on a model that breaks early this pass costs almost nothing.
    """
    done = best.success if idx is None else best.success[idx]
    keep = (~done).nonzero().flatten()
    if len(keep) == 0:
        return
    if len(keep) < len(x_adv):
        x_adv, goal, loss_goal = x_adv[keep], goal.subset(keep), loss_goal.subset(keep)
        idx = keep if idx is None else idx[keep]
    logits = oracle.logits(x_adv, idx)
    values = loss_fn(logits, loss_goal.labels, loss_goal.targets)
    best.update(idx, x_adv, values, goal.success(logits), logits)


def eps_value(threat: ThreatModel, like: Tensor) -> Tensor:
    """Per-example eps (flat), on the device and dtype of ``like``."""
    return threat.eps_like(like).flatten()
