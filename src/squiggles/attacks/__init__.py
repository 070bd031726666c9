"""Attacks. Each is ``name(model, x, y_or_goal, threat, **options) -> AttackResult``.

``y_or_goal``: true labels (a tensor), ``None`` (the model's own predictions), `Untargeted` or `Targeted`.
"""

from squiggles.attacks.fgsm import fgsm
from squiggles.attacks.pgd import pgd

__all__ = ["fgsm", "pgd"]
