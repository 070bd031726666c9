"""What the decision-based (label-only) attacks share: a label oracle with an exact per-example query budget,
the starting point, the bisection to the boundary, the norm-versus-queries trace, and `run_decision_attack`,
which wraps a core under the same contract as every other attack.

A core is ``core(oracle, x, goal, threat, generator, starts, trace) -> x_best``: the smallest adversarial input
it found per example (``x`` itself where it found none). It sees the model only through `LabelOracle`, whose
calls return a label or a yes/no per input: never a score.

Queries: ``queries`` is the total number of model calls per example, the clean prediction and the final
verifying call included, and no example ever gets more (`LabelOracle` refuses a call that would exceed it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from squiggles.access import as_labels, num_classes_of
from squiggles.attacks._core import Seed, attack_mode, check_inputs, make_generator
from squiggles.errors import SquigglesError
from squiggles.frozen import forward_for
from squiggles.goals import GoalLike, ResolvedGoal, Targeted, as_goal, resolve_goal
from squiggles.results import AttackResult
from squiggles.runtime import fast_layout
from squiggles.threat import ThreatModel

# Fewest queries a decision-based attack can do anything with: clean call, a start, a bisection, a verification.
MIN_QUERIES = 10
# Query counts at which the trace records each example's best norm (plus the budget itself).
CURVE_AT = (100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)


def per_example(v: Tensor, x: Tensor) -> Tensor:
    """A per-example vector shaped to broadcast against the batch ``x``."""
    return v.view(-1, *([1] * (x.dim() - 1)))


class LabelOracle:
    """The model as a decision-based attack sees it: one label per input, every call counted per example.

    ``idx`` gives, for each row of a call, the example it is about (rows may repeat an example: probes). A call
    that would take an example past its budget (less the one query kept back for the final verification) is
    refused with an error, so an attack cannot overspend by mistake.
    """

    def __init__(self, model: Callable[[Tensor], Any], n: int, device: torch.device, budget: int,
                 max_batch: int | None = None) -> None:
        self._model = model
        self.n = n
        self.budget = budget
        self.max_batch = max_batch or call_rows(device)
        self.queries = torch.zeros(n, dtype=torch.long, device=device)
        self.calls = 0
        self.num_classes: int | None = None
        self.goal: ResolvedGoal | None = None
        self.reserve = 0

    def labels(self, z: Tensor, idx: Tensor) -> Tensor:
        counts = torch.bincount(idx, minlength=self.n)
        if (self.queries + counts > self.budget - self.reserve).any():
            raise RuntimeError("a decision-based attack tried to exceed its query budget (a bug in the attack)")
        outs = []
        with torch.no_grad():
            for i in range(0, len(z), self.max_batch):
                out = self._model(z[i : i + self.max_batch])
                self.num_classes = self.num_classes or num_classes_of(out)
                outs.append(as_labels(out, len(z[i : i + self.max_batch])))
        self.queries += counts
        self.calls += len(z)
        return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long, device=z.device)

    def adversarial(self, z: Tensor, idx: Tensor) -> Tensor:
        """Per row: does the model's label on ``z`` meet the goal of example ``idx``?"""
        assert self.goal is not None
        return reached(self.goal, self.labels(z, idx), idx)

    def left(self, idx: Tensor) -> Tensor:
        """Queries each example may still spend."""
        return self.budget - self.reserve - self.queries[idx]


def call_rows(device: torch.device) -> int:
    """Rows per model call: small batches run fastest on a CPU (0.33 ms per image for a madry-cnn at 128 rows
    against 0.50 at 4,096, measured on 2 cores), large ones on a GPU."""
    return 128 if device.type == "cpu" else 8192


def reached(goal: ResolvedGoal, pred: Tensor, idx: Tensor) -> Tensor:
    return pred == goal.targets[idx] if goal.targets is not None else pred != goal.labels[idx]


