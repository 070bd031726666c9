"""What an attack is after: any wrong label (untargeted) or one chosen class (targeted).

Pass labels as a tensor (untargeted against those labels), ``None`` (untargeted against the model's own
clean predictions, recorded as ``labels_source="pred"``), `Untargeted(labels)` or `Targeted(targets)`.
There is no boolean flag that reinterprets labels as targets: passing true labels as targets is an error.

Example:
    >>> import torch
    >>> from squiggles.goals import Targeted, next_class
    >>> y = torch.tensor([0, 9])
    >>> Targeted(next_class(y, 10), labels=y).targets.tolist()
    [1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from squiggles.errors import SquigglesError


@dataclass(frozen=True)
class Untargeted:
    """Succeed when the prediction differs from ``labels`` (the model's predictions when ``None``)."""

    labels: Tensor | None = None


@dataclass(frozen=True)
class Targeted:
    """Succeed when the prediction equals ``targets``. ``labels`` (optional) are checked to differ."""

    targets: Tensor
    labels: Tensor | None = None


Goal = Untargeted | Targeted
GoalLike = Tensor | Goal | None


@dataclass(frozen=True)
class ResolvedGoal:
    """A goal with everything filled in for one batch: labels, targets and where the labels came from."""

    labels: Tensor
    targets: Tensor | None
    labels_source: str

    @property
    def targeted(self) -> bool:
        return self.targets is not None

    def success(self, logits: Tensor) -> Tensor:
        pred = logits.argmax(1)
        return pred == self.targets if self.targets is not None else pred != self.labels

    def subset(self, idx: Tensor) -> ResolvedGoal:
        targets = self.targets[idx] if self.targets is not None else None
        return ResolvedGoal(self.labels[idx], targets, self.labels_source)


def as_goal(y_or_goal: GoalLike) -> Goal:
    if y_or_goal is None:
        return Untargeted(None)
    if isinstance(y_or_goal, Untargeted | Targeted):
        return y_or_goal
    if isinstance(y_or_goal, Tensor):
        return Untargeted(y_or_goal)
    raise SquigglesError(
        f"expected labels (a tensor), None, Untargeted(...) or Targeted(...), got {type(y_or_goal).__name__}"
    )


def resolve_goal(goal: Goal, clean_logits: Tensor) -> ResolvedGoal:
    """Fill in labels from ``clean_logits`` when none were given and validate shapes and class ranges."""
    n, k = clean_logits.shape
    device = clean_logits.device
    pred = clean_logits.argmax(1)
    labels = goal.labels
    source = "given" if labels is not None else "pred"
    labels = _check_classes("labels", labels, n, k, device) if labels is not None else pred
    if isinstance(goal, Targeted):
        targets = _check_classes("targets", goal.targets, n, k, device)
        if goal.labels is not None and (targets == labels).any():
            bad = int((targets == labels).sum())
            raise SquigglesError(
                f"{bad} target(s) equal the true label; a targeted attack needs a different class "
                "(use random_other, least_likely or next_class to pick targets)"
            )
        return ResolvedGoal(labels, targets, source)
    return ResolvedGoal(labels, None, source)


def _check_classes(what: str, t: Tensor, n: int, k: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    if t.shape != (n,):
        raise SquigglesError(f"{what} must have shape ({n},) to match the inputs, got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise SquigglesError(f"{what} must be integer class indices, got dtype {t.dtype}")
    if n and (t.min() < 0 or t.max() >= k):
        raise SquigglesError(
            f"{what} must lie in [0, {k - 1}] for a model with {k} outputs; "
            f"got values from {int(t.min())} to {int(t.max())}"
        )
    return t.long()


# --- choosing targets ---------------------------------------------------------------------------------


def next_class(labels: Tensor, num_classes: int) -> Tensor:
    """``(y + 1) mod K``: the deterministic target of Ilyas et al.'s D_det."""
    return (labels + 1) % num_classes


def random_other(labels: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random class different from each label."""
    offset = torch.randint(1, num_classes, labels.shape, generator=generator, device=labels.device)
    return (labels + offset) % num_classes


def least_likely(logits: Tensor) -> Tensor:
    """The class the model finds least likely."""
    return logits.argmin(1)
