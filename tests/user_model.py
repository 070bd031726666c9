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


class LabelEndpoint:
    """Stands in for a remote prediction API: a callable (not an nn.Module) that returns only labels."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    def __call__(self, x):
        import torch

        with torch.no_grad():
            return self.net(x).argmax(1)


def make_label_endpoint(width: int = 32):
    import torch

    torch.manual_seed(0)
    return LabelEndpoint(make_net(width))
