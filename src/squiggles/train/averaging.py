"""An exponential moving average of the weights, kept beside the model during training and shipped at the end.

Averaging the weights of the last few thousand steps finds a flatter point than the last iterate and can raise
robust accuracy at almost no cost: Gowal et al. 2020, "Uncovering the Limits of Adversarial Training against
Norm-Bounded Adversarial Examples" (arXiv 2010.03593), section 4; Izmailov et al. 2018 (arXiv 1803.05407) for
the idea.

The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates, so early averages are not
dominated by the random initial weights. Buffers that are not floating point (counters) are copied.

Example:
    >>> import torch
    >>> from squiggles.train.averaging import WeightAverage
    >>> net = torch.nn.Linear(2, 1)
    >>> avg = WeightAverage(net, decay=0.99)
    >>> avg.update(net)
    >>> avg.updates
    1
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from squiggles.errors import SquigglesError


class WeightAverage:
    """Shadow copies of every entry of a model's state dict, updated after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise SquigglesError(f"weight-average decay must be in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in model.state_dict().items():
            avg = self.shadow[name]
            if avg.is_floating_point():
                avg.mul_(d).add_(value.detach(), alpha=1 - d)
            else:
                avg.copy_(value)

    def copy_to(self, model: nn.Module) -> nn.Module:
        """Load the averaged weights into ``model`` (which must have the same architecture)."""
        model.load_state_dict(self.shadow)
        return model

    def tensors(self) -> dict[str, Tensor]:
        """For the checkpoint: the shadow weights under ``average/`` keys."""
        return {f"average/{k}": v for k, v in self.shadow.items()}

    def load(self, tensors: dict[str, Tensor], updates: int) -> None:
        """Restore from a checkpoint's ``average/`` tensors and update count."""
        if any(f"average/{k}" not in tensors for k in self.shadow):
            raise SquigglesError(
                "--resume: the checkpoint holds no weight average; resume with the settings it was made with"
            )
        for k, avg in self.shadow.items():
            avg.copy_(tensors[f"average/{k}"])
        self.updates = updates
