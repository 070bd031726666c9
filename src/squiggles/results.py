"""Typed results. An `AttackResult` is the one thing every attack returns.

``x_adv`` is always inside the budget and the bounds, and ``success`` comes from a final forward pass on
exactly ``x_adv``, so the two can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class AttackResult:
    """Adversarial inputs and what they achieved, per example, with the cost and the settings."""

    attack: str
    x_adv: Tensor
    success: Tensor  # bool, per example: the goal is met on x_adv
    pred: Tensor  # the model's label on x_adv
    labels: Tensor  # true labels, or the clean predictions when none were given
    clean_correct: Tensor  # bool: the clean input was classified as `labels`
    norms: Tensor  # perturbation norm of x_adv - x in the threat model's norm
    queries: Tensor  # forward evaluations spent on each example
    forwards: int  # example-forward passes in total (batch size x calls)
    backwards: int  # example-backward passes in total
    threat: dict[str, Any]
    seed: int | None
    config: dict[str, Any] = field(default_factory=dict)
    targets: Tensor | None = None
    labels_source: str = "given"
    wall_time_s: float = 0.0
    # Decision-based attacks: the query counts of a norm-versus-queries trace, and per example the smallest
    # adversarial norm found within each (inf before the first).
    curve_queries: list[int] | None = None
    curve_norms: Tensor | None = None
    # Spatial attacks: the transform applied to each example (N x 3: degrees, pixels right, pixels down).
    params: Tensor | None = None

    def __len__(self) -> int:
        return len(self.success)

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item() if len(self) else float("nan")

    @property
    def robust(self) -> Tensor:
        """Per example: still classified as its label on x_adv."""
        return self.pred == self.labels

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item() if len(self) else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item() if len(self) else float("nan")

    def norm_curve(self) -> dict[str, list[Any]] | None:
        """Median adversarial norm over the clean-correct points (inf while fewer than half have one) at each
        query count of the trace; ``None`` for attacks that keep no trace."""
        if self.curve_norms is None or self.curve_queries is None:
            return None
        keep = self.clean_correct if self.targets is None else torch.ones_like(self.clean_correct)
        norms = self.curve_norms[keep]
        medians = [_median(norms[:, j]) for j in range(norms.shape[1])] if len(norms) else []
        return {"queries": list(self.curve_queries), "median_norm": medians}

    def summary(self) -> dict[str, Any]:
        """The JSON-ready headline numbers: rates, norms of the successful examples, cost and settings."""
        ok = self.norms[self.success & self.clean_correct] if self.targets is None else self.norms[self.success]
        return {
            "attack": self.attack,
            "n": len(self),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "targeted": self.targets is not None,
            "labels_source": self.labels_source,
            "median_norm": ok.median().item() if len(ok) else None,
            "mean_norm": ok.mean().item() if len(ok) else None,
            "forwards": self.forwards,
            "backwards": self.backwards,
            "mean_queries": self.queries.float().mean().item() if len(self) else None,
            "max_queries": int(self.queries.max()) if len(self) else None,
            "wall_time_s": round(self.wall_time_s, 4),
            "threat": self.threat,
            "seed": self.seed,
            "config": self.config,
            **({"norm_curve": self.norm_curve()} if self.curve_norms is not None else {}),
        }

    @staticmethod
    def cat(parts: list[AttackResult]) -> AttackResult:
        """Join results of consecutive batches of one attack run."""
        if not parts:
            raise ValueError("AttackResult.cat needs at least one result")
        first = parts[0]

        def join(name: str) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        return AttackResult(
            attack=first.attack,
            x_adv=join("x_adv"),
            success=join("success"),
            pred=join("pred"),
            labels=join("labels"),
            clean_correct=join("clean_correct"),
            norms=join("norms"),
            queries=join("queries"),
            forwards=sum(p.forwards for p in parts),
            backwards=sum(p.backwards for p in parts),
            threat=_joined_threat(parts),
            seed=first.seed,
            config=first.config,
            targets=join("targets") if first.targets is not None else None,
            labels_source=first.labels_source,
            wall_time_s=sum(p.wall_time_s for p in parts),
            curve_queries=first.curve_queries,
            curve_norms=join("curve_norms") if first.curve_norms is not None else None,
            params=join("params") if first.params is not None else None,
        )


def _median(values: Tensor) -> float | None:
    """The lower median (inf counts as large); ``None`` (JSON null) when it is infinite."""
    m = values.sort().values[(len(values) - 1) // 2].item()
    return m if math.isfinite(m) else None


def _joined_threat(parts: list[AttackResult]) -> dict[str, Any]:
    threat = dict(parts[0].threat)
    if isinstance(threat.get("eps"), list):
        threat["eps"] = [e for p in parts for e in p.threat["eps"]]
    return threat
