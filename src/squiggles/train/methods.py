"""Ways of making the training loss from a batch. Each method is a pure function of (model, x, y, context).

Adversarial methods (PGD, FGSM with random start, TRADES) plug in here as further entries of `METHODS`;
the trainer loop does not change.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from squiggles.errors import SquigglesError


@dataclass(frozen=True)
class StepContext:
    """What a method may know about where training is: epoch, fraction done, a seeded generator, bounds.

    ``attack_model`` is the bare model for attacks when the one being trained is wrapped (DistributedDataParallel
    must see exactly one forward per backward, so attacks go around it).
    """

    epoch: int
    progress: float
    generator: torch.Generator
    bounds: tuple[float, float]
    attack_model: nn.Module | None = None


class TrainMethod(Protocol):
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, logits)``; ``logits`` are what the progress bar's accuracy is computed from."""
        ...


def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain empirical risk minimisation: cross-entropy on the clean batch."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def make_standard(**options: Any) -> TrainMethod:
    if options:
        raise SquigglesError(f"method 'standard' takes no options, got {', '.join(options)}")
    return standard


METHODS: dict[str, Callable[..., TrainMethod]] = {"standard": make_standard}
# Methods whose loss cannot be fooled the way a one-step attack is (noise, bounds): the collapse guard skips them.
UNGUARDED: set[str] = set()
# Methods whose threat is not a norm ball: how to build it from the method's options and the input bounds.
THREATS_OF: dict[str, Callable[[dict[str, Any], tuple[float, float]], Any]] = {}


def make_method(name: str, **options: Any) -> TrainMethod:
    """Build a training method by name with its options."""
    if name not in METHODS:
        raise SquigglesError(f"unknown training method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**options)


def method_defaults(name: str) -> dict[str, Any]:
    """A method's default options: what a recipe means where it says nothing (e.g. eps and norm)."""
    params = inspect.signature(METHODS[name]).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def method_threat(method: str, options: dict[str, Any], bounds: tuple[float, float]) -> Any:
    """The threat model a method trains against (what the collapse guard and the final evaluation measure), or
    None where it has none (standard training, eps 0)."""
    from squiggles.threat import make_threat

    opts = method_defaults(method) | options
    if method in THREATS_OF:
        return THREATS_OF[method](opts, bounds)
    if method == "standard" or not opts.get("eps"):
        return None
    return make_threat(opts["norm"], opts["eps"], bounds)
