"""Threat models: the set of allowed perturbations, shared by every attack, by training and by evaluation.

A threat model owns the four things that depend on the norm: the norm itself (over ``flatten(1)``, so any
input shape works), a uniform random start inside the ball, the steepest-ascent step, and the projection
back onto the ball intersected with the input bounds. ``eps`` may be a float or a per-example tensor.

Example:
    >>> import torch
    >>> from squiggles.threat import Linf
    >>> t = Linf(0.3)
    >>> x = torch.full((2, 1, 4, 4), 0.5)
    >>> bool((t.norm(t.project(x + 1.0, x) - x) <= 0.3 + 1e-6).all())
    True
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from squiggles.errors import SquigglesError

Eps = float | Tensor
Bounds = tuple[float, float]


def _view(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example vector so it broadcasts against ``x`` (N x ...)."""
    return v.view(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class ThreatModel(ABC):
    """Perturbations ``delta`` with ``norm(delta) <= eps`` and ``x + delta`` inside ``bounds``."""

    eps: Eps
    bounds: Bounds = (0.0, 1.0)
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        eps = self.eps
        bad = (eps < 0).any().item() if isinstance(eps, Tensor) else not (eps >= 0)
        if bad:
            raise SquigglesError(f"eps must be >= 0 (got {eps}); a threat model's budget cannot be negative")
        lo, hi = self.bounds
        if not lo < hi:
            raise SquigglesError(f"bounds must satisfy low < high, got {self.bounds}")

    # --- the norm -------------------------------------------------------------------------------
    @abstractmethod
    def norm(self, delta: Tensor) -> Tensor:
        """Per-example norm of ``delta`` over all non-batch dimensions."""

    # --- moves ----------------------------------------------------------------------------------
    @abstractmethod
    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A point drawn uniformly from the ball around ``x``, clipped to the bounds."""

    @abstractmethod
    def step(self, grad: Tensor, step_size: Eps) -> Tensor:
        """The steepest-ascent move of size ``step_size`` (in this norm) along ``grad``."""

    @abstractmethod
    def project_delta(self, delta: Tensor) -> Tensor:
        """Project a perturbation onto the ball (bounds not applied)."""

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Nearest point of the ball around ``x`` (intersected with the bounds) for ``x_adv``.

        Clipping to the bounds after projecting onto the ball cannot leave the ball, because clipping
        only moves each coordinate toward ``x`` (which lies inside the bounds).
        """
        return self.clip(x + self.project_delta(x_adv - x))

    def clip(self, x: Tensor) -> Tensor:
        lo, hi = self.bounds
        return x.clamp(lo, hi)

    # --- helpers --------------------------------------------------------------------------------
    def eps_like(self, x: Tensor) -> Tensor:
        """``eps`` as a per-example tensor on x's device and dtype, shaped to broadcast against ``x``."""
        eps = torch.as_tensor(self.eps, dtype=x.dtype, device=x.device)
        return _view(eps.expand(len(x)) if eps.dim() == 0 else eps, x)

    def with_eps(self, eps: Eps) -> ThreatModel:
        """The same threat model with another budget."""
        return dataclasses.replace(self, eps=eps)

    def describe(self) -> dict[str, object]:
        eps = self.eps.tolist() if isinstance(self.eps, Tensor) else self.eps
        return {"norm": self.name, "eps": eps, "bounds": list(self.bounds)}

    def __repr__(self) -> str:
        eps = "per-example" if isinstance(self.eps, Tensor) and self.eps.dim() > 0 else float(self.eps)
        return f"{type(self).__name__}(eps={eps}, bounds={self.bounds})"


@dataclass(frozen=True, repr=False)
class Linf(ThreatModel):
    """L-infinity ball: every coordinate moves by at most ``eps`` (Madry et al. 2017, arXiv 1706.06083)."""

    name: ClassVar[str] = "linf"

    def norm(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(1)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.clip(x + (2 * u - 1) * self.eps_like(x))

    def step(self, grad: Tensor, step_size: Eps) -> Tensor:
        return grad.sign() * _size(step_size, grad)

    def project_delta(self, delta: Tensor) -> Tensor:
        eps = self.eps_like(delta)
        return torch.maximum(torch.minimum(delta, eps), -eps)


@dataclass(frozen=True, repr=False)
class L2(ThreatModel):
    """Euclidean ball. Random starts use a Gaussian direction and radius ``eps * U^(1/d)``."""

    name: ClassVar[str] = "l2"

    def norm(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _view(self.norm(direction).clamp_min(_tiny(x)), x)
        u = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
        return self.clip(x + direction * _view(u ** (1.0 / d), x) * self.eps_like(x))

    def step(self, grad: Tensor, step_size: Eps) -> Tensor:
        return grad / _view(self.norm(grad).clamp_min(_tiny(grad)), grad) * _size(step_size, grad)

    def project_delta(self, delta: Tensor) -> Tensor:
        eps = self.eps_like(delta).flatten()
        norms = self.norm(delta)
        factor = torch.where(norms > eps, eps / norms.clamp_min(_tiny(delta)), torch.ones_like(norms))
        return delta * _view(factor, delta)


@dataclass(frozen=True, repr=False)
class L1(ThreatModel):
    """L1 ball. The step moves the coordinates with the largest gradient (a sparse steepest ascent,
    ``sparsity`` of them); projection is the sort-based method of Duchi et al. 2008."""

    sparsity: float = 0.05
    name: ClassVar[str] = "l1"

    def norm(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().sum(1)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Uniform in the L1 ball: exponentials normalised with one extra exponential, random signs.
        flat = x.flatten(1)
        e = torch.empty(flat.shape[0], flat.shape[1] + 1, device=x.device, dtype=x.dtype)
        e.exponential_(generator=generator)
        point = e[:, :-1] / e.sum(1, keepdim=True)
        signs = torch.randint(0, 2, flat.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        delta = (point * signs).view_as(x) * self.eps_like(x)
        return self.clip(x + delta)

    def step(self, grad: Tensor, step_size: Eps) -> Tensor:
        flat = grad.flatten(1)
        k = max(1, int(math.ceil(self.sparsity * flat.shape[1])))
        thresh = flat.abs().topk(k, dim=1).values[:, -1:]
        mask = (flat.abs() >= thresh).to(grad.dtype)
        direction = flat.sign() * mask
        direction = direction / direction.abs().sum(1, keepdim=True).clamp_min(_tiny(grad))
        return direction.view_as(grad) * _size(step_size, grad)

    def project_delta(self, delta: Tensor) -> Tensor:
        flat = delta.flatten(1)
        eps = self.eps_like(delta).flatten()
        abs_ = flat.abs()
        outside = abs_.sum(1) > eps
        if not outside.any():
            return delta
        # Duchi et al.: soft-threshold by theta so that the L1 norm equals eps.
        mu = abs_.sort(dim=1, descending=True).values
        cums = mu.cumsum(1) - eps.unsqueeze(1)
        ks = torch.arange(1, flat.shape[1] + 1, device=delta.device, dtype=delta.dtype)
        cond = mu - cums / ks > 0
        rho = cond.to(torch.int64).cumsum(1).argmax(1, keepdim=True)
        theta = cums.gather(1, rho) / (rho + 1).to(delta.dtype)
        projected = flat.sign() * (abs_ - theta.clamp_min(0)).clamp_min(0)
        return torch.where(outside.unsqueeze(1), projected, flat).view_as(delta)


THREATS: dict[str, type[ThreatModel]] = {"linf": Linf, "l2": L2, "l1": L1}


def make_threat(norm: str, eps: Eps, bounds: Bounds = (0.0, 1.0)) -> ThreatModel:
    """Build a threat model from a norm name (``linf``, ``l2``, ``l1``)."""
    key = norm.lower().replace("-", "").replace("_", "")
    key = {"inf": "linf", "2": "l2", "1": "l1"}.get(key, key)
    if key not in THREATS:
        raise SquigglesError(f"unknown norm {norm!r}; choose one of {', '.join(THREATS)}")
    return THREATS[key](eps, bounds)


def _size(step_size: Eps, like: Tensor) -> Tensor | float:
    if isinstance(step_size, Tensor) and step_size.dim() > 0:
        return _view(step_size.to(like.dtype), like)
    return step_size


def _tiny(x: Tensor) -> float:
    return float(torch.finfo(x.dtype).tiny)
