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
    kind: str = "fixed"  # "fixed" budget, "minimal" norm, "decision" (label-only: either, by eps), "spatial", "patch"
    uses_grad: bool = True
    access: str = "gradients"  # what it reads of the model: gradients, scores or labels (squiggles.access)
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
_ALL = ("linf", "l2", "l1")
# fmt: off
ATTACKS: dict[str, AttackSpec] = {s.name: s for s in [
    AttackSpec("fgsm", _A + "fgsm:fgsm", _ALL, steps_option=None,
               summary="one gradient step (Goodfellow et al. 2014)"),
    AttackSpec("fgsm-rs", _A + "fgsm:fgsm", _ALL, defaults={"random_start": True}, steps_option=None,
               summary="FGSM from a random start, step 1.25 eps (Wong et al. 2020)"),
    AttackSpec("pgd", _A + "pgd:pgd", _ALL, summary="projected gradient descent (Madry et al. 2017)"),
    AttackSpec("pgd-margin", _A + "pgd:pgd", _ALL, defaults={"loss": "margin"},
               summary="PGD on the Carlini-Wagner margin loss"),
    AttackSpec("apgd-ce", _A + "apgd:apgd", _ALL, defaults={"loss": "ce"},
               summary="Auto-PGD on cross-entropy (Croce & Hein 2020)"),
    AttackSpec("apgd-dlr", _A + "apgd:apgd", _ALL, defaults={"loss": "dlr"},
               summary="Auto-PGD on the DLR loss"),
    AttackSpec("apgd-t", _A + "apgd:apgd_targeted", _ALL,
               summary="Auto-PGD, targeted DLR over the top-k other classes (untargeted in effect)"),
    AttackSpec("fab-t", _A + "fab:fab_targeted", ("linf", "l2"),
               summary="AutoAttack's FAB-T: targeted boundary attack over the top-k other classes (Croce & Hein 2020)"),
    AttackSpec("square", _A + "square:square", ("linf", "l2"), uses_grad=False, access="scores", steps_option=None,
               summary="score-based black-box Square attack (Andriushchenko et al. 2020)"),
    AttackSpec("fmn", _A + "minimal:fmn", _ALL, kind="minimal",
               summary="Fast Minimum-Norm attack (Pintor et al. 2021)"),
    AttackSpec("cw", _A + "minimal:cw", ("l2",), kind="minimal",
               summary="Carlini-Wagner L2 (Carlini & Wagner 2017)"),
    AttackSpec("hsja", _A + "hsja:hsja", ("l2", "linf"), kind="decision", uses_grad=False, access="labels",
               steps_option=None, summary="label-only HopSkipJumpAttack (Chen, Jordan & Wainwright 2020)"),
    AttackSpec("boundary", _A + "boundary:boundary", ("l2",), kind="decision", uses_grad=False, access="labels",
               steps_option=None, summary="label-only Boundary Attack (Brendel, Rauber & Bethge 2018)"),
    AttackSpec("rays", _A + "rays:rays", ("linf",), kind="decision", uses_grad=False, access="labels",
               steps_option=None, summary="label-only ray search in Linf, RayS (Chen & Gu 2020)"),
    AttackSpec("spatial-grid", _A + "spatial:spatial_grid", ("spatial",), kind="spatial", steps_option=None,
               summary="every rotation and translation of a grid, 31 x 5 x 5 (Engstrom et al. 2019)"),
    AttackSpec("spatial-random", _A + "spatial:spatial_random", ("spatial",), kind="spatial", steps_option=None,
               summary="worst of k random rotations and translations (Engstrom et al. 2019)"),
    AttackSpec("spatial-fo", _A + "spatial:spatial_fo", ("spatial",), kind="spatial",
               summary="first-order attack on the rotation and translation (Engstrom et al. 2019)"),
    AttackSpec("stickers", _A + "patch:stickers", ("stickers",), kind="patch",
               summary="per-image content of k small rectangles, placed by saliency (Eykholt et al. 2018)"),
    AttackSpec("patch", _A + "patch:patch_attack", ("patch",), kind="patch",
               summary="per-image square patch of a given area, placed by saliency, then at random"),
]}
# fmt: on


def register(spec: AttackSpec) -> None:
    """Add an attack to the registry (used by plug-ins and by the modules that define attacks)."""
    ATTACKS[spec.name] = spec


def get_attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise SquigglesError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    return ATTACKS[name]
