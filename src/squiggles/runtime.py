"""Device choice, batched prediction and accuracy: the small pieces every command needs."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from squiggles.errors import SquigglesError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; an unavailable device is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SquigglesError(f"device {str(dev)!r} requested but CUDA is not available here; use --device cpu")
    return dev


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore the exact mode of every submodule after."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode


# True while the layout of the weights must not change: inside a `fast_layout` block (nested blocks then
# leave the outer one's layout alone) or a `keep_layout` block (training, where DDP and the optimizer hold
# the parameters' storage).
_LAYOUT_FIXED: contextvars.ContextVar[bool] = contextvars.ContextVar("squiggles_layout_fixed", default=False)


@contextlib.contextmanager
def keep_layout() -> Iterator[None]:
    """Attacks and evaluations inside this block leave the model's weight layout alone.

    The trainer runs its attacks inside one, and so can a user whose own loop holds on to the parameters'
    storage (a compiled model, views of ``p.data``)::

        >>> import torch
        >>> from squiggles.runtime import keep_layout
        >>> with keep_layout():
        ...     pass   # squiggles.attacks.pgd(model, x, y, threat) here keeps the weights' layout
    """
    token = _LAYOUT_FIXED.set(True)
    try:
        yield
    finally:
        _LAYOUT_FIXED.reset(token)


@contextlib.contextmanager
def fast_layout(model: object, x: torch.Tensor) -> Iterator[None]:
    """Channels-last weights for the block when ``model`` convolves images on the CPU; restored after.

    oneDNN's CPU convolutions run in that layout natively: on a madry-cnn it cuts the forward time by a third
    and forward plus input-gradient by a fifth (benchmarks/README.md); on a very small CNN it costs a few per
    cent. The numbers differ only by float rounding, and every pass inside the block uses the same layout, so
    results stay reproducible. Other models, inputs and devices, DistributedDataParallel wrappers, and
    anything inside `keep_layout` or an outer `fast_layout` are left untouched.
    """
    if _LAYOUT_FIXED.get() or not _wants_channels_last(model, x):
        yield
        return
    assert isinstance(model, nn.Module)
    model.to(memory_format=torch.channels_last)
    token = _LAYOUT_FIXED.set(True)
    try:
        yield
    finally:
        _LAYOUT_FIXED.reset(token)
        model.to(memory_format=torch.contiguous_format)


class LayoutMirror:
    """A channels-last copy of a model being trained, for the searches that only run it forward.

    Inside the trainer the model's own layout must stay (`keep_layout`), yet a search such as the spatial
    method's worst-of-10 spends most of a training step in forward passes, which oneDNN runs faster in
    channels-last. ``mirror(model, x)`` returns a copy in that layout with the model's current weights
    (copied in on every call, so it is never stale), or ``model`` itself where `fast_layout` would leave it
    alone (a GPU, no convolutions, weights the user keeps in their own layout, DDP). The copy differs from the
    model only by float rounding.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
        >>> mirror = LayoutMirror()
        >>> x = torch.rand(2, 1, 5, 5)
        >>> torch.allclose(mirror(net, x)(x), net(x), atol=1e-6)
        True
    """

    def __init__(self) -> None:
        self._source: nn.Module | None = None
        self._copy: nn.Module | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor) -> nn.Module:
        if not _wants_channels_last(model, x):
            return model
        if self._copy is None or self._source is not model:
            import copy

            self._copy = copy.deepcopy(model).to(memory_format=torch.channels_last)
            self._copy.requires_grad_(False)
            self._source = model
            return self._copy
        with torch.no_grad():
            for mine, theirs in zip(self._copy.parameters(), model.parameters(), strict=True):
                mine.copy_(theirs)
            for mine, theirs in zip(self._copy.buffers(), model.buffers(), strict=True):
                mine.copy_(theirs)
        for mine, theirs in zip(self._copy.modules(), model.modules(), strict=True):
            mine.training = theirs.training
        return self._copy


def _wants_channels_last(model: object, x: torch.Tensor) -> bool:
    if not isinstance(model, nn.Module) or isinstance(model, nn.parallel.DistributedDataParallel):
        return False
    params = list(model.parameters())
    kernels = [p for p in params if p.dim() == 4]
    # Weights the user already keeps in another layout stay as they are (restoring would change them).
    as_given = all(p.is_contiguous() for p in kernels)
    return bool(kernels) and as_given and x.dim() == 4 and all(p.device.type == "cpu" for p in params)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched, on the model's device; returned on x's device."""
    device = _model_device(model, x)
    outs = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i : i + batch_size].to(device)).to(x.device))
    if not outs:
        return torch.empty(0, device=x.device)
    return torch.cat(outs)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode)."""
    if len(x) == 0:
        raise SquigglesError("accuracy of an empty set is undefined; pass at least one example")
    pred = predict(model, x, batch_size).argmax(1)
    return (pred == y.to(pred.device)).float().mean().item()


def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return x.device
