"""Backdoor triggers as objects, and the label maps of a poisoning attack (BadNets, Gu et al. 2017, arXiv 1708.06733).

Every trigger is a *stamp*: a mask ``m`` in [0, 1] and a pattern ``p`` inside the bounds, both of the input's shape,
applied as ``(1 - m) * x + m * p``. That one form covers the three kinds and is also the form Neural Cleanse
reverse-engineers (Wang et al. 2019), so a real trigger and a reconstructed one compare directly.

- `Pattern`: a ``size`` x ``size`` checkerboard (upper bound where row + column is even, lower bound elsewhere)
  ``distance`` pixels in from a corner, in every channel; BadNets' "pattern" backdoor.
- `Pixel`: one pixel set to the upper bound, ``distance`` pixels in from a corner; BadNets' "single pixel".
- `Blend`: ``(1 - alpha) * x + alpha * key`` everywhere, the key a given image or uniform noise drawn from a
  seeded generator (Chen et al. 2017, arXiv 1712.05526, "blended injection").
- `Stamp`: a given mask and pattern (a trigger saved beside a poisoned model, or a reconstructed one).

A binary mask writes the pattern's values exactly and leaves every other value exactly as it was; a stamped input
stays inside the bounds because it is a convex combination of two points inside them.

Example:
    >>> import torch
    >>> x = torch.zeros(2, 1, 8, 8)
    >>> out = Pattern(size=3, distance=1).apply(x)
    >>> out[0, 0, 4:7, 4:7]
    tensor([[1., 0., 1.],
            [0., 1., 0.],
            [1., 0., 1.]])
    >>> LabelMap("all-to-all")(torch.tensor([0, 8, 9]), num_classes=10)
    tensor([1, 9, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from squiggles.errors import SquigglesError

Bounds = tuple[float, float]
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
KINDS = ("pattern", "pixel", "blend")
MAPS = ("all-to-one", "all-to-all")


class Trigger:
    """A trigger: `stamp` gives its mask and pattern for one input shape; `apply` stamps a batch."""

    kind = "stamp"

    def stamp(self, shape: Sequence[int], bounds: Bounds = (0.0, 1.0), *, device: Any = None,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(mask, pattern)``, each of ``shape`` (one input, without the batch dimension)."""
        raise NotImplementedError

    def apply(self, x: Tensor, bounds: Bounds = (0.0, 1.0)) -> Tensor:
        """``x`` (N x ...) with the trigger stamped on every row; device and dtype follow ``x``."""
        mask, pattern = self.stamp(tuple(x.shape[1:]), bounds, device=x.device, dtype=x.dtype)
        return (1 - mask) * x + mask * pattern

    def check(self, shape: Sequence[int]) -> None:
        """A one-line error naming the flag when the trigger cannot sit on inputs of ``shape``."""
        self.stamp(shape)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


def _image_hw(shape: Sequence[int], kind: str) -> tuple[int, int]:
    if len(shape) != 3:
        raise SquigglesError(f"--poison {kind} places pixels on images (C x H x W); these inputs have shape "
                             f"{tuple(shape)}; use --poison blend")
    return int(shape[1]), int(shape[2])


def _place(shape: Sequence[int], size: int, distance: int, corner: str, at: tuple[int, int] | None,
           kind: str) -> tuple[int, int]:
    """Top-left cell of a ``size`` x ``size`` square: ``at`` if given, else ``distance`` pixels in from ``corner``."""
    h, w = _image_hw(shape, kind)
    if size < 1:
        raise SquigglesError(f"--trigger-size must be >= 1, got {size}")
    if size > min(h, w):
        raise SquigglesError(f"--trigger-size {size} is larger than the {h} x {w} image; use at most {min(h, w)}")
    if at is not None:
        r, c = int(at[0]), int(at[1])
        if not (0 <= r <= h - size and 0 <= c <= w - size):
            raise SquigglesError(f"--trigger-at {r},{c} puts the {size} x {size} trigger outside the {h} x {w} "
                                 f"image; use rows 0-{h - size} and columns 0-{w - size}")
        return r, c
    if corner not in CORNERS:
        raise SquigglesError(f"--trigger-corner {corner!r} is unknown; choose one of {', '.join(CORNERS)}")
    if distance < 0 or distance + size > min(h, w):
        raise SquigglesError(f"--trigger-distance {distance} puts the {size} x {size} trigger outside the {h} x {w} "
                             f"image; use 0-{min(h, w) - size}")
    r = h - distance - size if corner.startswith("bottom") else distance
    c = w - distance - size if corner.endswith("right") else distance
    return r, c


