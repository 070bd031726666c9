from __future__ import annotations

import pytest
import torch
from torch import nn

from squiggles.errors import ModelError
from squiggles.models import MODELS, Normalize, build_model, import_factory, with_normalization


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_registry_model_maps_a_batch_to_logits(arch):
    torch.manual_seed(0)
    net = build_model(arch, in_shape=(1, 28, 28), num_classes=10).eval()
    out = net(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["madry-cnn", "small-cnn", "mlp", "linear"])
def test_small_images_and_other_class_counts(arch):
    net = build_model(arch, in_shape=(1, 8, 8), num_classes=4).eval()
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 4)


def test_tabular_input_for_flat_models():
    assert build_model("mlp", in_shape=(6,), num_classes=2, hidden=[5])(torch.rand(4, 6)).shape == (4, 2)
    assert build_model("linear", in_shape=(6,), num_classes=3)(torch.rand(4, 6)).shape == (4, 3)


def test_madry_cnn_has_the_published_layer_sizes():
    convs = [m for m in build_model("madry-cnn").modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in build_model("madry-cnn").modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(7 * 7 * 64, 1024), (1024, 10)]


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ModelError, match="too small"):
        build_model("trades-cnn", in_shape=(1, 8, 8))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="madry-cnn, small-cnn"):
        build_model("resnet-9000")


def test_normalize_uses_buffers_and_broadcasts_per_channel():
    norm = Normalize([0.5, 0.25], [0.5, 0.25])
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    x = torch.ones(2, 2, 3, 3)
    out = norm(x)
    assert torch.allclose(out[:, 0], torch.full((2, 3, 3), 1.0))
    assert torch.allclose(out[:, 1], torch.full((2, 3, 3), 3.0))
    assert norm(x.double()).dtype == torch.float64
    with pytest.raises(ModelError, match="positive"):
        Normalize(0.0, 0.0)


def test_with_normalization_prepends_the_module():
    net = with_normalization(nn.Flatten(), 0.5, 0.5)
    assert torch.equal(net(torch.ones(1, 2)), torch.ones(1, 2))


def test_user_factory_import_errors_name_the_problem():
    assert import_factory("torch.nn:Identity") is nn.Identity
    with pytest.raises(ModelError, match="cannot import module"):
        import_factory("no_such_pkg.mod:make")
    with pytest.raises(ModelError, match="has no attribute"):
        import_factory("torch.nn:NoSuchThing")
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        build_model("builtins:dict", x=4.0)
    with pytest.raises(ModelError, match="failed"):
        build_model("math:sqrt", x=4.0)


def _blob(n: int, row: int, col: int, size: int = 15) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size)
    x[:, 0, row : row + 3, col : col + 2] = 1.0
    return x


def test_recenter_moves_the_centre_of_mass_to_the_image_centre():
    from squiggles.models import Recenter

    out = Recenter()(_blob(2, 1, 2))  # a 3 x 2 blob whose centroid is at (2, 2.5)
    rows, cols = torch.arange(15.0), torch.arange(15.0)
    mass = out[0, 0]
    assert abs(float((mass.sum(1) * rows).sum() / mass.sum()) - 7.0) < 1e-4
    assert abs(float((mass.sum(0) * cols).sum() / mass.sum()) - 7.0) < 1e-4
    assert torch.allclose(out.sum(), _blob(2, 1, 2).sum(), atol=1e-4)  # nothing pushed off the image


def test_recenter_makes_whole_pixel_shifts_invisible_and_leaves_blank_images_alone():
    from squiggles.models import Recenter

    a, b = Recenter()(_blob(1, 2, 3)), Recenter()(_blob(1, 8, 9))
    assert torch.allclose(a, b, atol=1e-5)
    blank = torch.full((2, 1, 15, 15), 0.25)
    assert torch.equal(Recenter()(blank), blank)
    with pytest.raises(ModelError, match="N x C x H x W"):
        Recenter()(torch.rand(3, 15))


def test_upright_stands_a_tilted_bar_vertical_and_undoes_a_rotation():
    from squiggles.models import Recenter
    from squiggles.transforms import Spatial

    bar = torch.zeros(1, 1, 15, 15)
    bar[0, 0, 7, 3:12] = 1.0  # horizontal: the turn is 90 degrees either way
    up = Recenter(upright=True)(bar)[0, 0]
    assert int(up[:, 7].gt(0.5).sum()) == 9  # the bar now lies along the centre column
    blob = _blob(1, 2, 5) + _blob(1, 9, 5)  # two blobs one above the other: a clear axis
    turned = Spatial(30, 3).apply(blob, torch.tensor([[25.0, 1.0, -1.0]]))
    same = Recenter(upright=True)
    plain = Recenter()
    assert (same(turned) - same(blob)).abs().mean() < 0.3 * (plain(turned) - plain(blob)).abs().mean()
    round_blob = torch.zeros(1, 1, 15, 15)
    round_blob[0, 0, 6:9, 6:9] = 1.0  # no axis: only recentred, gradients stay finite
    x = round_blob.clone().requires_grad_(True)
    out = Recenter(upright=True)(x)
    assert torch.allclose(out, round_blob, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("arch", ["madry-cnn", "small-cnn", "trades-cnn"])
def test_recenter_option_puts_the_module_first_and_is_differentiable(arch):
    from squiggles.models import Recenter

    net = build_model(arch, recenter=True, mean=0.1307, std=0.3081).eval()
    assert isinstance(net[0], Recenter)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ModelError, match="recenter must be true or false"):
        build_model(arch, recenter="yes")
    assert build_model(arch, upright=True)[0].upright
    with pytest.raises(ModelError, match="upright must be true or false"):
        build_model(arch, upright=1)


def test_mlp_activation():
    net = build_model("mlp", in_shape=(1, 4, 4), hidden=[8, 8], activation="gelu")
    assert sum(isinstance(m, nn.GELU) for m in net.modules()) == 2 and not any(isinstance(m, nn.ReLU) for m in net)
    x = torch.randn(3, 1, 4, 4)
    first = net[1](net[0](x))
    assert torch.allclose(net[2](first), torch.nn.functional.gelu(first, approximate="tanh"))
    with pytest.raises(ModelError, match="activation must be one of relu, gelu"):
        build_model("mlp", activation="tanh")
