"""Named attack ensembles for the evaluation cascade.

Each stage is a registry attack with options. The cascade runs the stages in order, each only on the points
still robust and each from the clean input, and keeps the per-point worst case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from squiggles.errors import SquigglesError


@dataclass(frozen=True)
class Stage:
    attack: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.attack

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "attack": self.attack, "options": dict(self.options)}


ENSEMBLES: dict[str, tuple[Stage, ...]] = {
    # Two gradient attacks with complementary losses: most of the strength at a fraction of the cost.
    "quick": (
        Stage("apgd-ce", {"steps": 100}, "APGD-CE"),
        Stage("apgd-t", {"steps": 100, "n_target_classes": 3}, "APGD-T"),
    ),
    # At least as strong as AutoAttack's standard version in under half its time on the models measured
    # (README, Results; most of the time goes to Square, made cheaper by `fast_layout`). White-box with two
    # losses, the targeted one toward the four most likely other classes (on the models measured, targets beyond
    # the third broke no further point; the rest are the least likely, hardest to reach), then the black-box
    # Square attack, which needs no gradients and so cannot be fooled by masking. AutoAttack's FAB-T is not a stage:
    # the evaluation runs it as a remedy where Square's share of the breaks flags masked gradients (it was what
    # broke the points `standard` missed on the panel's masked model, and nothing elsewhere; README, the panel).
    "standard": (
        Stage("apgd-ce", {"steps": 100}, "APGD-CE"),
        Stage("apgd-t", {"steps": 100, "n_target_classes": 4}, "APGD-T"),
        Stage("square", {"queries": 5000}, "Square"),
    ),
}


def resolve_stages(attacks: str | list[str] | tuple[Stage, ...]) -> tuple[Stage, ...]:
    """An ensemble name, a list of registry attack names, or explicit stages."""
    from squiggles.attacks.registry import get_attack

    if isinstance(attacks, str):
        if attacks in ENSEMBLES:
            return ENSEMBLES[attacks]
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    stages = tuple(a if isinstance(a, Stage) else Stage(a) for a in attacks)
    if not stages:
        raise SquigglesError(f"no attacks given; use an ensemble ({', '.join(ENSEMBLES)}) or attack names")
    for stage in stages:
        spec = get_attack(stage.attack)
        if spec.kind != "fixed":
            raise SquigglesError(f"{stage.attack!r} is a minimal-norm attack; the cascade takes fixed-budget attacks")
    return stages
