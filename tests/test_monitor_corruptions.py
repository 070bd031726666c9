"""MNIST-C corruptions: determinism, shapes and bounds, and each building block against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from squiggles.errors import SquigglesError
from squiggles.monitor import _imaging as im
from squiggles.monitor.corruptions import CORRUPTIONS, MNIST_C_SEVERITY, SCALED, corrupt


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Six 28 x 28 'digits': bars and rings on a black background, on the uint8 grid."""
    x = torch.zeros(6, 1, 28, 28)
    x[0, 0, 6:22, 12:16] = 1.0
    x[1, 0, 8:20, 8:20] = 0.6
    x[1, 0, 10:18, 10:18] = 0.0
    x[2, 0, 13:15, 5:23] = 1.0
    x[3, 0, 5:23, 5:9] = 200 / 255
    x[4, 0, 4:24, 14] = 1.0
    x[5] = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(3)).mul(255).round().div(255)
    return x


def test_the_published_suite():
    assert list(CORRUPTIONS) == ["shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale",
                                 "rotate", "brightness", "translate", "stripe", "fog", "spatter", "dotted_line",
                                 "zigzag", "canny_edges"]
    assert MNIST_C_SEVERITY["shot_noise"] == 5 and MNIST_C_SEVERITY["impulse_noise"] == 4
    assert MNIST_C_SEVERITY["glass_blur"] == 1 and MNIST_C_SEVERITY["fog"] == 5 and MNIST_C_SEVERITY["spatter"] == 4
    assert MNIST_C_SEVERITY["stripe"] is None and "stripe" not in SCALED and len(SCALED) == 11


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_shape_dtype_bounds_and_changed(name, digits):
    a = corrupt(digits, name, seed=1)
    b = corrupt(digits, name, seed=1)
    assert torch.equal(a, b)
    assert a.shape == digits.shape and a.dtype == digits.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(torch.round(a * 255) / 255, a)  # on the uint8 grid, like the published set
    assert not torch.equal(a, digits)
    assert float((a - digits).abs().mean()) > 1e-3


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in ("brightness", "stripe", "scale", "canny_edges")])
def test_random_corruptions_depend_on_the_seed(name, digits):
    assert not torch.equal(corrupt(digits, name, seed=1), corrupt(digits, name, seed=2))


@pytest.mark.parametrize("name", SCALED)
def test_severities_one_to_five(name, digits):
    outs = [corrupt(digits, name, s, seed=0) for s in range(1, 6)]
    assert all(o.shape == digits.shape for o in outs)
    # The default is the published severity: same draws as naming it.
    assert torch.equal(corrupt(digits, name, seed=0), outs[MNIST_C_SEVERITY[name] - 1])


def test_brightness_stripe_translate_by_hand(digits):
    assert torch.allclose(corrupt(digits, "brightness", 2), (digits + 0.2).clamp(0, 1), atol=0.5 / 255)
    striped = corrupt(digits, "stripe")
    assert torch.equal(striped[..., 7:21], digits[..., 7:21])
    assert torch.allclose(striped[..., :7], 1 - digits[..., :7], atol=1e-6)
    assert torch.allclose(corrupt(striped, "stripe"), digits, atol=1e-6)
    moved = corrupt(digits[:1], "translate", 3, seed=0)  # a whole-pixel shift by 3 along each axis
    found = [(dy, dx) for dy in (-3, 3) for dx in (-3, 3)
             if torch.equal(moved, torch.roll(digits[:1], (dy, dx), (2, 3)))]
    assert len(found) == 1


def test_glass_shuffle_only_moves_pixels():
    rng = np.random.default_rng(0)
    x = rng.random((5, 28, 28))
    y = im.glass_shuffle(x, 1, 2, rng)
    assert not np.array_equal(x, y)
    assert np.array_equal(np.sort(x.reshape(5, -1), 1), np.sort(y.reshape(5, -1), 1))


