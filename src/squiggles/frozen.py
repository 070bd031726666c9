"""A frozen inference graph for the forward-only searches that spend their time in the model's forward pass.

Label-only attacks (HopSkipJump, Boundary, RayS) and Square call the model hundreds of thousands of times and
never ask for a gradient. On a CPU, a traced and frozen graph (``torch.jit.optimize_for_inference``: weights
pre-packed for oneDNN, convolution and ReLU fused) runs a convnet's forward pass 1.2 to 1.4 times faster than
eager PyTorch with channels-last weights (`benchmarks/bench_layout.py`, benchmarks/README.md). `inference_graph`
builds one where that is safe and returns the model itself everywhere else, so a caller can always use what it
returns.

Safe means: an `nn.Module` on the CPU built only from standard stateless layers (the zoo's architectures, and
any `nn.Sequential` of the layers in `_freezable`), whose graph gives the same outputs as the model on a batch
of another size than the one it was traced with (a graph that baked in its batch size is refused). A module
with its own ``forward`` (a wrapper that counts calls, a remote endpoint, a randomised defence) or with a
forward hook is never traced: tracing would run its Python code once and drop it.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4 * 6 * 6, 3)).eval()
    >>> x = torch.rand(5, 1, 8, 8)
    >>> graph = inference_graph(net, x)
    >>> graph is not net, torch.allclose(graph(x), net(x), atol=1e-5)
    (True, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Forward = Callable[[Tensor], Any]

# Rows of work (examples x model calls each) above which a graph pays for its build (half a second on a madry-cnn).
WORTH_ROWS = 20_000


def _freezable() -> tuple[type[nn.Module], ...]:
    from squiggles.models import Normalize

    return (
        nn.Sequential,
        nn.Conv1d,
        nn.Conv2d,
        nn.Linear,
        nn.Flatten,
        nn.Identity,
        nn.Dropout,
        nn.ReLU,
        nn.LeakyReLU,
        nn.ELU,
        nn.GELU,
        nn.Tanh,
        nn.Sigmoid,
        nn.Softplus,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        Normalize,
    )


def forward_for(model: Forward, x: Tensor, rows: int) -> Forward:
    """`inference_graph` for a search of about ``rows`` forward rows when that many repay the build, else ``model``."""
    return inference_graph(model, x) if rows >= WORTH_ROWS else model


def inference_graph(model: Forward, x: Tensor) -> Forward:
    """A frozen, traced copy of ``model`` for inputs like ``x`` when that is safe (see the module), else ``model``.

    The model must be in eval mode (call it inside `squiggles.attacks._core.attack_mode`). The graph holds the
    weights as they are now, so use it only for one search and build a new one after any change (nothing is
    cached: a stale graph would give silently wrong labels). Building takes about half a second on a
    madry-cnn, so it pays only for long searches.
    """
    if not _eligible(model, x):
        return model
    assert isinstance(model, nn.Module)
    return _build(model, x) or model


def _eligible(model: Forward, x: Tensor) -> bool:
    if not isinstance(model, nn.Module) or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    # Any layer left in training mode (a dropout, a batch norm) would be traced as it behaves in training.
    if any(m.training for m in model.modules()):
        return False
    kinds = _freezable()
    if not all(type(m) in kinds for m in model.modules()):
        return False
    # A hook is Python that tracing would run once and drop (a feature probe, a call counter).
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors) and len(x) > 0


def _build(model: nn.Module, x: Tensor) -> Forward | None:
    """Trace on two rows, check on three (another batch size), or ``None`` where anything differs or fails."""
    sample = x[:3].detach()
    if len(sample) < 3:
        sample = sample[torch.arange(3, device=x.device) % len(sample)]
    sample = sample.contiguous()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit is deprecated in favour of torch.compile, whose compile time (tens of seconds on a CPU)
            # would cost more than it saves here; the traced graph is checked against the model below.
            warnings.simplefilter("ignore")
            graph = torch.jit.optimize_for_inference(torch.jit.trace(model, sample[:2], check_trace=False))
            want, got = model(sample), graph(sample)
    except Exception:  # noqa: BLE001 - any failure to trace or run the graph means: use the model itself
        return None
    if not isinstance(got, Tensor) or not isinstance(want, Tensor) or got.shape != want.shape:
        return None
    scale = float(want.abs().max()) if want.numel() else 0.0
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * max(scale, 1.0)):
        return None
    return graph
