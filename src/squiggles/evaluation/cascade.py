"""The cascade on one chunk of points at one budget: each stage attacks only the points still robust,
always from the clean input, and a point broken once stays broken (the per-point worst case)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from squiggles.attacks._core import subset_threat
from squiggles.attacks.registry import get_attack
from squiggles.evaluation.ensembles import Stage
from squiggles.threat import ThreatModel

# Codes in `broken_by` besides the index of the stage that broke a point.
CLEAN_ERROR = -1   # misclassified before any attack
ROBUST = -2        # survived every stage
REUSED = -3        # broken at a smaller budget, or by the minimal-norm pre-pass: the same x_adv is valid here


@dataclass
class StageStats:
    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0

    def add(self, forwards: int, backwards: int, seconds: float) -> None:
        self.forwards += forwards
        self.backwards += backwards
        self.seconds += seconds


def run_cascade(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, threat: ThreatModel, stages: tuple[Stage, ...],
    robust: Tensor, x_adv: Tensor, broken_by: Tensor, seed: int, stats: list[StageStats],
    queries: Tensor | None = None,
) -> None:
    """Update ``robust``, ``x_adv`` and ``broken_by`` in place with every stage's successes (and ``queries``, the
    model calls spent on each point, when given)."""
    for si, stage in enumerate(stages):
        idx = robust.nonzero().flatten()
        if len(idx) == 0:
            return
        start = time.perf_counter()
        result = get_attack(stage.attack)(model, x[idx], y[idx], subset_threat(threat, idx), seed=seed + si,
                                          **stage.options)
        if queries is not None:
            queries[idx] += result.queries.to(queries.device)
        hit = idx[result.success]
        x_adv[hit] = result.x_adv[result.success]
        robust[hit] = False
        broken_by[hit] = si
        stats[si].add(result.forwards, result.backwards, time.perf_counter() - start)


def stage_seed(seed: int, chunk: int, eps_index: int) -> int:
    """A seed fixed by (seed, chunk, budget), so a resumed or sharded run repeats the same attacks."""
    return (seed * 1_000_003 + chunk * 10_007 + eps_index * 101) % (2**62)
