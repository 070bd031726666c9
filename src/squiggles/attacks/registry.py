"""One registry of every attack: how to call it, which norms it supports, whether it needs gradients,
and whether it is a fixed-budget or a minimal-norm attack. The CLI, the evaluation and the property tests
all read it, so a new attack is tested and exposed by adding one entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from squiggles.errors import SquigglesError


@dataclass(frozen=True)
class AttackSpec:
    name: str
    target: str  # "module:function", imported on first use
    norms: tuple[str, ...]
    kind: str = "fixed"  # "fixed" budget or "minimal" norm
    uses_grad: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)
    steps_option: str | None = "steps"  # the option that sets its iteration budget, if any
    summary: str = ""

    @property
    def fn(self) -> Callable[..., Any]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **{**self.defaults, **kwargs})


_A = "squiggles.attacks."
ATTACKS: dict[str, AttackSpec] = {
    s.name: s
    for s in [
        AttackSpec(
            "fgsm",
            _A + "fgsm:fgsm",
            ("linf", "l2", "l1"),
            steps_option=None,
            summary="one gradient step (Goodfellow et al. 2014)",
        ),
        AttackSpec(
            "fgsm-rs",
            _A + "fgsm:fgsm",
            ("linf", "l2", "l1"),
            defaults={"random_start": True},
            steps_option=None,
            summary="FGSM from a random start, step 1.25 eps (Wong et al. 2020)",
        ),
        AttackSpec(
            "pgd", _A + "pgd:pgd", ("linf", "l2", "l1"), summary="projected gradient descent (Madry et al. 2017)"
        ),
        AttackSpec(
            "pgd-margin",
            _A + "pgd:pgd",
            ("linf", "l2", "l1"),
            defaults={"loss": "margin"},
            summary="PGD on the Carlini-Wagner margin loss",
        ),
    ]
}


def register(spec: AttackSpec) -> None:
    """Add an attack to the registry (used by plug-ins and by the modules that define attacks)."""
    ATTACKS[spec.name] = spec


def get_attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise SquigglesError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    return ATTACKS[name]
