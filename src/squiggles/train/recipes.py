"""Each architecture's good recipe, so that a run that names only a model and a method gets it.

A flag the user gives always wins; the recipe fills only what they left out, and the card records the values
used and where they came from. Where no recipe was measured, the generic defaults apply (Adam 1e-3, batch 128,
one epoch).

- ``small-cnn``, standard: Adam 5e-3 one-cycle, batch 16, one epoch: 98.62% on the MNIST test set, chosen on
  the validation split (README, "Standard training").
- ``madry-cnn``, standard: Adam 1e-3 one-cycle, batch 128, two epochs: 99.00% (README).
- ``fgsm-rs``, any model: Wong et al. 2020 (arXiv 2001.03994), the MNIST recipe of their code (Adam with a
  triangular learning rate peaking at 5e-3, batch 100, ten epochs, step 1.25 eps from a uniform random start)
  with eps ramped in over the first 30%: on ``small-cnn`` at Linf 0.3 that gave 98.9% clean and 69.8% robust
  (`quick`, first 1,000 test points), where the same recipe without the ramp collapsed to 1.8% robust.
- ``pgd`` and ``trades``, any model: Adam 2e-3 one-cycle with eps ramped over the first 30% (the recipes of
  the README's training frontier).

Example:
    >>> from squiggles.train.recipes import recipe_for
    >>> recipe_for("small-cnn", "standard")["lr"]
    0.005
"""

from __future__ import annotations

from typing import Any

GENERIC: dict[str, Any] = {"epochs": 1, "batch_size": 128, "lr": 1e-3}
# Trainer settings (epochs, batch_size, lr) and method options (warmup) by (architecture, method); "*" matches
# any architecture.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("small-cnn", "standard"): {"epochs": 1, "batch_size": 16, "lr": 5e-3},
    ("madry-cnn", "standard"): {"epochs": 2, "batch_size": 128, "lr": 1e-3},
    ("*", "fgsm-rs"): {"epochs": 10, "batch_size": 100, "lr": 5e-3, "warmup": 0.3},
    ("*", "pgd"): {"lr": 2e-3, "warmup": 0.3},
    ("*", "trades"): {"lr": 2e-3, "warmup": 0.3},
}
TRAINER_KEYS = ("epochs", "batch_size", "lr")
METHOD_KEYS = ("warmup",)


def recipe_for(arch: str, method: str) -> dict[str, Any]:
    """The recipe's values for ``arch`` trained by ``method``: the generic defaults, then the method's recipe for
    any architecture, then the architecture's own."""
    return {**GENERIC, **RECIPES.get(("*", method), {}), **RECIPES.get((arch, method), {})}


def fill(arch: str, method: str, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``given`` (None where the user said nothing) completed from the recipe; and the keys the recipe filled."""
    recipe = recipe_for(arch, method)
    out, filled = dict(given), []
    for key, value in given.items():
        if value is None and key in recipe:
            out[key] = recipe[key]
            filled.append(key)
    return out, filled
