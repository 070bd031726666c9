"""A user's own architecture, loaded by the CLI tests as ``tests.user_model:make_net``."""

from torch import nn


def make_net(width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


class Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x):
        return x * self.k


def make_softmax_net(width: int = 32) -> nn.Module:
    """``make_net`` (same weights) returning saturated probabilities: a broken defence the evaluation must see
    through."""
    return nn.Sequential(*make_net(width), Scale(1000.0), nn.Softmax(1))
