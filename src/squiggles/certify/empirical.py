"""The attack's figure beside a certificate, on the same points and budget.

- Bounds (Linf or L2 ball around the base model): the `evaluate` cascade (``quick`` by default).
- Smoothing (L2 radius around the smoothed classifier): PGD on the smoothed soft classifier, as SmoothAdv
  does (Salman et al. 2019, arXiv 1906.04584): ascend ``-log E_noise[softmax f(x' + noise)]`` with
  ``samples`` noise draws per step, then read the smoothed prediction at ``x'`` by a majority of ``votes``
  draws. A point counts as robust when the vote is still the label.

Example:
    >>> import torch                                                            # doctest: +SKIP
    >>> rows = smoothing_empirical(model, x, y, sigma=0.25, radii=[0.5, 1.0])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from squiggles.certify.smoothing import sample_counts
from squiggles.runtime import eval_mode
from squiggles.threat import make_threat


def smoothed_pgd(model: nn.Module, x: Tensor, y: Tensor, sigma: float, eps: float, *, steps: int = 20,
                 samples: int = 16, bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator) -> Tensor:
    """L2 PGD against the smoothed classifier's expected softmax (the last iterate, inside budget and bounds)."""
    threat = make_threat("l2", eps, bounds)
    size = 2.5 * eps / steps
    x_adv = x.clone()
    with eval_mode(model):
        for _ in range(steps if eps > 0 else 0):
            x_adv = x_adv.detach().requires_grad_(True)
            noise = torch.randn((samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype) * sigma
            with torch.enable_grad():
                probs = F.softmax(model((x_adv.unsqueeze(0) + noise).flatten(0, 1)), 1)
                mean = probs.view(samples, len(x), -1).mean(0)
                loss = F.nll_loss(mean.clamp_min(1e-12).log(), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(x_adv.detach() + threat.step(grad, size), x)
    return x_adv.detach()


def smoothing_empirical(model: nn.Module, x: Tensor, y: Tensor, sigma: float, radii: list[float], *,
                        steps: int = 20, samples: int = 16, votes: int = 1000, batch_size: int = 100, seed: int = 0,
                        bounds: tuple[float, float] = (0.0, 1.0)) -> list[dict[str, Any]]:
    """Per radius: the share of points whose smoothed vote stays right under `smoothed_pgd`."""
    gen = torch.Generator(device=x.device).manual_seed(seed + 7_777)
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    rows = []
    for r in radii:
        right = 0
        for s in range(0, len(x), batch_size):
            xb, yb = x[s : s + batch_size], y[s : s + batch_size]
            adv = smoothed_pgd(model, xb, yb, sigma, r, steps=steps, samples=samples, bounds=bounds, generator=gen)
            vote = sample_counts(model, adv, sigma, votes, k, generator=gen).argmax(1)
            right += int((vote == yb).sum())
        rows.append({"budget": r, "robust_accuracy": right / len(x) if len(x) else float("nan"),
                     "attack": f"smoothed PGD ({steps} steps, {samples} draws), {votes}-draw vote"})
    return rows


def bounds_empirical(model: nn.Module, data: Any, norm: str, eps: list[float], attacks: str = "quick",
                     seed: int = 0, device: torch.device | None = None) -> list[dict[str, Any]]:
    """Per eps: the cascade's robust accuracy on the base model (no state file, no progress bar)."""
    from squiggles.evaluation import evaluate

    threat = make_threat(norm, eps[0], tuple(data.bounds) if hasattr(data, "bounds") else (0.0, 1.0))
    res = evaluate(model, data, threat, attacks, eps=eps, seed=seed, progress=False, keep_adv=False, device=device)
    return [{"budget": row["eps"], "robust_accuracy": row["robust_accuracy"], "attack": f"evaluate {attacks}"}
            for row in res.curve()]
