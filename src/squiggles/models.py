"""The model zoo's architectures, `Normalize`, `Recenter`, and user-supplied factories.

Every model maps inputs in the data's bounds (``[0, 1]`` for images) to logits. Normalisation, when a
model wants it, is a module inside the model (`Normalize`), never a step the attacks must remember; so is
recentring (``recenter=True`` on the CNNs: `Recenter` first), which makes a model nearly blind to shifts.

Example:
    >>> import torch
    >>> from squiggles.models import build_model
    >>> net = build_model("small-cnn", in_shape=(1, 28, 28), num_classes=10)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from squiggles.errors import ModelError
from squiggles.transforms import sampling_grid

Shape = tuple[int, ...]


class Normalize(nn.Module):
    """``(x - mean) / std`` with mean and std as buffers, so they follow ``.to(device)`` and are saved.

    Scalars or per-channel sequences are accepted; per-channel values broadcast over ``N x C x ...``.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if (std_t <= 0).any():
            raise ModelError(f"Normalize: std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per-channel statistics sit on dim 1; a single value broadcasts everywhere.
        shape = (1, -1) + (1,) * (x.dim() - 2) if self.mean.numel() > 1 else (1,)
        mean = self.mean.to(x.dtype).view(shape)
        std = self.std.to(x.dtype).view(shape)
        return (x - mean) / std


class Recenter(nn.Module):
    """Shift each image so that its centre of mass sits at the image centre and, with ``upright=True``, turn
    it so that its principal axis stands vertical; one resampling, zero padding.

    MNIST's digits were centred this way when the set was made (LeCun et al. 1998), and undoing a digit's slant
    from its second moments is the classic "deskewing" of MNIST; doing both inside the model makes a classifier
    nearly invariant to translations and, upright, to rotations (Engstrom et al. 2019's threat) by
    construction: shifting or turning the input shifts or turns its moments by the same amount. The mass is
    each pixel's intensity above the image's darkest value, summed over channels, so a constant background
    weighs nothing; an all-constant image is left where it is. The axis has no direction, so the turn is the
    one within +-90 degrees; a digit lying near horizontal may be stood up either way, which training with
    rotations teaches the model to read. The resampling is differentiable, so gradient attacks see the whole
    model; the spatial grid needs no gradients at all.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 9, 9); x[0, 0, 1, 1] = 1.0
        >>> Recenter()(x)[0, 0].argmax().item()   # the pixel moves to the centre, (4, 4)
        40
        >>> bar = torch.zeros(1, 1, 9, 9); bar[0, 0, 4, 1:8] = 1.0   # a horizontal bar...
        >>> Recenter(upright=True)(bar)[0, 0, :, 4].gt(0.5).sum().item()   # ...stood up: 7 pixels in column 4
        7
    """

    def __init__(self, upright: bool = False) -> None:
        super().__init__()
        self.upright = upright

    def extra_repr(self) -> str:
        return f"upright={self.upright}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ModelError(f"Recenter takes images N x C x H x W, got shape {tuple(x.shape)}")
        _, _, h, w = x.shape
        mass = (x - x.amin(dim=(2, 3), keepdim=True)).sum(1)  # N x H x W, zero on a constant background
        total = mass.sum((1, 2))
        empty = total <= 1e-12
        total = torch.where(empty, torch.ones_like(total), total)
        # Pixel offsets from the image centre, so that the moments below are taken about the centre.
        rows = torch.arange(h, dtype=x.dtype, device=x.device) - (h - 1) / 2
        cols = torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2
        cy = (mass.sum(2) * rows).sum(1) / total
        cx = (mass.sum(1) * cols).sum(1) / total
        cy, cx = torch.where(empty, torch.zeros_like(cy), cy), torch.where(empty, torch.zeros_like(cx), cx)
        cos, sin = torch.ones_like(cx), torch.zeros_like(cx)
        if self.upright:
            cos, sin = _axis_turn(mass, rows, cols, cy, cx, total)
        # Output pixel q (offset from the centre) reads the input at centroid + R q; in grid_sample's
        # normalised units (align_corners=False) that is theta = S^-1 [R | c] with S = diag(w/2, h/2).
        theta = torch.stack(
            [
                torch.stack([cos, -sin * h / w, 2 * cx / w], 1),
                torch.stack([sin * w / h, cos, 2 * cy / h], 1),
            ],
            1,
        )
        grid = sampling_grid(theta, h, w)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _axis_turn(
    mass: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor,
    total: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the turn (within +-90 degrees) that stands each image's principal axis vertical."""
    dy = rows.view(1, -1, 1) - cy.view(-1, 1, 1)
    dx = cols.view(1, 1, -1) - cx.view(-1, 1, 1)
    mu20 = (mass * dx * dx).sum((1, 2)) / total
    mu02 = (mass * dy * dy).sum((1, 2)) / total
    mu11 = (mass * dx * dy).sum((1, 2)) / total
    a, b = 2 * mu11, mu20 - mu02
    # A round blob has no axis (and atan2's gradient at the origin is 0/0): leave it unturned.
    flat = a.square() + b.square() <= 1e-12
    axis = 0.5 * torch.atan2(torch.where(flat, torch.zeros_like(a), a), torch.where(flat, torch.ones_like(b), b))
    # axis is the principal direction's angle from the x axis, in (-90, 90]; vertical is +-90 degrees.
    turn = torch.where(axis > 0, axis - torch.pi / 2, axis + torch.pi / 2)
    turn = torch.where(flat, torch.zeros_like(turn), turn)
    return torch.cos(turn), torch.sin(turn)


def with_normalization(model: nn.Module, mean: float | Sequence[float], std: float | Sequence[float]) -> nn.Sequential:
    """Prepend `Normalize(mean, std)` so the model takes raw inputs in their natural bounds."""
    return nn.Sequential(Normalize(mean, std), model)


def _flat_size(features: nn.Module, in_shape: Shape) -> int:
    """Number of features after ``features`` for one input of ``in_shape``, or a clear error if it is too small."""
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *in_shape))
    except RuntimeError as exc:
        raise ModelError(f"input shape {in_shape} is too small for this architecture ({exc})") from None
    return int(out.numel())