class Trace:
    """Per example, the smallest adversarial norm found within each of the checkpoint query counts."""

    def __init__(self, n: int, budget: int, device: torch.device, at: Sequence[int] = CURVE_AT) -> None:
        points = sorted({q for q in at if q < budget} | {budget})
        self.at = torch.tensor(points, device=device)
        self.norms = torch.full((n, len(points)), math.inf, device=device)

    def record(self, idx: Tensor, norms: Tensor, queries: Tensor) -> None:
        """Norms of adversarial inputs found by examples ``idx`` after ``queries`` calls each."""
        later = self.at[None, :] >= queries[:, None]
        current = self.norms[idx]
        self.norms[idx] = torch.where(later, torch.minimum(current, norms[:, None].to(current.dtype)), current)


def blend(x: Tensor, far: Tensor, a: Tensor) -> Tensor:
    """Points on the segment from ``x`` (a = 0) to ``far`` (a = 1)."""
    return x + per_example(a, x) * (far - x)


def bisect(oracle: LabelOracle, x: Tensor, far: Tensor, idx: Tensor, point: Callable[[Tensor, Tensor, Tensor],
           Tensor], high: Tensor, tol: Tensor | float, low: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Bisection toward ``x`` along ``point(x, far, a)`` for a in [low, high], ``point(.., high)`` adversarial.

    All examples step together (one batched call per step); each stops at its tolerance or when its budget
    runs out. Returns the adversarial end ``a`` and the point there (always a queried adversarial input).
    """
    _, high = bracket(oracle, x, far, idx, point, high, tol, low)
    return high, point(x, far, high)


def bracket(oracle: LabelOracle, x: Tensor, far: Tensor, idx: Tensor, point: Callable[[Tensor, Tensor, Tensor],
            Tensor], high: Tensor, tol: Tensor | float, low: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`bisect`'s final bracket ``(low, high)``: ``point(.., high)`` adversarial, ``point(.., low)`` not (or
    ``low`` where it started)."""
    high = high.clone()
    low = torch.zeros_like(high) if low is None else low.clone()
    tol_t = torch.as_tensor(tol, dtype=high.dtype, device=high.device).expand_as(high)
    while True:
        go = ((high - low) > tol_t) & (oracle.left(idx) > 0)
        rows = go.nonzero().flatten()
        if len(rows) == 0:
            break
        mid = (low[rows] + high[rows]) / 2
        adv = oracle.adversarial(point(x[rows], far[rows], mid), idx[rows])
        high[rows] = torch.where(adv, mid, high[rows])
        low[rows] = torch.where(adv, low[rows], mid)
    return low, high


def adversarial_start(oracle: LabelOracle, x: Tensor, starts: Tensor | None, generator: torch.Generator,
                      bounds: tuple[float, float], tries: int = 50) -> tuple[Tensor, Tensor]:
    """An adversarial input per example: the given start where it is adversarial, else uniform noise (up to
    ``tries`` draws, each one query). Returns the inputs and which examples have one."""
    n = len(x)
    idx = torch.arange(n, device=x.device)
    far = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    if starts is not None:
        found = oracle.adversarial(starts, idx)
        far[found] = starts[found]
    lo, hi = bounds
    for _ in range(tries):
        rows = (~found & (oracle.left(idx) > 0)).nonzero().flatten()
        if len(rows) == 0:
            break
        noise = lo + (hi - lo) * torch.rand(x[rows].shape, generator=generator, device=x.device, dtype=x.dtype)
        adv = oracle.adversarial(noise, rows)
        far[rows[adv]] = noise[adv]
        found[rows[adv]] = True
    return far, found


def check_starts(starts: Any, x: Tensor, threat: ThreatModel) -> Tensor | None:
    if starts is None:
        return None
    if not isinstance(starts, Tensor) or starts.shape != x.shape:
        shape = tuple(starts.shape) if isinstance(starts, Tensor) else type(starts).__name__
        raise SquigglesError(f"starts must be a tensor shaped like the inputs {tuple(x.shape)}, got {shape}; give "
                             "one starting image per input (e.g. an example of the target class)")
    lo, hi = threat.bounds
    return starts.detach().to(device=x.device, dtype=x.dtype).clamp(lo, hi)


def check_queries(queries: Any) -> int:
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < MIN_QUERIES:
        raise SquigglesError(f"queries must be an integer >= {MIN_QUERIES} (model calls per example, the clean "
                             f"and the verifying call included), got {queries!r}")
    return queries


def _resolve(goal_in: Any, clean: Tensor, num_classes: int | None) -> ResolvedGoal:
    """The goal from the clean labels (a one-hot stand-in for logits: only argmax and the class count are read)."""
    k = num_classes or int(max(clean.max().item() if len(clean) else 0,
                               goal_in.targets.max().item() if isinstance(goal_in, Targeted) else 0,
                               goal_in.labels.max().item() if goal_in.labels is not None else 0) + 1)
    return resolve_goal(goal_in, torch.nn.functional.one_hot(clean, k).float())


DecisionCore = Callable[..., Tensor]


def run_decision_attack(
    name: str, core: DecisionCore, model: Callable[[Tensor], Any], x: Tensor, y_or_goal: GoalLike,
    threat: ThreatModel, seed: Seed, queries: int, starts: Tensor | None, config: dict[str, Any],
    curve_at: Sequence[int] = CURVE_AT, max_batch: int | None = None,
) -> AttackResult:
    """Validate, run a label-only ``core`` within ``queries`` calls per example, verify with a final call."""
    start = time.perf_counter()
    x = check_inputs(x, threat)
    queries = check_queries(queries)
    starts = check_starts(starts, x, threat)
    goal_in = as_goal(y_or_goal)
    generator, seed_record = make_generator(seed, x.device)
    n = len(x)
    idx = torch.arange(n, device=x.device)
    with attack_mode(model), fast_layout(model, x):
        # Label-only searches never need a gradient: a frozen graph runs their forward passes faster on a CPU.
        oracle = LabelOracle(forward_for(model, x, n * queries), n, x.device, queries, max_batch)
        clean = oracle.labels(x, idx)
        goal = _resolve(goal_in, clean, oracle.num_classes)
        oracle.goal = goal
        trace = Trace(n, queries, x.device, curve_at)
        oracle.reserve = 1  # the verifying call
        x_best = core(oracle, x, goal, threat, generator, starts, trace) if n else x.clone()
        oracle.reserve = 0
        x_adv, pred = _verify(oracle, x, x_best, clean, threat)
    success = reached(goal, pred, idx)
    config = {**config, "queries": queries, "starts": starts is not None}
    result = AttackResult(
        attack=name, x_adv=x_adv, success=success, pred=pred, labels=goal.labels,
        clean_correct=clean == goal.labels, norms=threat.norm(x_adv - x), queries=oracle.queries,
        forwards=oracle.calls, backwards=0, threat=threat.describe(), seed=seed_record, config=config,
        targets=goal.targets, labels_source=goal.labels_source, wall_time_s=time.perf_counter() - start,
    )
    result.curve_queries = trace.at.tolist()
    result.curve_norms = trace.norms.to(x.dtype)
    return result


def _verify(oracle: LabelOracle, x: Tensor, x_best: Tensor, clean: Tensor,
            threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """Inside the budget (else the clean input), and the label of a final call on every input that moved."""
    lo, hi = threat.bounds
    x_best = x_best.detach().clamp(lo, hi)
    tol = 64 * torch.finfo(x.dtype).eps * max(1.0, hi - lo)
    eps = threat.eps_like(x).flatten()
    inside = threat.norm(x_best - x) <= eps * (1 + tol) + tol
    x_adv = torch.where(per_example(inside, x), x_best, x)
    x_adv = threat.project(x_adv, x)
    pred = clean.clone()
    moved = (x_adv != x).flatten(1).any(1).nonzero().flatten()
    if len(moved):
        pred[moved] = oracle.labels(x_adv[moved], moved)
    return x_adv, pred
