"""Patches and stickers: pasting, masks, the universal patch and the per-image sticker attack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squiggles.attacks.patch import patch_success, stickers, universal_patch
from squiggles.errors import SquigglesError
from squiggles.goals import Targeted
from squiggles.patches import Patch, Stickers, transformed


def _images(n: int = 6, size: int = 12) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def _cnn(size: int = 12, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * (size - 2) ** 2, classes))


def test_paste_puts_the_content_exactly_where_asked_and_nowhere_else():
    x = _images(3, 10)
    p = Patch(2, 3)
    content = torch.arange(6.0).view(1, 2, 3) / 10
    rows, cols = torch.tensor([0, 4, 8]), torch.tensor([0, 5, 7])
    out = p.apply(x, content, rows, cols)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        assert torch.equal(out[i, :, r : r + 2, c : c + 3], content)
        rest = torch.ones(10, 10, dtype=torch.bool)
        rest[r : r + 2, c : c + 3] = False
        assert torch.equal(out[i, 0][rest], x[i, 0][rest])


def test_paste_is_differentiable_in_the_content_and_random_locations_fit():
    x, p = _images(8), Patch(4, 4)
    content = torch.full((1, 4, 4), 0.5, requires_grad=True)
    rows, cols = p.random_locations(x, torch.Generator().manual_seed(0))
    assert (rows >= 0).all() and (rows <= 8).all() and (cols <= 8).all()
    p.apply(x, content, rows, cols).sum().backward()
    assert torch.allclose(content.grad, torch.full((1, 4, 4), 8.0))  # every pixel pasted on each of 8 images


def test_transformed_copies_keep_content_in_bounds_and_identity_is_exact():
    content = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(0))
    same, mask = transformed(content, 3, None)
    assert torch.equal(same[0], content) and torch.equal(mask, torch.ones(3, 1, 5, 5))
    turned, mask = transformed(content, 4, torch.Generator().manual_seed(1), max_rotation=20, scale=(0.8, 1.0))
    assert turned.min() >= 0 and turned.max() <= 1 and mask.min() >= 0 and mask.max() <= 1 + 1e-6
    assert mask.sum() < 4 * 25  # a turned or shrunk patch leaves some of its rectangle bare


def test_patch_sizes_from_an_area_and_bad_patches_are_refused():
    assert (Patch.from_area(0.1, (28, 28)).height, Patch.from_area(0.04, (28, 28)).height) == (8, 5)
    with pytest.raises(SquigglesError, match="--patch-area is a fraction"):
        Patch.from_area(0.0, (28, 28))
    with pytest.raises(SquigglesError, match="less than one pixel"):
        Patch.from_area(0.0001, (28, 28))
    with pytest.raises(SquigglesError, match="non-zero area"):
        Patch(0, 3)
    with pytest.raises(SquigglesError, match="larger than the 12 x 12 images"):
        Patch(13, 2).random_locations(_images())


def test_sticker_mask_covers_the_rectangles_and_refuses_positions_outside():
    s, x = Stickers(2, 3, 3), _images(2, 10)
    m = s.mask(x, torch.tensor([[0, 5], [7, 7]]), torch.tensor([[0, 5], [0, 7]]))
    assert m.shape == (2, 1, 10, 10) and m[0].sum() == 18 and m[1].sum() == 18
    with pytest.raises(SquigglesError, match="sticker mask lies outside the 10 x 10 image"):
        s.mask(x, torch.tensor([[0, 8], [0, 0]]), torch.zeros(2, 2, dtype=torch.long))


def test_stickers_change_only_the_masked_pixels_and_stay_in_bounds():
    model, x = _cnn(), _images()
    res = stickers(model, x, None, Stickers(4, 3, 3), steps=20)
    changed = (res.x_adv != x).flatten(1).sum(1)
    assert (changed <= 4 * 9).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1), res.pred)
    assert torch.equal(res.success, res.pred != res.labels) and res.success.any()
    assert res.params.shape == (6, 8) and all(p.grad is None for p in model.parameters())


def test_salient_stickers_do_not_overlap_and_given_ones_are_used():
    model, x = _cnn(), _images(4)
    res = stickers(model, x, None, Stickers(3, 2, 2), steps=0)
    rows, cols = res.params[:, :3].long(), res.params[:, 3:].long()
    mask = Stickers(3, 2, 2).mask(x, rows, cols)
    assert (mask.flatten(1).sum(1) == 12).all(), "three 2 x 2 stickers that do not overlap cover 12 pixels"
    given = stickers(model, x, None, Stickers(1, 2, 2), rows=torch.zeros(4, 1, dtype=torch.long),
                     cols=torch.zeros(4, 1, dtype=torch.long), steps=3)
    assert torch.equal((given.x_adv != x)[:, :, 2:, :], torch.zeros_like(x[:, :, 2:, :], dtype=torch.bool))


def test_targeted_stickers_end_in_the_target_when_they_succeed_and_are_deterministic():
    model, x = _cnn(), _images(8)
    with torch.no_grad():
        labels = model(x).argmax(1)
    goal = Targeted((labels + 1) % 4, labels=labels)
    a = stickers(model, x, goal, Stickers(4, 3, 3), steps=30, seed=2)
    b = stickers(model, x, goal, Stickers(4, 3, 3), steps=30, seed=2)
    assert torch.equal(a.success, a.pred == (labels + 1) % 4) and torch.equal(a.x_adv, b.x_adv)


def test_universal_patch_learns_to_send_images_to_the_target():
    # A model that reads one corner pixel of each quadrant: a bright patch anywhere flips it to class 1.
    class Bright(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            v = z.flatten(1).amax(1)
            return torch.stack([2 * (0.9 - v), 2 * (v - 0.9)], 1)

    x = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 0.5
    y = torch.zeros(64, dtype=torch.long)
    trained = universal_patch(Bright(), x, y, 1, Patch(3, 3), steps=40, batch_size=16, lr=0.1, max_rotation=0,
                              scale=(1.0, 1.0), log_every=10, progress=False)
    assert trained.content.min() >= 0 and trained.content.max() <= 1 and trained.content.shape == (1, 3, 3)
    held = torch.rand(32, 1, 12, 12, generator=torch.Generator().manual_seed(1)) * 0.5
    res = patch_success(Bright(), held, torch.zeros(32, dtype=torch.long), trained)
    assert res["success_rate"] == 1.0 and res["images"] == 32 and len(trained.history) == 4
    with pytest.raises(SquigglesError, match="every training image is of the target class"):
        universal_patch(Bright(), x, y, 0, Patch(3, 3), steps=1, progress=False)


# --- the command line --------------------------------------------------------------------------------
def test_patch_train_and_apply_from_the_cli(digits_model, tmp_path):
    import json

    from tests.conftest import run_cli

    out = tmp_path / "p"
    res = run_cli("patch", "train", "--model", str(digits_model), "--dataset", "digits", "--target", "3",
                  "--patch-area", "0.15", "--steps", "30", "--batch-size", "32", "--test-n", "100", "--out", str(out),
                  "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patch"]["height"] == 3 and 0 < summary["images"] < 100  # the target class is left out
    assert 0 <= summary["success_rate"] <= 1 and summary["history"][-1]["step"] == 30
    for name in ("patch.safetensors", "patch.png", "worn.png"):
        assert (out / name).exists()
    again = run_cli("patch", "apply", "--patch", str(out), "--model", str(digits_model), "--dataset", "digits",
                    "--n", "50", "--out", str(tmp_path / "a"), "--quiet")
    assert again.returncode == 0, again.stderr
    applied = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert applied["action"] == "apply" and applied["target"] == 3 and applied["images"] <= 50


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train", "--target", "3", "--patch-area", "0"], "--patch-area: must be"),
        (["train", "--target", "3", "--patch-area", "0.001"], "less than one pixel"),
        (["train", "--target", "12"], "--target 12: the dataset has classes 0 to 9"),
        (["apply", "--patch", "nowhere"], "no patch.safetensors and summary.json there"),
    ],
)
def test_patch_bad_input_exits_2_and_writes_nothing(digits_model, tmp_path, extra, message):
    from tests.conftest import run_cli

    action, rest = extra[0], extra[1:]
    res = run_cli("patch", action, "--model", str(digits_model), "--dataset", "digits", "--out", str(tmp_path / "o"),
                  *rest)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_stickers_from_the_attack_command(digits_model, tmp_path):
    from safetensors.torch import load_file

    from squiggles.data import load_dataset
    from tests.conftest import run_cli

    out = tmp_path / "s"
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--n", "20", "--attack", "stickers",
                  "--stickers", "2", "--sticker-size", "2", "--steps", "20", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    t = load_file(str(out / "adversarial.safetensors"))
    clean = load_dataset("digits", "test").x[:20]
    assert ((t["x_adv"] != clean).flatten(1).sum(1) <= 8).all() and t["params"].shape == (20, 4)
    bad = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--attack", "stickers",
                  "--sticker-size", "9", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "larger than the 8 x 8 images" in bad.stderr and not (tmp_path / "b").exists()
