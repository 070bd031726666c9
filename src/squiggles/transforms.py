"""Threats beyond the norm ball: rotations and translations (`Spatial`), optionally with a norm ball on top.

A spatial threat's parameter is, per example, ``(angle in degrees, shift right in pixels, shift down in
pixels)``. Like the norm balls it owns its parameter space (``sample``, ``step``, ``project``) and a
differentiable ``apply(x, params)``, so the grid, worst-of-k and first-order attacks, worst-of-k training and
the evaluation cascade all read the same object. Engstrom et al. 2019 (arXiv 1712.02779) set the MNIST
protocol followed here: rotations within +-30 degrees and translations within +-3 pixels, zero padding.

Example:
    >>> import torch
    >>> from squiggles.transforms import Spatial
    >>> s = Spatial(max_rotation=30, max_translation=3)
    >>> x = torch.rand(2, 1, 28, 28)
    >>> bool(torch.allclose(s.apply(x, s.identity(x)), x, atol=1e-6))
    True
    >>> s.grid().shape  # 31 rotations x 5 x 5 translations
    torch.Size([775, 3])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from squiggles.errors import SquigglesError
from squiggles.threat import Bounds, ThreatModel

# Default grid of Engstrom et al.: 31 rotations x 5 x 5 translations = 775 transforms.
GRID_ROTATIONS = 31
GRID_TRANSLATIONS = 5


@dataclass(frozen=True)
class Spatial:
    """Per-example rotation within ``+-max_rotation`` degrees and translation within ``+-max_translation``
    pixels (each axis), applied with ``affine_grid``/``grid_sample`` (bilinear, zero padding) about the centre.

    ``Spatial(...) + Linf(eps)`` adds a norm ball on the transformed image (Engstrom et al., section 5).
    """

    max_rotation: float = 30.0
    max_translation: float = 3.0
    bounds: Bounds = (0.0, 1.0)
    # The budget as a fraction of the box (1: the whole box), so that an evaluation can sweep it like a norm's eps.
    eps: float = 1.0
    name: ClassVar[str] = "spatial"

    def __post_init__(self) -> None:
        if not (0 <= self.max_rotation <= 180):
            raise SquigglesError(
                f"max_rotation (--max-rotation) must be between 0 and 180 degrees, got {self.max_rotation}; "
                "a rotation by more than 180 degrees is one by less the other way"
            )
        if not (self.max_translation >= 0):
            raise SquigglesError(
                f"max_translation (--max-translation) must be >= 0 pixels, got {self.max_translation}; it bounds "
                "the shift both ways"
            )
        if isinstance(self.eps, Tensor) or not (self.eps >= 0):
            raise SquigglesError(f"a spatial threat's eps (the fraction of its box) must be one number >= 0, "
                                 f"got {self.eps}")
        if self.eps * self.max_rotation > 180:
            raise SquigglesError(f"eps {self.eps} scales the rotation to {self.eps * self.max_rotation:g} degrees, "
                                 "more than 180; lower eps or --max-rotation")
        lo, hi = self.bounds
        if not lo < hi:
            raise SquigglesError(f"bounds must satisfy low < high, got {self.bounds}")

    # --- the parameter space ---------------------------------------------------------------------
    @property
    def limits(self) -> tuple[float, float, float]:
        """The half-widths of the parameter box at this budget: (degrees, pixels, pixels)."""
        e = float(self.eps)
        return (e * self.max_rotation, e * self.max_translation, e * self.max_translation)

    def with_eps(self, eps: float) -> Spatial:
        """The same threat with the box scaled to ``eps`` (a fraction of the full box)."""
        return dataclasses.replace(self, eps=float(eps))

    def _limits_like(self, like: Tensor) -> Tensor:
        return torch.tensor(self.limits, dtype=like.dtype, device=like.device)

    def identity(self, x: Tensor) -> Tensor:
        """The no-op parameters for each example of ``x``: ``N x 3`` zeros."""
        return torch.zeros(len(x), 3, dtype=x.dtype, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Parameters drawn uniformly from the box, one row per example of ``x``."""
        u = torch.rand(len(x), 3, generator=generator, dtype=x.dtype, device=x.device)
        return (2 * u - 1) * self._limits_like(x)

    def project(self, params: Tensor) -> Tensor:
        """The nearest parameters inside the box."""
        lim = self._limits_like(params)
        return torch.maximum(torch.minimum(params, lim), -lim)

    def size(self, params: Tensor) -> Tensor:
        """Per example, the largest parameter as a fraction of the full box (eps 1): 0 for the identity, and at
        most ``eps`` inside this threat, as a norm is at most its eps."""
        full = torch.tensor((self.max_rotation, self.max_translation, self.max_translation), dtype=params.dtype,
                            device=params.device)
        frac = torch.where(full > 0, params.abs() / full.clamp_min(1e-12), torch.zeros_like(params))
        return frac.amax(1) if len(params) else params.new_zeros(0)

    def step(self, grad: Tensor, step_size: float) -> Tensor:
        """The signed-gradient move of ``step_size`` times each parameter's half-width."""
        return grad.sign() * step_size * self._limits_like(grad)

    def grid(
        self, rotations: int = GRID_ROTATIONS, translations: int = GRID_TRANSLATIONS, like: Tensor | None = None
    ) -> Tensor:
        """Every combination of ``rotations`` evenly spaced angles and ``translations`` evenly spaced shifts per
        axis, end points included (``rotations x translations**2`` rows; the identity is among them when both
        counts are odd)."""
        if rotations < 1 or translations < 1:
            raise SquigglesError(f"the grid needs at least one rotation and one translation, got {rotations}, "
                                 f"{translations}")
        dtype = like.dtype if like is not None else torch.float32
        device = like.device if like is not None else None
        rot, shift, _ = self.limits
        a = _spaced(rot, rotations, dtype, device)
        t = _spaced(shift, translations, dtype, device)
        ga, gx, gy = torch.meshgrid(a, t, t, indexing="ij")
        return torch.stack([ga.flatten(), gx.flatten(), gy.flatten()], 1)

    # --- the transform ---------------------------------------------------------------------------
    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        """``x`` (N x C x H x W) rotated by ``params[:, 0]`` degrees (counter-clockwise as displayed, so +90
        matches ``torch.rot90``) about its centre, then shifted ``params[:, 1]`` pixels right and
        ``params[:, 2]`` down; pixels from outside the image are zero. Differentiable in ``x`` and ``params``."""
        check_images(x)
        if params.shape != (len(x), 3):
            raise SquigglesError(f"spatial parameters must be N x 3 (angle, dx, dy) for {len(x)} images, "
                                 f"got {tuple(params.shape)}")
        theta = _affine(params.to(x.dtype), x.shape[-2], x.shape[-1])
        grid = sampling_grid(theta, x.shape[-2], x.shape[-1])
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Sampling at the pixel centres is the identity only up to float round-off (~1e-6): make zero
        # parameters return the image exactly, keeping the sampled path's gradient in the parameters.
        still = (params == 0).all(1)
        if not still.any():  # the grid's hot path: at most one transform in 775 is the identity
            return out
        return torch.where(still.view(-1, *([1] * (x.dim() - 1))), x.detach() + (out - out.detach()), out)

    def describe(self) -> dict[str, object]:
        return {"threat": "spatial", "norm": "spatial", "max_rotation": self.max_rotation,
                "max_translation": self.max_translation, "eps": self.eps, "bounds": list(self.bounds)}

    def __add__(self, other: object) -> SpatialBall:
        if not isinstance(other, ThreatModel):
            return NotImplemented
        if other.bounds != self.bounds:
            raise SquigglesError(f"the spatial threat's bounds {self.bounds} differ from the norm ball's "
                                 f"{other.bounds}; give both the same input bounds")
        return SpatialBall(self, other)


