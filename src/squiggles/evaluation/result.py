"""`EvalResult`: what an evaluation found, per point and in total, and its documented JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from squiggles.evaluation.cascade import CLEAN_ERROR, REUSED, ROBUST

SCHEMA_VERSION = 1


@dataclass
class EvalResult:
    """Robust accuracy at each budget, per-point outcomes and the evidence behind them.

    ``robust[k, i]`` is True when point ``i`` survived every attack at ``eps[k]`` *and* the final forward pass
    on its returned input agrees. ``broken_by[k, i]`` is the index of the stage that broke it, or one of
    ``CLEAN_ERROR`` (-1), ``ROBUST`` (-2), ``REUSED`` (-3: broken at a smaller budget or by the minimal-norm
    pre-pass, whose adversarial input is also valid here).
    """

    eps: list[float]
    threat: dict[str, Any]
    stages: list[dict[str, Any]]
    labels: Tensor
    clean_correct: Tensor
    robust: Tensor
    broken_by: Tensor
    x_adv: Tensor | None
    min_norms: Tensor | None
    stage_stats: list[list[dict[str, Any]]]
    disagreements: list[int]
    prepass_stats: dict[str, Any] | None = None
    flags: list[dict[str, Any]] = field(default_factory=list)
    # Remedies the evaluation applied by itself (squiggles.evaluation.remedied), and the robust accuracy at each
    # budget before them (None when none was applied): the headline is the per-point worst case of both.
    remedies: list[dict[str, Any]] = field(default_factory=list)
    unremedied: list[float] | None = None
    # Model calls spent on each point at each budget (budgets x points), all stages together.
    queries: Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    seed: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item()

    @property
    def robust_accuracy(self) -> float:
        """At the first (or only) budget."""
        return self.robust[0].float().mean().item()

    @property
    def unremedied_robust_accuracy(self) -> float:
        """At the first budget, before the remedies (the headline itself when none was applied)."""
        return self.unremedied[0] if self.unremedied else self.robust_accuracy

    def accuracy_at(self, k: int) -> float:
        return self.robust[k].float().mean().item()

    def breakdown(self, k: int = 0) -> list[dict[str, Any]]:
        """Cumulative accuracy after each stage at budget ``eps[k]`` (the last row is the robust accuracy)."""
        codes = self.broken_by[k]
        alive = self.clean_correct & (codes != REUSED)
        rows = [{"stage": "clean", "accuracy": self.clean_accuracy,
                 "after_reuse": alive.float().mean().item()}]
        for si, stage in enumerate(self.stages):
            alive = alive & (codes != si)
            st = self.stage_stats[k][si]
            rows.append({"stage": stage["name"], "accuracy": alive.float().mean().item(),
                         "broken": int((codes == si).sum()), **st})
        return rows

    def curve(self) -> list[dict[str, float]]:
        return [{"eps": e, "robust_accuracy": self.accuracy_at(k)} for k, e in enumerate(self.eps)]

    def to_json(self) -> dict[str, Any]:
        """The documented results schema (see docs in README: "Evaluation results")."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": "evaluation",
            "n": self.n,
            "threat": self.threat,
            "eps": self.eps,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "curve": self.curve(),
            "unremedied_robust_accuracy": self.unremedied_robust_accuracy,
            "unremedied_curve": ([{"eps": e, "robust_accuracy": a} for e, a in zip(self.eps, self.unremedied,
                                                                                   strict=True)]
                                 if self.unremedied else None),
            "remedies": self.remedies,
            "breakdown": [{"eps": e, "stages": self.breakdown(k)} for k, e in enumerate(self.eps)],
            "attacks": self.stages,
            "minimal_norm_prepass": self.prepass_stats,
            "flags": self.flags,
            "disagreements": self.disagreements,
            "model_calls": self.model_calls(),
            "queries_per_point": self.queries_per_point(),
            "wall_time_s": round(self.wall_time_s, 3),
            "seed": self.seed,
            "config": self.config,
            **self.provenance,
        }

    def queries_per_point(self) -> list[dict[str, Any]] | None:
        """Per budget: the median, mean and largest number of model calls spent on one point."""
        if self.queries is None:
            return None
        rows = []
        for k, e in enumerate(self.eps):
            q = self.queries[k].double()
            rows.append({"eps": e, "median": float(q.median()), "mean": float(q.mean()), "max": int(q.max())})
        return rows

    def model_calls(self) -> dict[str, int]:
        """Every model call of the evaluation: all stages at all budgets plus the minimal-norm pre-pass."""
        rows = [s for per_eps in self.stage_stats for s in per_eps]
        rows += [self.prepass_stats] if self.prepass_stats else []
        return {"forwards": sum(s["forwards"] for s in rows), "backwards": sum(s["backwards"] for s in rows)}

    def table(self) -> str:
        """A console table: one row per stage and budget, cumulative accuracy, calls and time."""
        lines = [f"clean accuracy {100 * self.clean_accuracy:.2f}% on {self.n} points ({self.threat['norm']})"]
        for k, e in enumerate(self.eps):
            lines.append(f"eps {e:g}:")
            for row in self.breakdown(k)[1:]:
                lines.append(f"  after {row['stage']:<10s} {100 * row['accuracy']:6.2f}%   broke {row['broken']:5d}"
                             f"   {row['forwards']:>10d} fwd {row['backwards']:>10d} bwd  {row['seconds']:8.1f}s")
            without = (f" (without remedies {100 * self.unremedied[k]:.2f}%)"
                       if self.unremedied and self.unremedied[k] != self.accuracy_at(k) else "")
            lines.append(f"  robust accuracy {100 * self.accuracy_at(k):.2f}%{without}")
        for flag in self.flags:
            lines.append(f"FLAG {flag['code']}: {flag['message']}")
        for r in self.remedies:
            after = ", ".join(f"{100 * a:.2f}%" for a in r["robust_accuracy_after"])
            before = ", ".join(f"{100 * b:.2f}%" for b in r["robust_accuracy_before"])
            lines.append(f"REMEDY {r['remedy']} (for {', '.join(r['reason'])}): {r['description']}; robust "
                         f"accuracy {before} -> {after}")
        return "\n".join(lines)


def outcome_codes() -> dict[str, int]:
    return {"clean_error": CLEAN_ERROR, "robust": ROBUST, "reused": REUSED}


def empty_like(n: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.zeros(k, n, dtype=torch.bool, device=device),
            torch.full((k, n), ROBUST, dtype=torch.long, device=device))
