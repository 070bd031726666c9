"""`CertifyResult`: per-point certificates, the certified-accuracy curve, and the attack's figure beside them.

Certified accuracy counts a point when the certificate holds *and* the prediction it certifies is right:
for smoothing, the smoothed prediction equals the label with a radius of at least r (Cohen et al.'s curve);
for bounds, the model is right on the point and every margin bound is positive at eps. An attack can only
lower the empirical figure towards the truth and a certificate only raise the certified one towards it, so
certified <= empirical must hold on the same points and budget: `with_empirical` records both and says so
where it does not (which would mean a bug).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from squiggles._io import versions
from squiggles.certify.smoothing import certified_accuracy

SCHEMA_VERSION = 1


@dataclass
class CertifyResult:
    method: str
    n: int
    labels: Tensor
    per_point: dict[str, Tensor]
    config: dict[str, Any]
    bounds: tuple[float, float]
    wall_time_s: float
    empirical: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(cls, config: Any, y: Tensor, state: dict[str, Tensor], bounds: tuple[float, float],
              seconds: float) -> CertifyResult:
        from dataclasses import asdict

        per_point = {k: v for k, v in state.items() if k not in ("done", "seconds")}
        return cls(config.method, len(y), y.cpu(), per_point, asdict(config), bounds, seconds)

    # --- figures ---------------------------------------------------------------------------------------

    @property
    def clean_accuracy(self) -> float:
        return float((self.per_point["clean"] == self.labels).double().mean()) if self.n else math.nan

    def budgets(self) -> list[float]:
        """The radii (smoothing) or eps (bounds) the curve is read at."""
        if self.method != "smoothing":
            return list(self.config["eps"])
        top = max_radius(self.config["sigma"], self.config["n"], self.config["alpha"])
        return [round(0.25 * i, 2) for i in range(int(top / 0.25) + 1)]

    def certified(self, budget: float) -> Tensor:
        """Per point: certified correct at this radius or eps."""
        if self.method == "smoothing":
            return (self.per_point["prediction"] == self.labels) & (self.per_point["radius"] >= budget)
        k = self.config["eps"].index(budget)
        return self.per_point["verified"][k]

    def curve(self) -> list[dict[str, float]]:
        key = "radius" if self.method == "smoothing" else "eps"
        if self.method == "smoothing":
            accs = certified_accuracy(self.per_point["prediction"], self.per_point["radius"], self.labels,
                                      self.budgets())
        else:
            accs = [float(self.certified(e).double().mean()) for e in self.budgets()]
        return [{key: b, "certified_accuracy": a} for b, a in zip(self.budgets(), accs, strict=True)]

    def abstentions(self) -> int | None:
        return int((self.per_point["prediction"] < 0).sum()) if self.method == "smoothing" else None

    def average_certified_radius(self) -> float | None:
        """Mean radius over the points certified correct, zeros elsewhere (ACR, Zhai et al. 2020)."""
        if self.method != "smoothing":
            return None
        right = self.per_point["prediction"] == self.labels
        return float(torch.where(right, self.per_point["radius"].double(), torch.zeros(()).double()).mean())

    def model_calls(self) -> int:
        return int(self.per_point["calls"].sum())

    def with_empirical(self, rows: list[dict[str, Any]]) -> CertifyResult:
        """Attach the attack's figure per budget (``budget``, ``robust_accuracy``, ``attack``) and check the order."""
        curve = {row[next(iter(row))]: row["certified_accuracy"] for row in self.curve()}
        self.empirical = []
        for row in rows:
            cert = curve.get(row["budget"])
            # float32 means elsewhere: 1e-6 is far below one point (1 / n) for any n below a million.
            ok = cert is None or cert <= row["robust_accuracy"] + 1e-6
            self.empirical.append({**row, "certified_accuracy": cert, "certified_le_empirical": ok})
        return self

    def violations(self) -> list[dict[str, Any]]:
        return [row for row in self.empirical if not row["certified_le_empirical"]]

    # --- output ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        pp = {k: v.tolist() for k, v in self.per_point.items()}
        return {
            "schema": SCHEMA_VERSION,
            "kind": "certification",
            "method": self.method,
            "n": self.n,
            "norm": "l2" if self.method == "smoothing" else self.config["norm"],
            "clean_accuracy": self.clean_accuracy,
            "curve": self.curve(),
            "abstentions": self.abstentions(),
            "average_certified_radius": self.average_certified_radius(),
            "empirical": self.empirical,
            "model_calls": self.model_calls(),
            "wall_time_s": round(self.wall_time_s, 3),
            "points_per_second": round(self.n / self.wall_time_s, 4) if self.wall_time_s > 0 else None,
            "config": self.config,
            "per_point": {"labels": self.labels.tolist(), **pp},
            "versions": versions(),
        }

    def table(self) -> str:
        key = "radius" if self.method == "smoothing" else "eps"
        head = f"{self.method}: clean accuracy {100 * self.clean_accuracy:.2f}% on {self.n} points"
        if self.method == "smoothing":
            head += (f" (sigma {self.config['sigma']:g}, N {self.config['n']}, alpha {self.config['alpha']:g}; "
                     f"{self.abstentions()} abstained, ACR {self.average_certified_radius():.3f})")
        lines = [head]
        empirical = {row["budget"]: row for row in self.empirical}
        for row in self.curve():
            budget = row[key]
            line = f"  {key} {budget:<6g} certified {100 * row['certified_accuracy']:6.2f}%"
            if budget in empirical:
                e = empirical[budget]
                line += f"   empirical ({e['attack']}) {100 * e['robust_accuracy']:6.2f}%"
                line += "" if e["certified_le_empirical"] else "   <- certified above empirical: please report this"
            lines.append(line)
        lines.append(f"  {self.model_calls()} model calls, {self.wall_time_s:.1f}s")
        return "\n".join(lines)


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius ``n`` draws can certify at level ``alpha``: every draw agreeing gives
    ``pA_lower = alpha ** (1 / n)``."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(alpha ** (1.0 / n)))
