"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019, arXiv 1902.02918): PREDICT and CERTIFY.

The smoothed classifier ``g(x)`` returns the class the base model predicts most often under Gaussian noise
``N(0, sigma^2 I)``. If that class has probability at least ``pA > 1/2``, ``g`` is constant within the L2 radius
``sigma * Phi^-1(pA)`` around ``x``. CERTIFY follows the paper's protocol: ``n0`` draws choose the class, ``n``
fresh draws estimate it, a one-sided Clopper-Pearson bound at level ``alpha`` gives ``pA_lower``, and the point
abstains when ``pA_lower < 1/2``. PREDICT abstains when the two most frequent classes are not separated by a
two-sided binomial test at level ``alpha``.

Noise is drawn from a seeded generator and in large batches that mix points, so few forward passes carry
many draws; a CPU model built from standard layers runs as a frozen inference graph (`squiggles.frozen`).
The base model may be any callable from inputs to logits or scores.

Example:
    >>> import torch
    >>> from torch import nn
    >>> w = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    >>> net = nn.Linear(2, 2, bias=False); net.weight.data = w        # class 0 where x_0 > 0
    >>> cert = certify(net, torch.tensor([[0.5, 0.0]]), sigma=0.25, n0=100, n=10_000, alpha=0.001, seed=0)
    >>> int(cert.prediction[0]), round(float(cert.radius[0]), 1)      # the hyperplane is 0.5 away
    (0, 0.5)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from squiggles.errors import SquigglesError
from squiggles.runtime import eval_mode

ABSTAIN = -1
Forward = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SmoothingCertificate:
    """Per point: the smoothed prediction (``ABSTAIN`` = -1), the certified L2 radius (0 where abstaining),
    ``pA_lower`` and the count of the chosen class among the ``n`` estimation draws; and the model calls spent."""

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    count: Tensor
    model_calls: int


def check_smoothing(sigma: float, n0: int, n: int, alpha: float) -> None:
    """Refuse settings the protocol does not define, naming the flag and the fix."""
    if not sigma > 0:
        raise SquigglesError(f"--sigma is the noise level and must be > 0, got {sigma:g}")
    if n0 < 1:
        raise SquigglesError(f"--n0 (selection draws) must be >= 1, got {n0}")
    if n < 1:
        raise SquigglesError(f"--samples (estimation draws) must be >= 1, got {n}")
    if not 0 < alpha < 1:
        raise SquigglesError(f"--alpha is a failure probability in (0, 1), e.g. 0.001; got {alpha:g}")


def sample_counts(model: Forward, x: Tensor, sigma: float, n: int, num_classes: int, *, batch_size: int = 2000,
                  generator: torch.Generator) -> Tensor:
    """How often the model predicts each class under ``n`` Gaussian draws around each row of ``x``: B x K."""
    from squiggles.frozen import forward_for

    b = len(x)
    counts = torch.zeros(b * num_classes, dtype=torch.long, device=x.device)
    total = b * n
    with eval_mode(model) if isinstance(model, torch.nn.Module) else contextlib.nullcontext(), torch.no_grad():
        forward = forward_for(model, x[:1], total)
        # One buffer, refilled in place: allocating a fresh noise tensor per batch costs more than drawing it.
        buf = torch.empty((min(batch_size, total), *x.shape[1:]), device=x.device, dtype=x.dtype)
        for start in range(0, total, batch_size):
            rows = torch.arange(start, min(start + batch_size, total), device=x.device) // n
            noisy = buf[: len(rows)].normal_(0.0, sigma, generator=generator).add_(x[rows])
            pred = forward(noisy).argmax(1)
            counts += torch.bincount(rows * num_classes + pred, minlength=b * num_classes)
    return counts.view(b, num_classes)


def lower_confidence_bound(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion (0 where there is no success)."""
    from scipy.stats import beta

    k = successes.double().cpu().numpy()
    bound = beta.ppf(alpha, k, trials - k + 1)
    return torch.nan_to_num(torch.from_numpy(bound), nan=0.0).to(successes.device)


def radius_of(p_lower: Tensor, sigma: float) -> Tensor:
    """``sigma * Phi^-1(pA_lower)``: the certified L2 radius (0 where ``pA_lower <= 1/2``)."""
    from scipy.stats import norm

    r = sigma * norm.ppf(p_lower.double().cpu().numpy())
    return torch.from_numpy(r).clamp_min(0).to(p_lower.device)


def certify(model: Forward, x: Tensor, sigma: float, *, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
            num_classes: int | None = None, batch_size: int = 2000, seed: int | torch.Generator = 0) -> (
        SmoothingCertificate):
    """Cohen et al.'s CERTIFY for every row of ``x`` (one shared, seeded stream of noise)."""
    check_smoothing(sigma, n0, n, alpha)
    gen = _generator(seed, x.device)
    k = num_classes or _classes(model, x)
    selection = sample_counts(model, x, sigma, n0, k, batch_size=batch_size, generator=gen)
    guess = selection.argmax(1)
    counts = sample_counts(model, x, sigma, n, k, batch_size=batch_size, generator=gen)
    count = counts.gather(1, guess.unsqueeze(1)).squeeze(1)
    p_lower = lower_confidence_bound(count, n, alpha)
    certified = p_lower >= 0.5  # the paper abstains only below one half
    radius = torch.where(certified, radius_of(p_lower, sigma), torch.zeros_like(p_lower))
    prediction = torch.where(certified, guess, torch.full_like(guess, ABSTAIN))
    return SmoothingCertificate(prediction, radius.float(), p_lower.float(), count, len(x) * (n0 + n))


def predict(model: Forward, x: Tensor, sigma: float, *, n: int = 1000, alpha: float = 0.001,
            num_classes: int | None = None, batch_size: int = 2000, seed: int | torch.Generator = 0) -> Tensor:
    """Cohen et al.'s PREDICT: the most frequent class under noise, or ``ABSTAIN`` where a two-sided binomial test
    cannot tell it from the runner-up at level ``alpha``."""
    from scipy.stats import binomtest

    check_smoothing(sigma, 1, n, alpha)
    k = num_classes or _classes(model, x)
    counts = sample_counts(model, x, sigma, n, k, batch_size=batch_size, generator=_generator(seed, x.device))
    top = counts.topk(min(2, k), dim=1)
    out = top.indices[:, 0].clone()
    for i, (c1, c2) in enumerate(top.values.tolist() if k > 1 else []):
        if binomtest(int(c1), int(c1 + c2), 0.5).pvalue > alpha:
            out[i] = ABSTAIN
    return out


def certified_accuracy(prediction: Tensor, radius: Tensor, y: Tensor, radii: list[float]) -> list[float]:
    """Share of points predicted correctly with a radius of at least r, for each r (Cohen et al.'s curve)."""
    correct = prediction.cpu() == y.cpu()
    return [float((correct & (radius.cpu() >= r)).double().mean()) if len(y) else float("nan") for r in radii]


def _classes(model: Forward, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def _generator(seed: int | torch.Generator, device: torch.device) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(int(seed))
