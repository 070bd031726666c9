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
