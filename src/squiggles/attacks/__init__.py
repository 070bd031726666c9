"""Attacks. Each is ``name(model, x, y_or_goal, threat, **options) -> AttackResult``.

``y_or_goal``: true labels (a tensor), ``None`` (the model's own predictions), `Untargeted` or `Targeted`.
The registry (`squiggles.attacks.registry.ATTACKS`) lists them all with the norms they support.
"""

from squiggles.attacks.apgd import apgd, apgd_targeted
from squiggles.attacks.fgsm import fgsm
from squiggles.attacks.minimal import cw, fmn
from squiggles.attacks.pgd import pgd
from squiggles.attacks.registry import ATTACKS, get_attack
from squiggles.attacks.square import square

__all__ = ["ATTACKS", "apgd", "apgd_targeted", "cw", "fgsm", "fmn", "get_attack", "pgd", "square"]
