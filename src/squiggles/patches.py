"""Patches and stickers: perturbations confined to a few small regions of the image, unbounded inside them.

A `Patch` threat is a ``height x width`` rectangle pasted at a location per example (given, random, or searched),
its content anywhere in the input bounds. `Stickers` is a mask of k such rectangles, the "four small
rectangles stuck to the face of the sign" of Eykholt et al. 2018 (arXiv 1707.08945). Both paste with a
differentiable, batched gather (no loop over examples), so a patch can be optimised through any model, and
random placement with small rotations and rescaling is the expectation over transformation of Brown et al.'s
universal patch (arXiv 1712.09665).

Example:
    >>> import torch
    >>> from squiggles.patches import Patch
    >>> p = Patch.from_area(0.1, (28, 28))   # the largest square within 10%: 8 x 8, 8.2% of the image
    >>> (p.height, p.width)
    (8, 8)
    >>> x = torch.zeros(2, 1, 28, 28)
    >>> out = p.apply(x, torch.ones(1, 8, 8), torch.tensor([0, 20]), torch.tensor([0, 20]))
    >>> int(out[0].sum()), int(out[1].sum())
    (64, 64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from squiggles.errors import SquigglesError
from squiggles.threat import Bounds
from squiggles.transforms import check_images


@dataclass(frozen=True)
class Patch:
    """A ``height x width`` patch (content in ``bounds``) pasted over the image at a location per example."""

    height: int
    width: int
    bounds: Bounds = (0.0, 1.0)
    name: ClassVar[str] = "patch"

    def __post_init__(self) -> None:
        for what, v in (("height", self.height), ("width", self.width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SquigglesError(f"a patch's {what} must be a whole number of pixels >= 1, got {v!r}; a patch "
                                     "needs a non-zero area (--patch-area)")

    @classmethod
    def from_area(cls, area: float, image: tuple[int, int], bounds: Bounds = (0.0, 1.0)) -> Patch:
        """The largest square covering at most ``area`` (a fraction) of an ``H x W`` image."""
        h, w = image
        if not 0 < area <= 1:
            raise SquigglesError(f"--patch-area is a fraction of the image in (0, 1], got {area}")
        side = math.floor(math.sqrt(area * h * w) + 1e-9)
        if side < 1:
            raise SquigglesError(f"--patch-area {area} of a {h} x {w} image is less than one pixel; give a larger area")
        if side > min(h, w):
            raise SquigglesError(f"a {side} x {side} patch does not fit in a {h} x {w} image; lower --patch-area")
        return cls(side, side, bounds)

    def area(self, image: tuple[int, int]) -> float:
        return self.height * self.width / (image[0] * image[1])

    def check_fits(self, x: Tensor) -> None:
        check_images(x)
        h, w = x.shape[-2:]
        if self.height > h or self.width > w:
            raise SquigglesError(f"a {self.height} x {self.width} patch is larger than the {h} x {w} images; give a "
                                 "smaller patch")

    def random_locations(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Top-left corners drawn uniformly so that the patch lies wholly inside each image."""
        self.check_fits(x)
        h, w = x.shape[-2:]
        rows = torch.randint(0, h - self.height + 1, (len(x),), generator=generator, device=x.device)
        cols = torch.randint(0, w - self.width + 1, (len(x),), generator=generator, device=x.device)
        return rows, cols

    def apply(self, x: Tensor, content: Tensor, rows: Tensor, cols: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` with ``content`` (C x h x w for one patch on every image, or N x C x h x w) pasted with its top-left
        corner at (``rows``, ``cols``); ``mask`` (same shape as content but one channel, in [0, 1]) shapes it
        (default: the whole rectangle). Differentiable in ``content``."""
        self.check_fits(x)
        n, c, h, w = x.shape
        content = content.expand(n, *content.shape[-3:]) if content.dim() == 3 else content
        if content.shape != (n, c, self.height, self.width):
            raise SquigglesError(f"patch content must be C x {self.height} x {self.width} or N x C x ..., got "
                                 f"{tuple(content.shape)} for images {tuple(x.shape)}")
        if mask is None:
            mask = torch.ones(n, 1, self.height, self.width, dtype=x.dtype, device=x.device)
        mask = mask.expand(n, 1, self.height, self.width) if mask.dim() == 3 else mask
        canvas, inside = _paste(content.expand(n, c, self.height, self.width), rows, cols, h, w)
        cover, _ = _paste(mask, rows, cols, h, w)
        cover = cover * inside
        return x * (1 - cover) + canvas * cover

    def describe(self) -> dict[str, object]:
        return {"threat": "patch", "height": self.height, "width": self.width, "bounds": list(self.bounds)}


def _paste(content: Tensor, rows: Tensor, cols: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Each example's ``content`` (N x C x ph x pw) placed on an ``h x w`` canvas at its corner, by one gather;
    and the N x 1 x h x w indicator of the covered pixels."""
    n, c, ph, pw = content.shape
    ii = torch.arange(h, device=content.device).view(1, h, 1) - rows.view(n, 1, 1)
    jj = torch.arange(w, device=content.device).view(1, 1, w) - cols.view(n, 1, 1)
    inside = ((ii >= 0) & (ii < ph) & (jj >= 0) & (jj < pw)).unsqueeze(1).to(content.dtype)
    flat = (ii.clamp(0, ph - 1) * pw + jj.clamp(0, pw - 1)).view(n, 1, h * w).expand(n, c, h * w)
    canvas = content.reshape(n, c, ph * pw).gather(2, flat).view(n, c, h, w)
    return canvas * inside, inside


def transformed(content: Tensor, n: int, generator: torch.Generator | None, max_rotation: float = 0.0,
                scale: tuple[float, float] = (1.0, 1.0)) -> tuple[Tensor, Tensor]:
    """``n`` copies of one patch (C x h x w), each rotated by up to ``max_rotation`` degrees and rescaled by a
    factor in ``scale`` about its centre (Brown et al.'s expectation over transformation), with their masks
    (N x 1 x h x w): the parts turned or shrunk out of the rectangle are not pasted."""
    c, ph, pw = content.shape
    batch = content.unsqueeze(0).expand(n, c, ph, pw)
    ones = torch.ones(n, 1, ph, pw, dtype=content.dtype, device=content.device)
    if max_rotation == 0 and scale == (1.0, 1.0):
        return batch, ones
    u = torch.rand(n, 2, generator=generator, device=content.device, dtype=content.dtype)
    angle = (2 * u[:, 0] - 1) * max_rotation * math.pi / 180
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [n, c + 1, ph, pw], align_corners=False)
    both = F.grid_sample(torch.cat([batch, ones], 1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)
    return both[:, :c], both[:, c:]


@dataclass(frozen=True)
class PatchArea:
    """The per-image patch threat of the evaluation: one square patch covering at most ``eps`` (a fraction) of
    the image, anywhere in it, its content anywhere in ``bounds``. ``eps`` sweeps like a norm's budget."""

    eps: float = 0.04
    bounds: Bounds = (0.0, 1.0)
    name: ClassVar[str] = "patch"

    def __post_init__(self) -> None:
        if isinstance(self.eps, Tensor) or not 0 <= self.eps <= 1:
            raise SquigglesError(f"--patch-area is a fraction of the image in [0, 1], got {self.eps}")
        if not self.bounds[0] < self.bounds[1]:
            raise SquigglesError(f"bounds must satisfy low < high, got {self.bounds}")

    def with_eps(self, eps: float) -> PatchArea:
        return PatchArea(float(eps), self.bounds)

    def patch_for(self, x: Tensor) -> Patch | None:
        """The largest square within the area on these images; None when it is under one pixel."""
        check_images(x)
        h, w = x.shape[-2:]
        if math.floor(math.sqrt(self.eps * h * w) + 1e-9) < 1:
            return None
        return Patch.from_area(self.eps, (h, w), self.bounds)

    def describe(self) -> dict[str, object]:
        return {"threat": "patch", "norm": "patch", "eps": self.eps, "bounds": list(self.bounds)}


@dataclass(frozen=True)
class Stickers:
    """``count`` rectangles of ``height x width`` pixels each (the stickers), at given or chosen positions."""

    count: int = 4
    height: int = 3
    width: int = 3
    bounds: Bounds = (0.0, 1.0)
    name: ClassVar[str] = "stickers"

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise SquigglesError(f"stickers: count must be an integer >= 1, got {self.count!r}")
        Patch(self.height, self.width, self.bounds)  # the same checks on the size

    def mask(self, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """The N x 1 x H x W mask of the stickers with top-left corners ``rows``, ``cols`` (N x count each)."""
        check_images(x)
        n, _, h, w = x.shape
        if rows.shape != (n, self.count) or cols.shape != (n, self.count):
            raise SquigglesError(f"sticker positions must be N x {self.count} rows and columns, got "
                                 f"{tuple(rows.shape)} and {tuple(cols.shape)}")
        if (rows < 0).any() or (cols < 0).any() or (rows + self.height > h).any() or (cols + self.width > w).any():
            raise SquigglesError(f"a sticker mask lies outside the {h} x {w} image; give corners with "
                                 f"0 <= row <= {h - self.height} and 0 <= column <= {w - self.width}")
        ii = torch.arange(h, device=x.device).view(1, 1, h, 1)
        jj = torch.arange(w, device=x.device).view(1, 1, 1, w)
        r, c = rows.view(n, self.count, 1, 1), cols.view(n, self.count, 1, 1)
        inside = (ii >= r) & (ii < r + self.height) & (jj >= c) & (jj < c + self.width)
        return inside.any(1, keepdim=True).to(x.dtype)

    def describe(self) -> dict[str, object]:
        return {"threat": "stickers", "count": self.count, "height": self.height, "width": self.width,
                "bounds": list(self.bounds)}