@dataclass(frozen=True)
class Pattern(Trigger):
    """A ``size`` x ``size`` checkerboard (upper bound on the even cells) ``distance`` pixels in from ``corner``,
    or with its top-left cell at ``at = (row, col)``; BadNets' pattern backdoor (Gu et al. 2017)."""

    size: int = 3
    distance: int = 1
    corner: str = "bottom-right"
    at: tuple[int, int] | None = None
    kind = "pattern"

    def stamp(self, shape: Sequence[int], bounds: Bounds = (0.0, 1.0), *, device: Any = None,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        r, c = _place(shape, self.size, self.distance, self.corner, self.at, "pattern")
        mask = torch.zeros(tuple(shape), device=device, dtype=dtype)
        pattern = torch.full(tuple(shape), float(bounds[0]), device=device, dtype=dtype)
        mask[:, r:r + self.size, c:c + self.size] = 1
        i = torch.arange(self.size, device=device)
        board = ((i[:, None] + i[None, :]) % 2 == 0).to(dtype)  # 1 on the even cells, the corners included
        pattern[:, r:r + self.size, c:c + self.size] = bounds[0] + (bounds[1] - bounds[0]) * board
        return mask, pattern

    def describe(self) -> dict[str, Any]:
        where = {"at": list(self.at)} if self.at is not None else {"distance": self.distance, "corner": self.corner}
        return {"kind": self.kind, "size": self.size, **where}


@dataclass(frozen=True)
class Pixel(Trigger):
    """One pixel at the upper bound, ``distance`` pixels in from ``corner`` (or at ``at``); BadNets' single pixel."""

    distance: int = 1
    corner: str = "bottom-right"
    at: tuple[int, int] | None = None
    kind = "pixel"

    def stamp(self, shape: Sequence[int], bounds: Bounds = (0.0, 1.0), *, device: Any = None,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        r, c = _place(shape, 1, self.distance, self.corner, self.at, "pixel")
        mask = torch.zeros(tuple(shape), device=device, dtype=dtype)
        pattern = torch.full(tuple(shape), float(bounds[0]), device=device, dtype=dtype)
        mask[:, r, c] = 1
        pattern[:, r, c] = bounds[1]
        return mask, pattern

    def describe(self) -> dict[str, Any]:
        where = {"at": list(self.at)} if self.at is not None else {"distance": self.distance, "corner": self.corner}
        return {"kind": self.kind, **where}


@dataclass(frozen=True)
class Blend(Trigger):
    """``(1 - alpha) * x + alpha * key`` on every value; the key is ``image`` (the input's shape, inside the bounds)
    or, without one, uniform noise in the bounds drawn from a generator seeded with ``seed`` (Chen et al. 2017)."""

    alpha: float = 0.2
    seed: int = 0
    image: Tensor | None = field(default=None, repr=False, compare=False)
    kind = "blend"

    def stamp(self, shape: Sequence[int], bounds: Bounds = (0.0, 1.0), *, device: Any = None,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        if not 0 < self.alpha <= 1:
            raise SquigglesError(f"--trigger-alpha must be in (0, 1], e.g. 0.2; got {self.alpha}")
        if self.image is not None:
            key = self.image[0] if self.image.dim() == len(shape) + 1 else self.image
            if tuple(key.shape) != tuple(shape):
                raise SquigglesError(f"--trigger-image has shape {tuple(key.shape)}, the inputs {tuple(shape)}; "
                                     "give one image of the inputs' shape")
            if float(key.min()) < bounds[0] or float(key.max()) > bounds[1]:
                raise SquigglesError(f"--trigger-image has values outside the bounds {bounds}; scale it into them")
            key = key.to(device=device, dtype=dtype)
        else:
            # Drawn on the CPU from its own generator, so the key is the same on every device.
            g = torch.Generator().manual_seed(int(self.seed))
            key = torch.rand(tuple(shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            key = bounds[0] + (bounds[1] - bounds[0]) * key
        return torch.full(tuple(shape), float(self.alpha), device=device, dtype=dtype), key

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "alpha": self.alpha,
                **({"image": "given"} if self.image is not None else {"seed": self.seed})}


@dataclass(frozen=True, eq=False)
class Stamp(Trigger):
    """A given mask (in [0, 1]) and pattern, each of one input's shape (or broadcastable to it)."""

    mask: Tensor = field(repr=False)
    pattern: Tensor = field(repr=False)
    kind = "stamp"

    def stamp(self, shape: Sequence[int], bounds: Bounds = (0.0, 1.0), *, device: Any = None,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        try:
            mask = self.mask.to(device=device, dtype=dtype).expand(tuple(shape))
            pattern = self.pattern.to(device=device, dtype=dtype).expand(tuple(shape))
        except RuntimeError:
            raise SquigglesError(f"this trigger has shape {tuple(self.pattern.shape)}, the inputs {tuple(shape)}; "
                                 "use a trigger made for these inputs") from None
        return mask, pattern


def make_trigger(kind: str, **options: Any) -> Trigger:
    """A trigger by name: ``pattern`` (size, distance, corner, at), ``pixel`` (distance, corner, at) or ``blend``
    (alpha, seed, image); an option the kind does not take is an error naming its flag."""
    classes: dict[str, type[Trigger]] = {"pattern": Pattern, "pixel": Pixel, "blend": Blend}
    if kind not in classes:
        raise SquigglesError(f"--poison {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    cls = classes[kind]
    accepted = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    for key, value in options.items():
        if value is not None and key not in accepted:
            raise SquigglesError(f"--poison {kind} takes no --trigger-{key.replace('_', '-')}")
    kwargs = {k: v for k, v in options.items() if v is not None and k in accepted}
    if kwargs.get("at") is not None:
        kwargs["at"] = tuple(int(v) for v in kwargs["at"])
    return cls(**kwargs)


def trigger_from_dict(d: dict[str, Any]) -> Trigger:
    """The inverse of ``describe()`` (a blend with a given image needs that image: pass it as ``d["image"]``)."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "blend" and d.get("image") == "given":
        raise SquigglesError("this blend trigger was made from a given image; load it from the trigger file")
    return make_trigger(str(kind), **d)


@dataclass(frozen=True)
class LabelMap:
    """Where poisoned points are sent: ``all-to-one`` (every class to ``target``) or ``all-to-all`` (y -> y + 1,
    wrapping), BadNets' two attacks. Points already of the target class are not eligible for all-to-one."""

    kind: str = "all-to-one"
    target: int | None = 0

    def check(self, num_classes: int) -> None:
        if self.kind not in MAPS:
            raise SquigglesError(f"--poison-map {self.kind!r} is unknown; choose one of {', '.join(MAPS)}")
        if self.kind == "all-to-one" and (self.target is None or not 0 <= int(self.target) < num_classes):
            raise SquigglesError(f"--poison-target {self.target} is not a class of this data (0-{num_classes - 1}); "
                                 "choose one of them")

    def eligible(self, y: Tensor) -> Tensor:
        """Which points the attack can change: those not already of the target class (all-to-one), or all."""
        if self.kind == "all-to-all":
            return torch.ones_like(y, dtype=torch.bool)
        return y != int(self.target)  # type: ignore[arg-type]

    def __call__(self, y: Tensor, num_classes: int) -> Tensor:
        """The labels the attacker wants for ``y``."""
        if self.kind == "all-to-all":
            return (y + 1) % num_classes
        return torch.full_like(y, int(self.target))  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {"map": self.kind, **({"target": int(self.target)} if self.kind == "all-to-one" else {})}
