"""Remedies for models that hide their gradients, so that the evaluation measures the model, not the mask.

- `straight_through(layer)`: the layer's forward, an identity backward (BPDA, Athalye et al. 2018,
  arXiv 1802.00420) for quantisation, JPEG-like or other non-differentiable preprocessing.
- `logits_from_probabilities(model)`: for a model that ends in a softmax, the log of its outputs.
- `expectation_over_transformation(model, samples)`: the mean logits over ``samples`` stochastic passes, so
  gradients and predictions of a randomised model are its expected ones (EOT, Athalye et al. 2018).

Example:
    >>> import torch
    >>> from squiggles.evaluation.remedies import straight_through
    >>> quantise = straight_through(lambda x: (x * 4).round() / 4)
    >>> x = torch.tensor([0.3], requires_grad=True)
    >>> quantise(x).sum().backward(); x.grad.tolist()
    [1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:  # noqa: ANN001
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return grad, None


class StraightThrough(nn.Module):
    """Apply ``layer`` in the forward pass and pass gradients through unchanged in the backward pass."""

    def __init__(self, layer: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            y = self.layer(x)
        return _StraightThrough.apply(x, y)


def straight_through(layer: Callable[[Tensor], Tensor]) -> StraightThrough:
    return StraightThrough(layer)


class LogitsFromProbabilities(nn.Module):
    """``log(p)`` of a model that returns probabilities: logits up to a per-example constant."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        p = self.model(x)
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def logits_from_probabilities(model: nn.Module) -> nn.Module:
    """Logits for a model that returns probabilities: a trailing ``nn.Softmax`` is removed (exact), otherwise
    the outputs are passed through ``log`` (saturated probabilities then still give no gradient)."""
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Softmax):
        return model[:-1]
    return LogitsFromProbabilities(model)


class ExpectationOverTransformation(nn.Module):
    """Mean logits over ``samples`` forward passes of a randomised model, in one batched call."""

    def __init__(self, model: nn.Module, samples: int = 16) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.model = model
        self.samples = samples

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x.repeat(self.samples, *([1] * (x.dim() - 1))))
        return out.view(self.samples, len(x), -1).mean(0)


def expectation_over_transformation(model: nn.Module, samples: int = 16) -> ExpectationOverTransformation:
    return ExpectationOverTransformation(model, samples)
