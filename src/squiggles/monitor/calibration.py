"""Temperature scaling (Guo et al. 2017, arXiv 1706.04599): one scalar ``T > 0`` that divides the logits, fitted by
minimising the negative log-likelihood on held-out data (the validation split, never the test set).

Dividing by a positive scalar keeps every prediction; only the confidences move. The fit is a bounded
one-dimensional search over ``log T`` (scipy's Brent method), deterministic and free of learning rates.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = 3 * torch.randn(4000, 5, generator=g)
    >>> y = torch.multinomial((z / 2).softmax(1), 1, generator=g).squeeze(1)   # labels drawn at T = 2
    >>> round(fit_temperature(z, y), 1)
    2.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from squiggles.errors import SquigglesError

LOG_T_RANGE = (-6.0, 6.0)  # T between 0.0025 and 403


def fit_temperature(logits: Tensor, y: Tensor) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` on ``(logits, y)``."""
    from scipy.optimize import minimize_scalar

    if len(y) < 2:
        raise SquigglesError(f"temperature scaling needs a calibration set of several points, got {len(y)}")
    classes = torch.unique(y)
    if len(classes) < 2:
        raise SquigglesError(f"the calibration set holds only class {int(classes[0])}; temperature scaling needs "
                             "labels of at least two classes (use the validation split, --calibration-split val)")
    z, t = logits.detach().double().cpu(), y.detach().cpu()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / float(torch.tensor(log_t).exp()), t))

    best = minimize_scalar(nll, bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-6})
    return float(torch.tensor(best.x).exp())


class Scaled(nn.Module):
    """``model(x) / temperature``: the calibrated model, with the same predictions."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise SquigglesError(f"the temperature must be > 0, got {temperature}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature
