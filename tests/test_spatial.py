"""The spatial threat (rotations and translations) and the grid, worst-of-k and first-order attacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squiggles.attacks.spatial import parameter_size, spatial_fo, spatial_grid, spatial_random
from squiggles.errors import SquigglesError
from squiggles.goals import Targeted
from squiggles.threat import Linf
from squiggles.transforms import Spatial


def _images(n: int = 6, size: int = 12) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def _cnn(size: int = 12, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * (size - 2) ** 2, classes))


# --- the transform -----------------------------------------------------------------------------------
def test_zero_parameters_are_exactly_the_identity():
    s, x = Spatial(), torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.apply(x, s.identity(x)), x)
    params = s.identity(x).requires_grad_(True)
    (grad,) = torch.autograd.grad(s.apply(x, params).square().sum(), params)
    assert grad.abs().sum() > 0, "the parameters keep their gradient at the identity"


def test_rotation_by_90_degrees_matches_rot90_and_minus_90_the_other_way():
    s, x = Spatial(max_rotation=180), _images(3, 9)
    ninety = torch.tensor([[90.0, 0, 0]]).repeat(3, 1)
    assert torch.allclose(s.apply(x, ninety), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(s.apply(x, -ninety), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)


def test_rotation_of_a_non_square_image_stays_a_rotation():
    # A 180-degree turn is exact on any rectangle: the pixel grid maps onto itself.
    s = Spatial(max_rotation=180)
    x = torch.rand(2, 3, 6, 10, generator=torch.Generator().manual_seed(2))
    half = torch.tensor([[180.0, 0, 0]]).repeat(2, 1)
    assert torch.allclose(s.apply(x, half), torch.flip(x, dims=(2, 3)), atol=1e-5)


def test_whole_pixel_translation_shifts_the_image_and_pads_with_zeros():
    s, x = Spatial(), _images(2, 8)
    out = s.apply(x, torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 0.0]]))
    # right by 2, up by 1: out[i, j] = x[i + 1, j - 2]
    assert torch.allclose(out[0, 0, :-1, 2:], x[0, 0, 1:, :-2], atol=1e-5)
    assert torch.all(out[0, 0, :, :2] == 0) and torch.all(out[0, 0, -1, :] == 0)
    assert torch.allclose(out[1], x[1], atol=1e-6)


def test_apply_is_differentiable_in_the_parameters():
    s, x = Spatial(), _images(2)
    p = torch.tensor([[10.0, 0.5, -0.5], [-5.0, 1.0, 1.0]], requires_grad=True)
    s.apply(x, p).sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_the_grid_is_exactly_the_documented_set():
    g = Spatial(30, 3).grid()
    assert g.shape == (775, 3)
    assert torch.equal(torch.unique(g[:, 0]), torch.linspace(-30, 30, 31))
    for col in (1, 2):
        assert torch.equal(torch.unique(g[:, col]), torch.tensor([-3.0, -1.5, 0.0, 1.5, 3.0]))
    assert len(torch.unique(g, dim=0)) == 775
    assert (g == 0).all(1).sum() == 1  # the identity is in it once


def test_sample_project_and_step_stay_in_the_box():
    s, x = Spatial(20, 2), _images(50)
    gen = torch.Generator().manual_seed(0)
    p = s.sample(x, gen)
    lim = torch.tensor([20.0, 2.0, 2.0])
    assert (p.abs() <= lim).all()
    q = s.project(p + s.step(torch.randn(50, 3, generator=gen), 5.0))
    assert (q.abs() <= lim + 1e-6).all() and (q.abs() == lim).any()
    assert torch.equal(parameter_size(s.project(torch.tensor([[100.0, 0, 0]])), s), torch.tensor([1.0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_rotation": 181}, "between 0 and 180"), ({"max_translation": -1}, "max_translation .* must be >= 0")],
)
def test_bad_spatial_bounds_are_refused(kwargs, message):
    with pytest.raises(SquigglesError, match=message):
        Spatial(**kwargs)


def test_spatial_on_flat_inputs_is_refused_with_the_fix():
    model = nn.Linear(6, 3)
    with pytest.raises(SquigglesError, match="needs images shaped N x C x H x W"):
        spatial_grid(model, torch.rand(4, 6), None, Spatial())


def test_a_norm_ball_on_top_of_the_transform():
    both = Spatial(10, 1) + Linf(0.1)
    x = _images(2)
    p = torch.tensor([[5.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out = both.apply(x, p, torch.full_like(x, 0.5))
    moved = Spatial(10, 1).apply(x, p)
    assert ((out - moved).abs().amax() <= 0.1 + 1e-6) and out.min() >= 0 and out.max() <= 1
    assert both.describe()["threat"] == "spatial+linf"


# --- the attacks -------------------------------------------------------------------------------------
ATTACKS = {
    "grid": lambda m, x, y, t, **kw: spatial_grid(m, x, y, t, rotations=7, translations=3, **kw),
    "random": lambda m, x, y, t, **kw: spatial_random(m, x, y, t, k=10, **kw),
    "fo": lambda m, x, y, t, **kw: spatial_fo(m, x, y, t, steps=10, **kw),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_stay_in_the_box_and_success_is_verified(name):
    model, x, s = _cnn(), _images(), Spatial(30, 2)
    res = ATTACKS[name](model, x, None, s)
    assert res.params.shape == (len(x), 3)
    assert (res.params.abs() <= torch.tensor([30.0, 2.0, 2.0]) + 1e-5).all()
    assert torch.allclose(res.x_adv, s.apply(x, res.params).clamp(0, 1), atol=1e-6)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred, res.pred) and torch.equal(res.success, pred != res.labels)
    assert all(p.grad is None for p in model.parameters())
    assert (res.norms <= 1 + 1e-6).all() and res.queries.min() >= 2


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_are_deterministic_for_a_seed(name):
    model, x, s = _cnn(), _images(), Spatial()
    a, b = ATTACKS[name](model, x, None, s, seed=3), ATTACKS[name](model, x, None, s, seed=3)
    assert torch.equal(a.params, b.params) and torch.equal(a.success, b.success)


def test_the_grid_finds_a_rotation_that_a_rotation_sensitive_model_fails_on():
    # The model reads one corner pixel: class 1 when it is bright. Rotating a bright top-left corner by 90
    # degrees (either way) moves it, so the grid over {-90, 0, 90} must find a flip for every bright image.
    x = torch.zeros(4, 1, 5, 5)
    x[:, 0, 0, 0] = 1.0

    def corner(z: torch.Tensor) -> torch.Tensor:
        v = z[:, 0, 0, 0]
        return torch.stack([0.5 - v, v - 0.5], 1)

    res = spatial_grid(corner, x, torch.ones(4, dtype=torch.long), Spatial(90, 0), rotations=3, translations=1)
    assert res.success.all() and (res.params[:, 0].abs() == 90).all()


def test_the_grid_without_early_stop_is_the_exact_worst_case():
    model, x, s = _cnn(), _images(4), Spatial(30, 2)
    full = spatial_grid(model, x, None, s, rotations=5, translations=3, early_stop=False)
    grid = s.grid(5, 3)
    with torch.no_grad():
        clean = model(x).argmax(1)
        ok = torch.stack([model(s.apply(x, g.repeat(len(x), 1))).argmax(1) == clean for g in grid])
    assert torch.equal(full.success, ~ok.all(0))
    early = spatial_grid(model, x, None, s, rotations=5, translations=3)
    assert torch.equal(early.success, full.success) and early.queries.sum() <= full.queries.sum()


def test_first_order_never_ends_worse_than_its_start():
    from squiggles.losses import margin

    model, x, s = _cnn(), _images(8), Spatial(30, 2)
    res = spatial_fo(model, x, None, s, steps=15, seed=1)
    start = s.sample(x, torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(1)
        before = margin(model(s.apply(x, start)), labels)
        after = margin(model(res.x_adv), labels)
    assert (after >= before - 1e-5).all()


def test_targeted_grid_ends_in_the_target_when_it_succeeds():
    model, x, s = _cnn(), _images(8), Spatial(180, 3)
    with torch.no_grad():
        labels = model(x).argmax(1)
    targets = (labels + 1) % 4
    res = spatial_grid(model, x, Targeted(targets, labels=labels), s, rotations=13, translations=3)
    assert torch.equal(res.success, res.pred == targets) and res.success.any()


def test_grid_draws_come_from_the_grid_and_uniform_ones_fill_the_box():
    model, x, s = _cnn(), _images(64), Spatial(30, 3)
    grid = s.grid()
    on_grid = spatial_random(model, x, None, s, k=3, draw="grid", seed=1).params
    assert ((on_grid[:, None, :] - grid[None]).abs().amax(2) < 1e-5).any(1).all(), "every draw is a grid point"
    uniform = spatial_random(model, x, None, s, k=3, seed=1).params
    assert not ((uniform[:, None, :] - grid[None]).abs().amax(2) < 1e-5).any(1).all()
    assert (uniform.abs() <= torch.tensor([30.0, 3.0, 3.0])).all()


def test_bad_attack_options_are_refused():
    model, x = _cnn(), _images(2)
    with pytest.raises(SquigglesError, match="draw must be one of uniform, grid"):
        spatial_random(model, x, None, Spatial(), draw="edges")
    with pytest.raises(SquigglesError, match="k .* must be an integer >= 1"):
        spatial_random(model, x, None, Spatial(), k=0)
    with pytest.raises(SquigglesError, match="rotations .* must be an integer >= 1"):
        spatial_grid(model, x, None, Spatial(), rotations=0)
    with pytest.raises(SquigglesError, match="needs a squiggles.transforms.Spatial threat"):
        spatial_grid(model, x, None, Linf(0.1))


# --- the command line --------------------------------------------------------------------------------
def test_spatial_grid_from_the_cli_writes_the_transforms(digits_model, tmp_path):
    from safetensors.torch import load_file

    from tests.conftest import run_cli

    out = tmp_path / "spatial"
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--n", "30", "--attack",
                  "spatial-grid", "--max-rotation", "30", "--max-translation", "1", "--rotations", "7",
                  "--translations", "3", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["threat"]["threat"] == "spatial" and summary["config"]["transforms"] == 63
    t = load_file(str(out / "adversarial.safetensors"))
    assert t["params"].shape == (30, 3) and (t["params"][:, 0].abs() <= 30).all()
    assert (t["params"][:, 1:].abs() <= 1).all() and (out / "examples.png").exists()
    assert "rotation +-30 deg" in res.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--attack", "spatial-grid", "--max-rotation", "200"], "--max-rotation) must be between 0 and 180"),
        (["--attack", "spatial-grid", "--eps", "0.1"], "--eps is for norm threats"),
        (["--attack", "spatial-random", "--rotations", "3"], "takes no --rotations"),
    ],
)
def test_spatial_bad_arguments_exit_2_and_write_nothing(digits_model, tmp_path, extra, message):
    from tests.conftest import run_cli

    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--out", str(tmp_path / "o"), *extra)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_sampling_grid_matches_affine_grid():
    import torch.nn.functional as F

    from squiggles.transforms import sampling_grid

    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    for h, w in ((7, 7), (5, 9)):
        want = F.affine_grid(theta, [5, 1, h, w], align_corners=False)
        assert torch.allclose(sampling_grid(theta, h, w), want, atol=1e-6)
