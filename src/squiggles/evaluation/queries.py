"""Norm against queries: how close a label-only attack gets with each number of model calls, beside the
white-box minimal norm (FMN) on the same points, in one call.

Example:
    >>> import torch, squiggles                                    # doctest: +SKIP
    >>> from squiggles.evaluation.queries import norm_vs_queries
    >>> curve = norm_vs_queries(model, test, "l2", attack="hsja", queries=[500, 1000, 5000], n=100)
    >>> curve.median_norm, curve.reference
    >>> curve.plot("hsja-curve.png")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.errors import SquigglesError
from squiggles.results import AttackResult
from squiggles.threat import make_threat

DEFAULT_QUERIES = (500, 1000, 2000, 5000, 10_000, 20_000)


@dataclass
class QueryCurve:
    """Median adversarial norm over the clean-correct points at each query count (``None``: under half broken)."""

    attack: str
    norm: str
    queries: list[int]
    median_norm: list[float | None]
    reference: dict[str, float | None] = field(default_factory=dict)  # white-box minimal norms, e.g. {"fmn": 1.1}
    n: int = 0
    wall_time_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "query-curve", "attack": self.attack, "norm": self.norm, "n": self.n,
                "queries": self.queries, "median_norm": self.median_norm, "reference": self.reference,
                "wall_time_s": self.wall_time_s}

    def plot(self, path: str | Path, title: str = "") -> Path:
        from squiggles.report.figures import query_curve

        refs = {f"{k} (white-box)": v for k, v in self.reference.items() if v is not None}
        return query_curve(Path(path), {self.attack: (self.queries, self.median_norm)}, self.norm, refs, title)


def curve_of(result: AttackResult, at: Sequence[int]) -> list[float | None]:
    """The medians of an attack result's trace at the query counts ``at`` (each must be a checkpoint)."""
    curve = result.norm_curve()
    if curve is None:
        raise SquigglesError(f"{result.attack} keeps no norm-versus-queries trace (only label-only attacks do)")
    lookup = dict(zip(curve["queries"], curve["median_norm"], strict=True))
    return [lookup[q] for q in at]


def minimal_median(result: AttackResult) -> float | None:
    """Median minimal norm over the clean-correct points (inf where FMN found none); ``None`` when infinite."""
    norms = torch.where(result.success, result.norms, torch.full_like(result.norms, math.inf))[result.clean_correct]
    if len(norms) == 0:
        return None
    m = norms.sort().values[(len(norms) - 1) // 2].item()
    return m if math.isfinite(m) else None


def norm_vs_queries(
    model: Callable[[Tensor], Any], data: Any, norm: str = "l2", *, attack: str = "hsja",
    queries: Sequence[int] = DEFAULT_QUERIES, n: int | None = None, reference: str | None = "fmn",
    seed: int = 0, batch_size: int = 500, **options: Any,
) -> QueryCurve:
    """Run ``attack`` once with ``max(queries)`` calls per example and read its median norm at every count in
    ``queries``; run ``reference`` (a white-box minimal-norm attack) on the same points when the model is an
    ``nn.Module`` (gradients available). ``data``: a squiggles Dataset or ``(x, y)``."""
    from squiggles.attacks.registry import get_attack
    from squiggles.evaluation.core import _tensors

    spec = get_attack(attack)
    if spec.kind != "decision":
        raise SquigglesError(f"{attack!r} keeps no query trace; use a label-only attack (hsja, boundary, rays)")
    qs = sorted({int(q) for q in queries})
    if not qs or qs[0] < 1:
        raise SquigglesError(f"queries must be positive counts, got {list(queries)}")
    x, y = _tensors(data, n)
    bounds = getattr(data, "bounds", (0.0, 1.0))
    threat = make_threat(norm, math.inf, bounds)
    parts = [spec(model, x[i : i + batch_size], y[i : i + batch_size], threat, queries=qs[-1], curve_at=qs,
                  seed=seed, **options) for i in range(0, len(x), batch_size)]
    result = AttackResult.cat(parts)
    curve = QueryCurve(attack, threat.name, qs, curve_of(result, qs), n=len(x),
                       wall_time_s={attack: round(result.wall_time_s, 3)})
    if reference and isinstance(model, nn.Module):
        ref = get_attack(reference)
        if threat.name in ref.norms:
            white = AttackResult.cat([ref(model, x[i : i + batch_size], y[i : i + batch_size], threat, seed=seed)
                                      for i in range(0, len(x), batch_size)])
            curve.reference[reference] = minimal_median(white)
            curve.wall_time_s[reference] = round(white.wall_time_s, 3)
    return curve
