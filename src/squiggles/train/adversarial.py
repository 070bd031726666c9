"""Adversarial training methods: each makes the training loss from a batch by attacking it first.

- ``pgd``: Madry et al. 2017 (arXiv 1706.06083): cross-entropy on PGD-k adversarial examples.
- ``fgsm-rs``: Wong et al. 2020 (arXiv 2001.03994): one FGSM step from a random start (step 1.25 eps).
- ``trades``: Zhang et al. 2019 (arXiv 1901.08573): CE(clean) + beta * KL(p(clean) || p(adversarial)),
  ``batchmean`` as in the reference, with the adversarial input maximising that KL.

They share the threat models of the attacks. ``warmup`` ramps eps linearly from 0 over that fraction of
training. Attacks run in eval mode (the attack functions restore the model's mode), so batch-norm
statistics see only the update's forward pass; the choice is recorded in the recipe as ``attack_mode``.
``step_scale`` multiplies the attack step; the collapse guard (`squiggles.train.guard`) lowers it.

Example:
    >>> from squiggles.train import TrainConfig                     # doctest: +SKIP
    >>> TrainConfig(method="pgd", method_options={"eps": 0.3, "steps": 10, "warmup": 0.3})
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from squiggles.attacks._core import attack_mode
from squiggles.attacks.fgsm import fgsm
from squiggles.attacks.pgd import pgd
from squiggles.errors import SquigglesError
from squiggles.threat import ThreatModel, make_threat
from squiggles.train.methods import METHODS, StepContext, TrainMethod


def current_eps(eps: float, warmup: float, progress: float) -> float:
    """eps ramped linearly from 0 over the first ``warmup`` fraction of training, then constant."""
    return eps if warmup <= 0 else eps * min(1.0, progress / warmup)


def _threat(options: dict[str, Any], ctx: StepContext) -> ThreatModel:
    return make_threat(options["norm"], current_eps(options["eps"], options["warmup"], ctx.progress), ctx.bounds)


def _check(eps: float, warmup: float, attack_mode_name: str, step_scale: float) -> None:
    if not step_scale > 0:
        raise SquigglesError(f"step_scale multiplies the attack step and must be > 0, got {step_scale}")
    if not eps >= 0:
        raise SquigglesError(f"eps must be >= 0, got {eps}")
    if not 0 <= warmup <= 1:
        raise SquigglesError(f"warmup is a fraction of training in [0, 1], got {warmup}")
    if attack_mode_name != "eval":
        raise SquigglesError("attacks during training run in eval mode (attack_mode='eval')")


def _adversarial_ce(model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The update's loss: cross-entropy on the adversarial batch, in train mode (the caller's mode)."""
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def make_pgd(
    eps: float = 0.3,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    warmup: float = 0.0,
    attack_mode: str = "eval",
    step_scale: float = 1.0,
) -> TrainMethod:
    _check(eps, warmup, attack_mode, step_scale)
    options = {"eps": eps, "norm": norm, "warmup": warmup}

    def method(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        threat = _threat(options, ctx)
        size = (step_size if step_size is not None else 2.5 * float(threat.eps) / steps) * step_scale
        x_adv = pgd(ctx.attack_model or model, x, y, threat, steps=steps, step_size=size, seed=ctx.generator).x_adv
        return _adversarial_ce(model, x_adv, y)

    return method


def make_fgsm_rs(
    eps: float = 0.3,
    norm: str = "linf",
    step_size: float | None = None,
    warmup: float = 0.0,
    attack_mode: str = "eval",
    step_scale: float = 1.0,
) -> TrainMethod:
    _check(eps, warmup, attack_mode, step_scale)
    options = {"eps": eps, "norm": norm, "warmup": warmup}

    def method(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        threat = _threat(options, ctx)
        size = (step_size if step_size is not None else 1.25 * float(threat.eps)) * step_scale
        x_adv = fgsm(
            ctx.attack_model or model, x, y, threat, random_start=True, step_size=size, seed=ctx.generator
        ).x_adv
        return _adversarial_ce(model, x_adv, y)

    return method


def make_trades(
    eps: float = 0.3,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    beta: float = 6.0,
    warmup: float = 0.0,
    attack_mode: str = "eval",
    step_scale: float = 1.0,
) -> TrainMethod:
    _check(eps, warmup, attack_mode, step_scale)
    if beta < 0:
        raise SquigglesError(f"beta must be >= 0, got {beta}")
    options = {"eps": eps, "norm": norm, "warmup": warmup}

    def method(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        threat = _threat(options, ctx)
        size = (step_size if step_size is not None else 2.5 * float(threat.eps) / max(steps, 1)) * step_scale
        x_adv = trades_adversary(ctx.attack_model or model, x, threat, steps, size, ctx.generator)
        logits = model(x)
        loss = F.cross_entropy(logits, y) + beta * trades_kl(logits, model(x_adv))
        return loss, logits

    return method


def trades_kl(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """KL(p(clean) || p(adversarial)) summed over classes and averaged over the batch (``batchmean``)."""
    return F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(clean_logits, 1), reduction="batchmean")


def trades_adversary(
    model: nn.Module, x: Tensor, threat: ThreatModel, steps: int, step_size: float | None, generator: torch.Generator
) -> Tensor:
    """The TRADES inner maximisation: from x plus small noise, ascend KL(p(x) || p(x')) and project; the last
    iterate, as in the reference."""
    eps = float(threat.eps)
    size = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    with attack_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), 1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = threat.project(x + 0.001 * noise, x)
        for _ in range(steps if eps > 0 else 0):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(x_adv), 1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = threat.project(x_adv.detach() + threat.step(grad, size), x)
    return x_adv.detach()


METHODS.update({"pgd": make_pgd, "fgsm-rs": make_fgsm_rs, "trades": make_trades})
