"""A user's own architecture, loaded by the CLI tests as ``tests.user_model:make_net``."""

from torch import nn


def make_net(width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
