"""Learning-rate schedules as pure functions of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

from collections.abc import Sequence

SCHEDULES = ("onecycle", "step", "constant")


def learning_rate(
    schedule: str,
    base_lr: float,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup: float = 0.3,
) -> float:
    """Learning rate at optimisation ``step`` (0-based).

    ``onecycle``: linear from 0 to ``base_lr`` over the first ``warmup`` fraction, then linearly to 0
    (the triangular schedule of Wong et al. 2020, arXiv 2001.03994). ``step``: ``base_lr`` times
    ``gamma`` for each epoch milestone passed. ``constant``: ``base_lr``.

    >>> learning_rate("onecycle", 1.0, 14, 100, 10)
    0.5
    """
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return base_lr * gamma ** sum(epoch >= m for m in milestones)
    if schedule == "onecycle":
        t = (step + 1) / max(total_steps, 1)
        return base_lr * (t / warmup if t < warmup else max(0.0, (1.0 - t) / (1.0 - warmup)))
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