def test_glass_blur_blurs_along_rows_only_as_the_reference():
    x = np.zeros((1, 28, 28))
    x[0, 14, 14] = 1.0
    y = im.gaussian(x, 1.0, axes=(1,))
    assert y[0, :, 14].sum() == pytest.approx(1.0) and np.count_nonzero(y[0, 14]) == 1


def test_warp_identity_and_quarter_turn():
    x = np.random.default_rng(0).random((2, 28, 28))
    eye = np.broadcast_to(np.eye(2), (2, 2, 2))
    assert np.allclose(im.warp_affine(x, eye, np.zeros((2, 2))), x)
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])[None].repeat(2, 0)  # output (c, r) reads input (-r, c) about the centre
    out = im.warp_affine(x, turn, im.about_centre(turn, 28, 28))
    assert np.allclose(out, np.rot90(x, k=1, axes=(1, 2)), atol=1e-9)  # out[r, c] = x[c, 27 - r]


def test_motion_blur_is_a_one_sided_gaussian_streak():
    x = np.zeros((1, 28, 28))
    x[0, 14, 10] = 1.0
    y = im.motion_blur(x, radius=3, sigma=1.0, angle_deg=np.array([0.0]))
    taps = np.exp(-(np.arange(7) ** 2) / 2.0)
    taps /= taps.sum()
    # Output p averages x at p + i along the row, so the streak trails to the left of the dot.
    assert np.allclose(y[0, 14, 4:11], taps[::-1])
    assert y.sum() == pytest.approx(1.0) and np.count_nonzero(y[0, :14]) == 0


def test_plasma_maps_are_normalised_per_image():
    maps = im.plasma_fractal(3, 1.4, np.random.default_rng(0), 64)
    assert maps.shape == (3, 64, 64)
    assert np.allclose(maps.min((1, 2)), 0) and np.allclose(maps.max((1, 2)), 1)


def test_line_intensity_decays_from_the_line():
    out = im.line(np.array([0.0]), np.array([10.0]), np.array([27.0]), np.array([10.0]), 28, 28)[0]
    assert np.allclose(out[10, :27], 1.0) and np.allclose(out[10, 27:], 0.0)  # columns from floor(c0) to ceil(c1)
    assert np.allclose(out[11, 5], np.log(1 - 1 / 2.3) + 1) and np.allclose(out[13:, :], 0.0)
    assert np.allclose(im.line(np.array([5.0]), np.array([1.0]), np.array([5.0]), np.array([20.0]), 28, 28), 0)


def test_canny_outlines_a_square():
    x = np.zeros((1, 28, 28))
    x[0, 8:20, 8:20] = 1.0
    edges = im.canny(x)[0]
    assert edges[13, 7:10].any() and edges[13, 18:21].any()  # left and right sides
    assert not edges[12:16, 12:16].any() and not edges[:4].any()  # nothing inside or far outside
    assert set(np.unique(edges)) <= {0.0, 1.0}
    assert not im.canny(np.zeros((1, 28, 28))).any()


def test_channels_share_their_draws(digits):
    rgb = digits.repeat(1, 3, 1, 1)
    out = corrupt(rgb, "rotate", seed=4)
    assert torch.equal(out[:, 0], out[:, 2]) and torch.equal(out[:, :1], corrupt(digits, "rotate", seed=4))


def test_bad_input_is_refused(digits):
    with pytest.raises(SquigglesError, match="unknown corruption 'snow'"):
        corrupt(digits, "snow")
    with pytest.raises(SquigglesError, match="--severity must be 1 to 5"):
        corrupt(digits, "fog", 6)
    with pytest.raises(SquigglesError, match="has no severity scale"):
        corrupt(digits, "stripe", 2)
    with pytest.raises(SquigglesError, match="tabular or 1-D"):
        corrupt(torch.rand(4, 10), "fog")
    with pytest.raises(SquigglesError, match=r"values in \[0, 1\]"):
        corrupt(digits * 2, "fog")