@dataclass(frozen=True)
class SpatialBall:
    """A spatial transform followed by a perturbation inside a norm ball on the transformed image."""

    spatial: Spatial
    ball: ThreatModel

    @property
    def bounds(self) -> Bounds:
        return self.spatial.bounds

    def apply(self, x: Tensor, params: Tensor, delta: Tensor) -> Tensor:
        moved = self.spatial.apply(x, params)
        return self.ball.project(moved + delta, moved)

    def describe(self) -> dict[str, object]:
        return {**self.spatial.describe(), "threat": "spatial+" + self.ball.name, "ball": self.ball.describe()}


def check_images(x: Tensor) -> None:
    """Spatial threats need images: N x C x H x W."""
    if x.dim() != 4:
        raise SquigglesError(f"a spatial threat needs images shaped N x C x H x W, got inputs of shape "
                             f"{tuple(x.shape)}; reshape flat inputs to images, or use a norm threat (--norm)")


def _spaced(half: float, count: int, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    if count == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    return torch.linspace(-half, half, count, dtype=dtype, device=device)


def sampling_grid(theta: Tensor, h: int, w: int) -> Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` (``N x h x w x 2``) by broadcasting.

    The same numbers up to float rounding, about 5x faster on a CPU for MNIST-sized batches: the grid is built
    every time the spatial attacks or a `Recenter` layer run, which is thousands of times per evaluation."""
    n = len(theta)
    bx = ((2 * torch.arange(w, dtype=theta.dtype, device=theta.device) + 1) / w - 1).view(1, 1, w)
    by = ((2 * torch.arange(h, dtype=theta.dtype, device=theta.device) + 1) / h - 1).view(1, h, 1)
    t = theta.view(n, 6, 1, 1)
    gx = t[:, 0] * bx + t[:, 1] * by + t[:, 2]
    gy = t[:, 3] * bx + t[:, 4] * by + t[:, 5]
    return torch.stack((gx, gy), dim=-1)


def _affine(params: Tensor, h: int, w: int) -> Tensor:
    """The ``N x 2 x 3`` matrices that map output to input sampling positions in ``affine_grid``'s normalised
    coordinates. In pixels the content moves as p' = R(-a) p + t (image y axis points down, so R(-a) turns it
    counter-clockwise on screen); the sampler needs the inverse, p = R(a)(p' - t), rescaled to [-1, 1] per axis
    so that a rotation stays a rotation on non-square images."""
    a = params[:, 0] * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    sx, sy = w / 2, h / 2  # pixels per normalised unit
    # A = S^-1 R(a) S with S = diag(sx, sy)
    a00, a01 = cos, -sin * (sy / sx)
    a10, a11 = sin * (sx / sy), cos
    tx, ty = params[:, 1] / sx, params[:, 2] / sy
    b0 = -(a00 * tx + a01 * ty)
    b1 = -(a10 * tx + a11 * ty)
    return torch.stack([torch.stack([a00, a01, b0], 1), torch.stack([a10, a11, b1], 1)], 1)
