"""Training methods for certificates: noise for randomized smoothing, bounds for verified robustness.

- ``noise``: Gaussian data augmentation (Cohen et al. 2019, arXiv 1902.02918): cross-entropy on ``x + N(0, sigma^2)``,
  the base classifier randomized smoothing certifies.
- ``consistency``: Jeong and Shin 2020 (arXiv 2006.04062): ``m`` noisy copies per point; their mean cross-entropy
  plus ``lbd`` times the mean KL from the copies' average prediction to each copy, plus ``eta`` times the
  entropy of that average. The reference's MNIST setting is ``m = 2, lbd = 10, eta = 0.5``.
- ``ibp``: Gowal et al. 2018 (arXiv 1810.12715): ``kappa * CE(clean) + (1 - kappa) * CE(worst-case logits)``,
  the worst case from interval bounds on every margin; eps is 0 for the first ``start`` share of training,
  then ramps linearly to ``1.1 eps`` (the paper trains 10% above the test budget) over the next ``warmup``
  share, while kappa falls from 1 to ``final_kappa`` (0.5).
- ``crown-ibp``: Zhang et al. 2020 (arXiv 1906.06316): the worst case from ``beta * CROWN-IBP + (1 - beta) * IBP``
  margins, beta falling from 1 to 0 with the ramp (their ``final_beta = 0``).

Example:
    >>> from squiggles.train import TrainConfig                     # doctest: +SKIP
    >>> TrainConfig(method="crown-ibp", method_options={"eps": 0.3})
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from squiggles.certify.bounds import margin_bounds
from squiggles.errors import SquigglesError
from squiggles.train.methods import METHODS, UNGUARDED, StepContext, TrainMethod

# Methods that train a base classifier for randomized smoothing: its guarantee is an L2 radius from `certify`.
SMOOTHING = ("noise", "consistency")


def _check_sigma(sigma: float) -> None:
    if not sigma > 0:
        raise SquigglesError(f"--sigma is the noise level and must be > 0, got {sigma}")


def make_noise(sigma: float = 0.25) -> TrainMethod:
    _check_sigma(sigma)

    def method(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        logits = model(x + sigma * noise)
        return F.cross_entropy(logits, y), logits

    return method


def make_consistency(sigma: float = 0.25, m: int = 2, lbd: float = 10.0, eta: float = 0.5) -> TrainMethod:
    _check_sigma(sigma)
    if m < 1:
        raise SquigglesError(f"consistency: m (noisy copies per point) must be >= 1, got {m}")
    if lbd < 0 or eta < 0:
        raise SquigglesError(f"consistency: lbd and eta are weights >= 0, got {lbd} and {eta}")

    def method(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        noise = torch.randn((m, *x.shape), generator=ctx.generator, device=x.device, dtype=x.dtype)
        logits = model((x.unsqueeze(0) + sigma * noise).flatten(0, 1))
        per_copy = logits.view(m, len(x), -1)
        ce = F.cross_entropy(logits, y.repeat(m))
        log_p = F.log_softmax(per_copy.float(), 2)
        mean_p = log_p.exp().mean(0)
        # KL(mean || copy) per copy, summed over classes, averaged over copies and points.
        kl = (mean_p.unsqueeze(0) * (mean_p.clamp_min(1e-12).log().unsqueeze(0) - log_p)).sum(2).mean()
        entropy = -(mean_p * mean_p.clamp_min(1e-12).log()).sum(1).mean()
        return ce + lbd * kl + eta * entropy, per_copy[0]

    return method


def ramp(progress: float, start: float, warmup: float) -> float:
    """0 before ``start``, then linear to 1 over ``warmup`` (both shares of training), then 1."""
    if progress < start:
        return 0.0
    return 1.0 if warmup <= 0 else min(1.0, (progress - start) / warmup)


def _bound_method(kind: str):  # noqa: ANN202
    def make(eps: float = 0.3, norm: str = "linf", start: float = 0.05, warmup: float = 0.5, train_scale: float = 1.1,
             final_kappa: float = 0.5, step_scale: float = 1.0) -> TrainMethod:
        # step_scale: the collapse guard's knob for attacks; a bound has no step, and these methods are unguarded.
        if not eps >= 0:
            raise SquigglesError(f"eps must be >= 0, got {eps}")
        if norm not in ("linf", "l2"):
            raise SquigglesError(f"--method {kind} bounds linf or l2 balls, not {norm!r}")
        if not (0 <= start <= 1 and 0 <= warmup <= 1):
            raise SquigglesError(f"start and warmup are shares of training in [0, 1], got {start} and {warmup}")
        if not (0 <= final_kappa <= 1 and train_scale > 0):
            raise SquigglesError(f"final_kappa must be in [0, 1] and train_scale > 0, got {final_kappa}, {train_scale}")

        def method(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
            t = ramp(ctx.progress, start, warmup)
            logits = model(x)
            clean = F.cross_entropy(logits, y)
            eps_t = eps * train_scale * t
            if eps_t == 0:
                return clean, logits
            kappa = 1.0 - (1.0 - final_kappa) * t
            with torch.autocast(x.device.type, enabled=False):  # bounds in float32: bf16 would loosen them
                margins = _margins(model, x.float(), y, norm, eps_t, kind, t, ctx.bounds)
            robust = F.cross_entropy(-margins, y)
            return kappa * clean + (1 - kappa) * robust, logits

        return method

    return make


def _margins(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, kind: str, t: float,
             bounds: tuple[float, float]) -> Tensor:
    from squiggles.certify.layers import UnsupportedLayer

    try:
        margins = margin_bounds(model, x, y, norm, eps, "ibp", bounds)
        if kind == "crown-ibp" and t < 1:
            beta = 1.0 - t  # CROWN's weight falls to 0 with the ramp: pure IBP at the end, as in the paper
            margins = beta * margin_bounds(model, x, y, norm, eps, "crown-ibp", bounds) + (1 - beta) * margins
    except UnsupportedLayer as exc:
        raise SquigglesError(f"--method {kind} trains through bounds on every layer: {exc}. Certified training "
                             "takes models without dropout or batch norm (small-cnn, madry-cnn, mlp, linear)") from None
    return margins


METHODS.update({"noise": make_noise, "consistency": make_consistency, "ibp": _bound_method("ibp"),
                "crown-ibp": _bound_method("crown-ibp")})
# A bound cannot be fooled the way a one-step attack is, so there is no catastrophic overfitting to guard against.
UNGUARDED.update({"noise", "consistency", "ibp", "crown-ibp"})
