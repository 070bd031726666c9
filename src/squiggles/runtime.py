"""Device choice, batched prediction and accuracy: the small pieces every command needs."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def fast_layout(model: object, x: torch.Tensor) -> Iterator[None]:
    """Channels-last weights for the block when ``model`` convolves images on the CPU; restored after.

    oneDNN's CPU convolutions run in that layout natively: on a madry-cnn it halves the forward time and cuts
    forward plus input-gradient by a fifth (benchmarks/README.md). The numbers differ only by float rounding,
    and every pass inside the block uses the same layout, so results stay reproducible. Other models, inputs
    and devices are left untouched.
    """
    convolves = isinstance(model, nn.Module) and any(p.dim() == 4 for p in model.parameters())
    on_cpu = isinstance(model, nn.Module) and all(p.device.type == "cpu" for p in model.parameters())
    if not (convolves and on_cpu and x.dim() == 4):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


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