def _prefix(mean: Any, std: Any, recenter: bool = False, upright: bool = False) -> list[nn.Module]:
    # Recentring works on the raw image (its background is the darkest value), so it comes before Normalize.
    for flag, value in (("recenter", recenter), ("upright", upright)):
        if not isinstance(value, bool):
            raise ModelError(f"{flag} must be true or false, got {value!r}")
    front: list[nn.Module] = [Recenter(upright=upright)] if recenter or upright else []
    return front + ([Normalize(mean, std)] if mean is not None and std is not None else [])


def madry_cnn(
    in_shape: Shape = (1, 28, 28), num_classes: int = 10, mean: Any = None, std: Any = None, recenter: bool = False,
    upright: bool = False,
) -> nn.Module:
    """Madry et al. 2017 (arXiv 1706.06083) MNIST net: conv32 5x5, pool, conv64 5x5, pool, fc1024, fc10."""
    features = nn.Sequential(
        *_prefix(mean, std, recenter, upright),
        nn.Conv2d(in_shape[0], 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    n = _flat_size(features, in_shape)
    return nn.Sequential(*features, nn.Linear(n, 1024), nn.ReLU(), nn.Linear(1024, num_classes))


def small_cnn(
    in_shape: Shape = (1, 28, 28), num_classes: int = 10, mean: Any = None, std: Any = None, width: int = 1,
    recenter: bool = False,
    upright: bool = False,
) -> nn.Module:
    """Wong et al. 2020 (arXiv 2001.03994) fast-training MNIST net: conv16 4x4/2, conv32 4x4/2, fc100, fc10;
    ``width`` multiplies every hidden layer (robust training needs more capacity than clean training)."""
    if width < 1:
        raise ModelError(f"small-cnn width must be an integer >= 1, got {width}")
    features = nn.Sequential(
        *_prefix(mean, std, recenter, upright),
        nn.Conv2d(in_shape[0], 16 * width, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16 * width, 32 * width, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )
    n = _flat_size(features, in_shape)
    return nn.Sequential(*features, nn.Linear(n, 100 * width), nn.ReLU(), nn.Linear(100 * width, num_classes))


def trades_cnn(
    in_shape: Shape = (1, 28, 28), num_classes: int = 10, mean: Any = None, std: Any = None, dropout: float = 0.5,
    recenter: bool = False,
    upright: bool = False,
) -> nn.Module:
    """Zhang et al. 2019 (arXiv 1901.08573) TRADES SmallCNN: four 3x3 convs, two pools, fc200, fc200, fc10."""
    features = nn.Sequential(
        *_prefix(mean, std, recenter, upright),
        nn.Conv2d(in_shape[0], 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    n = _flat_size(features, in_shape)
    return nn.Sequential(
        *features,
        nn.Linear(n, 200),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": lambda: nn.GELU(approximate="tanh")}


def mlp(
    in_shape: Shape = (1, 28, 28),
    num_classes: int = 10,
    hidden: Sequence[int] = (256, 256),
    mean: Any = None,
    std: Any = None,
    activation: str = "relu",
) -> nn.Module:
    """A multilayer perceptron on the flattened input; works for any input shape. ``activation``: ``relu`` or
    ``gelu`` (the tanh form of Hendrycks and Gimpel's MNIST baseline, whose net is ``hidden=[256,256,256]``)."""
    if activation not in ACTIVATIONS:
        raise ModelError(f"mlp activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = [*_prefix(mean, std), nn.Flatten()]
    width = math.prod(in_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def linear(in_shape: Shape = (1, 28, 28), num_classes: int = 10, mean: Any = None, std: Any = None) -> nn.Module:
    """Softmax regression (Goodfellow et al. 2014's shallow model): one linear layer to the logits."""
    return nn.Sequential(*_prefix(mean, std), nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "madry-cnn": madry_cnn,
    "small-cnn": small_cnn,
    "trades-cnn": trades_cnn,
    "mlp": mlp,
    "linear": linear,
}


def is_import_path(arch: str) -> bool:
    """True for a user's ``package.module:factory`` reference rather than a registry name."""
    return ":" in arch


def import_factory(ref: str) -> Callable[..., nn.Module]:
    """Resolve ``package.module:factory`` to the callable, with a clear error when it cannot be found."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ModelError(f"--model {ref!r}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import module {module_name!r} for --model {ref!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module_name!r} has no attribute {attr!r} (from --model {ref!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{ref!r} is not callable; it must be a function or class returning an nn.Module")
    return obj


def build_model(arch: str, in_shape: Shape | None = None, num_classes: int | None = None, *,
                any_callable: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registry architecture by name, or a user's ``package.module:factory``.

    Registry factories get ``in_shape`` (default ``(1, 28, 28)``) and ``num_classes`` (default 10); a user's
    factory gets them only when they are given, plus ``kwargs``. ``any_callable``: a user's factory may return
    any callable (a label-only endpoint wrapper), not only an ``nn.Module``.
    """
    if is_import_path(arch):
        given = {k: v for k, v in (("in_shape", in_shape), ("num_classes", num_classes)) if v is not None}
        try:
            model = import_factory(arch)(**given, **kwargs)
        except TypeError as exc:
            raise ModelError(f"calling {arch} with {sorted({**given, **kwargs})} failed: {exc}") from None
    elif arch in MODELS:
        shape = tuple(in_shape) if in_shape is not None else (1, 28, 28)
        model = MODELS[arch](in_shape=shape, num_classes=num_classes or 10, **kwargs)
    else:
        raise ModelError(f"unknown model {arch!r}; choose one of: {', '.join(MODELS)} (or 'package.module:factory')")
    if any_callable and callable(model):
        return model
    if not isinstance(model, nn.Module):
        hint = " (a label-only model that is any callable needs --access labels)" if callable(model) else ""
        raise ModelError(f"{arch!r} returned {type(model).__name__}, not a torch.nn.Module{hint}")
    return model
