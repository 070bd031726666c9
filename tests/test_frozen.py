"""The frozen inference graph: built only where safe, equal to the model, used by the long forward-only searches."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import squiggles.frozen as frozen
from squiggles.attacks.hsja import hsja
from squiggles.attacks.square import square
from squiggles.models import small_cnn
from squiggles.threat import L2, Linf


def _net() -> nn.Module:
    torch.manual_seed(0)
    return small_cnn(in_shape=(1, 12, 12), num_classes=4).eval()


class Counting(nn.Module):
    """A wrapper with its own forward: tracing would run its Python once and drop the count."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_graph_matches_the_model_on_other_batch_sizes() -> None:
    net = _net()
    graph = frozen.inference_graph(net, torch.rand(4, 1, 12, 12))
    assert graph is not net
    for n in (1, 7, 130):
        x = torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want, got = net(x), graph(x)
        assert got.shape == (n, 4)
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_graph_from_a_single_example() -> None:
    net = _net()
    graph = frozen.inference_graph(net, torch.rand(1, 1, 12, 12))
    assert graph is not net
    assert graph(torch.rand(5, 1, 12, 12)).shape == (5, 4)


def _one_layer_training() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    net[1].train()
    return net


@pytest.mark.parametrize(
    "model",
    [
        Counting(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()),  # its own forward
        nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).train(),  # training mode
        _one_layer_training(),  # the model in eval mode, its dropout not
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), Counting(nn.Linear(4, 2))).eval(),  # a custom layer inside
        lambda x: x.flatten(1)[:, :2],  # not a module
    ],
    ids=["own-forward", "training", "one-layer-training", "custom-layer", "callable"],
)
def test_unsafe_models_are_returned_as_they_are(model: object) -> None:
    assert frozen.inference_graph(model, torch.rand(3, 1, 2, 2)) is model  # type: ignore[arg-type]


def test_a_model_with_a_hook_is_returned_as_it_is() -> None:
    net = _net()
    seen: list[int] = []
    net[1].register_forward_hook(lambda module, args, out: seen.append(len(out)))
    assert frozen.inference_graph(net, torch.rand(3, 1, 12, 12)) is net


def test_a_graph_that_fails_on_another_batch_size_is_refused() -> None:
    # Flatten(0) folds the batch into the features: it works for the traced two rows only.
    net = nn.Sequential(nn.Flatten(0), nn.Linear(8, 3)).eval()
    assert frozen.inference_graph(net, torch.rand(2, 4)) is net


def test_float64_inputs_keep_the_model() -> None:
    net = _net().double()
    assert frozen.inference_graph(net, torch.rand(2, 1, 12, 12, dtype=torch.float64)) is net


def test_short_searches_keep_the_model() -> None:
    net = _net()
    x = torch.rand(2, 1, 12, 12)
    assert frozen.forward_for(net, x, frozen.WORTH_ROWS - 1) is net
    assert frozen.forward_for(net, x, frozen.WORTH_ROWS) is not net


def _quadrants(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """12 x 12 images whose class is the brightest quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 12, 12, generator=g)
    for i, c in enumerate(y.tolist()):
        r, k = divmod(c, 2)
        x[i, 0, 6 * r : 6 * r + 6, 6 * k : 6 * k + 6] += 0.6
    return x, y


def _trained() -> nn.Module:
    net = _net().train()
    x, y = _quadrants(256, 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    real = frozen._build

    def build(model: nn.Module, x: torch.Tensor) -> object:
        built.append(len(x))
        return real(model, x)

    monkeypatch.setattr(frozen, "_build", build)
    return built


def test_long_label_only_search_runs_on_the_graph_within_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _spy(monkeypatch)
    net = _trained()
    x, y = _quadrants(10, 1)
    res = hsja(net, x, y, L2(math.inf), queries=2000, seed=0)
    assert built == [10]  # 10 x 2,000 rows: worth a graph
    assert int(res.queries.max()) <= 2000
    assert bool(res.success.all())
    with torch.no_grad():  # the adversarial labels hold on the model itself, not only on its graph
        assert bool((net(res.x_adv).argmax(1) != y).all())


def test_square_uses_the_graph_in_float32_only(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _spy(monkeypatch)
    net = _trained()
    x, _ = _quadrants(40, 2)
    fp32 = square(net, x, None, Linf(0.3), queries=500, seed=0)
    square(net, x, None, Linf(0.3), queries=500, seed=0, precision="bf16")
    assert built == [40]
    with torch.no_grad():
        assert torch.equal(net(fp32.x_adv).argmax(1), fp32.pred)
