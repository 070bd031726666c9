"""Per-example attack losses, larger = closer to the attacker's goal.

Untargeted losses push away from ``labels``; with ``targets`` they pull toward the target class.
Margin and DLR work on logits and do not saturate the way softmax cross-entropy does.

Example:
    >>> import torch
    >>> from squiggles.losses import margin
    >>> margin(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0])).tolist()
    [-1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from squiggles.errors import SquigglesError

Loss = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def cross_entropy(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Cross-entropy of the labels (untargeted), or minus that of the targets (targeted)."""
    if targets is not None:
        return -F.cross_entropy(logits, targets, reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")


def _other_max(logits: Tensor, cls: Tensor) -> Tensor:
    """Largest logit among the classes other than ``cls``."""
    masked = logits.scatter(1, cls.unsqueeze(1), torch.finfo(logits.dtype).min)
    return masked.amax(1)


def margin(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Carlini-Wagner margin (arXiv 1608.04644): best other logit minus the label's (> 0 means success);
    targeted: the target's logit minus the best other."""
    if targets is not None:
        return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - _other_max(logits, targets)
    return _other_max(logits, labels) - logits.gather(1, labels.unsqueeze(1)).squeeze(1)


def dlr(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, arXiv 2003.01690), invariant to shifts and scaling.

    Untargeted: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3). Targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2).
    """
    if logits.shape[1] < (4 if targets is not None else 3):
        raise SquigglesError("the DLR loss needs at least 3 classes (4 for targeted); use 'margin' instead")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    eps = torch.finfo(logits.dtype).eps
    if targets is not None:
        z_t = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + eps)
    return -(z_y - _other_max(logits, labels)) / (top[:, 0] - top[:, 2] + eps)


LOSSES: dict[str, Loss] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name: str | Loss) -> Loss:
    if callable(name):
        return name
    if name not in LOSSES:
        raise SquigglesError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
