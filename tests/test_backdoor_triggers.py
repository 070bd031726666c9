"""Triggers sit exactly where documented and keep bounds; label maps; exact poisoned counts; the attack success rate."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

from squiggles.backdoor.poison import (
    PoisonSpec,
    attack_success_rate,
    load_poisoning,
    poison,
    poisoned_count,
    save_poisoning,
)
from squiggles.backdoor.triggers import Blend, LabelMap, Pattern, Pixel, Stamp, make_trigger
from squiggles.errors import SquigglesError

BOARD = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


def _images(n: int = 4, c: int = 1, h: int = 8, w: int = 8, lo: float = 0.2, hi: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return lo + (hi - lo) * torch.rand(n, c, h, w, generator=g)


@pytest.mark.parametrize(("corner", "rows", "cols"), [("bottom-right", (4, 7), (4, 7)), ("top-left", (1, 4), (1, 4)),
                                                      ("top-right", (1, 4), (4, 7)), ("bottom-left", (4, 7), (1, 4))])
def test_pattern_is_a_checkerboard_exactly_where_documented_and_nothing_else_changes(corner, rows, cols):
    x = _images(c=3)
    out = Pattern(size=3, distance=1, corner=corner).apply(x)
    window = out[:, :, rows[0]:rows[1], cols[0]:cols[1]]
    assert torch.equal(window, BOARD.expand_as(window))
    changed = out != x
    changed[:, :, rows[0]:rows[1], cols[0]:cols[1]] = False
    assert not changed.any()


def test_pattern_uses_the_bounds_and_an_explicit_position():
    x = torch.zeros(2, 1, 10, 10, dtype=torch.float64)
    out = Pattern(size=2, at=(0, 5)).apply(x, bounds=(-1.0, 2.0))
    assert out.dtype == torch.float64
    assert torch.equal(out[0, 0, 0:2, 5:7], torch.tensor([[2.0, -1.0], [-1.0, 2.0]], dtype=torch.float64))
    assert float(out.min()) >= -1 and float(out.max()) <= 2


def test_pixel_sets_one_pixel_per_channel_to_the_upper_bound():
    x = _images(c=2)
    out = Pixel(distance=0).apply(x)
    assert torch.equal(out[:, :, 7, 7], torch.ones(4, 2))
    out[:, :, 7, 7] = x[:, :, 7, 7]
    assert torch.equal(out, x)
    assert torch.equal(Pixel(at=(2, 3)).apply(x)[:, 0, 2, 3], torch.ones(4))


def test_blend_is_the_convex_combination_with_a_seeded_key_and_stays_in_bounds():
    x = _images()
    mask, key = Blend(alpha=0.25, seed=3).stamp((1, 8, 8))
    assert torch.equal(mask, torch.full((1, 8, 8), 0.25))
    assert torch.equal(key, Blend(alpha=0.25, seed=3).stamp((1, 8, 8))[1])  # same seed, same key
    assert not torch.equal(key, Blend(seed=4).stamp((1, 8, 8))[1])
    out = Blend(alpha=0.25, seed=3).apply(x)
    assert torch.allclose(out, 0.75 * x + 0.25 * key)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    given = torch.full((1, 8, 8), 0.5)
    assert torch.allclose(Blend(alpha=0.5, image=given).apply(torch.ones(1, 1, 8, 8)), torch.full((1, 1, 8, 8), 0.75))
    flat = Blend(alpha=0.1).apply(torch.zeros(3, 5))  # any input shape, not only images
    assert flat.shape == (3, 5) and float(flat.max()) <= 0.1


def test_a_saved_stamp_applies_exactly_as_its_trigger():
    x = _images()
    mask, pattern = Pattern().stamp((1, 8, 8))
    assert torch.equal(Stamp(mask, pattern).apply(x), Pattern().apply(x))


@pytest.mark.parametrize(("trigger", "shape", "message"), [
    (Pattern(size=9), (1, 8, 8), "--trigger-size 9 is larger than the 8 x 8 image; use at most 8"),
    (Pattern(size=3, distance=6), (1, 8, 8), "--trigger-distance 6 puts the 3 x 3 trigger outside"),
    (Pattern(size=3, at=(6, 0)), (1, 8, 8), "--trigger-at 6,0 puts the 3 x 3 trigger outside the 8 x 8 image"),
    (Pixel(at=(0, 8)), (1, 8, 8), "--trigger-at 0,8 puts the 1 x 1 trigger outside"),
    (Pattern(), (500,), "--poison pattern places pixels on images"),
    (Blend(alpha=1.5), (1, 8, 8), "--trigger-alpha must be in (0, 1]"),
    (Blend(image=torch.zeros(1, 4, 4)), (1, 8, 8), "--trigger-image has shape (1, 4, 4)"),
])
def test_a_trigger_that_does_not_fit_is_one_clear_error(trigger, shape, message):
    with pytest.raises(SquigglesError) as err:
        trigger.check(shape)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_make_trigger_refuses_options_of_another_kind():
    assert make_trigger("pattern", size=4, distance=0) == Pattern(size=4, distance=0)
    with pytest.raises(SquigglesError, match="--poison pattern takes no --trigger-alpha"):
        make_trigger("pattern", alpha=0.3)
    with pytest.raises(SquigglesError, match="--poison 'stars' is unknown"):
        make_trigger("stars")


def test_label_maps():
    y = torch.tensor([0, 3, 9, 3])
    assert torch.equal(LabelMap("all-to-all")(y, 10), torch.tensor([1, 4, 0, 4]))
    assert torch.equal(LabelMap("all-to-one", 3)(y, 10), torch.full((4,), 3))
    assert torch.equal(LabelMap("all-to-one", 3).eligible(y), torch.tensor([True, False, True, False]))
    assert bool(LabelMap("all-to-all").eligible(y).all())
    with pytest.raises(SquigglesError, match="--poison-target 10 is not a class of this data"):
        LabelMap("all-to-one", 10).check(10)


@pytest.mark.parametrize(("rate", "label_map"), [(0.1, LabelMap("all-to-one", 0)), (0.25, LabelMap("all-to-one", 7)),
                                                 (0.05, LabelMap("all-to-all")), (0.999, LabelMap("all-to-one", 1))])
def test_the_poisoned_fraction_is_exact(rate, label_map):
    y = torch.arange(1003) % 10
    x = _images(n=1003)
    out = poison(x, y, Pattern(), label_map, rate, num_classes=10, seed=5)
    eligible = int(label_map.eligible(y).sum())
    assert out.eligible == eligible
    assert len(out.indices) == poisoned_count(rate, eligible) == int(rate * eligible + 0.5)
    assert bool(label_map.eligible(y)[out.indices].all())  # only points the map can change
    assert torch.equal(out.y[out.indices], label_map(y[out.indices], 10))
    assert torch.equal(out.x[out.indices], Pattern().apply(x[out.indices]))
    rest = torch.ones(1003, dtype=torch.bool)
    rest[out.indices] = False
    assert torch.equal(out.x[rest], x[rest]) and torch.equal(out.y[rest], y[rest])
    again = poison(x, y, Pattern(), label_map, rate, num_classes=10, seed=5)
    assert torch.equal(again.indices, out.indices)
    if rate < 0.9:
        assert not torch.equal(poison(x, y, Pattern(), label_map, rate, num_classes=10, seed=6).indices, out.indices)


def test_poisoned_count_rounds_halves_up():
    assert [poisoned_count(0.5, n) for n in (1, 3, 5)] == [1, 2, 3]
    assert poisoned_count(0.1, 45) == 5 and poisoned_count(0.1, 44) == 4


@pytest.mark.parametrize(("rate", "message"), [(1.5, "--poison-rate must be in (0, 1), e.g. 0.1; got 1.5"),
                                               (0.0, "--poison-rate must be in (0, 1)"),
                                               (0.001, "--poison-rate 0.001 poisons no point of the 90")])
def test_a_bad_rate_is_refused(rate, message):
    with pytest.raises(SquigglesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        poison(_images(n=100), torch.arange(100) % 10, Pattern(), LabelMap(), rate, num_classes=10)


class _CornerModel(nn.Module):
    """Class 2 when pixel (6, 6) is bright, else the class stored in pixel (0, 0) times 10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 9)
        pred = torch.where(x[:, 0, 6, 6] > 0.9, torch.full_like(own, 2), own)
        return nn.functional.one_hot(pred, 10).float()


def test_attack_success_rate_counts_the_stamped_points_of_other_classes():
    y = torch.arange(50) % 10
    x = torch.zeros(50, 1, 8, 8)
    x[:, 0, 0, 0] = y / 10
    asr, n = attack_success_rate(_CornerModel(), x, y, Pixel(distance=1), LabelMap("all-to-one", 2), num_classes=10)
    assert (asr, n) == (1.0, 45)
    asr, n = attack_success_rate(_CornerModel(), x, y, Pixel(distance=0), LabelMap("all-to-one", 2), num_classes=10)
    assert (asr, n) == (0.0, 45)  # the wrong pixel: nothing goes to class 2
    asr, n = attack_success_rate(_CornerModel(), x, y, Pixel(distance=1), LabelMap("all-to-all"), num_classes=10)
    assert n == 50 and asr == pytest.approx(5 / 50)  # only class 1's points should go to class 2


def test_the_poisoning_files_round_trip(tmp_path):
    y = torch.arange(200) % 10
    x = _images(n=200)
    spec = PoisonSpec(trigger=Pattern().describe(), target=4, rate=0.2, seed=1)
    out = poison(x, y, spec.make_trigger(), spec.labels(), spec.rate, num_classes=10, seed=spec.seed)
    save_poisoning(tmp_path, spec, out, spec.make_trigger(), (1, 8, 8), (0.0, 1.0), len(y))
    back = load_poisoning(tmp_path)
    assert back["spec"] == spec and torch.equal(back["indices"], out.indices) and back["poisoned"] == 36
    assert torch.equal(back["stamp"].apply(x), Pattern().apply(x))
    assert load_poisoning(tmp_path / "nothing") is None


@pytest.mark.parametrize("module", ["triggers", "poison", "detect", "cleanse", "__init__"])
def test_docstring_examples_run(module):
    mod = importlib.import_module("squiggles.backdoor" + ("" if module == "__init__" else f".{module}"))
    result = doctest.testmod(mod)
    assert result.failed == 0 and result.attempted > 0


def test_the_unlearning_set_stamps_an_exact_share_and_keeps_the_true_labels():
    from squiggles.backdoor.repair import remove_points, unlearning_set
    from squiggles.data import Dataset

    x, y = _images(n=50), torch.arange(50) % 10
    masks, patterns = torch.zeros(10, 1, 8, 8), torch.zeros(10, 1, 8, 8)
    masks[4, 0, 0, 0], patterns[4, 0, 0, 0] = 1.0, 1.0
    masks[6, 0, 7, 7], patterns[6, 0, 7, 7] = 1.0, 1.0
    xs, ys = unlearning_set(x, y, masks, patterns, [4, 6], share=0.2, seed=0)
    assert torch.equal(ys, y)
    changed = (xs != x).flatten(1).any(1)
    assert int(changed.sum()) == 10  # 20% of 50, half with each class's reversed trigger
    assert int((xs[:, 0, 0, 0] == 1).sum()) == 5 and int((xs[:, 0, 7, 7] == 1).sum()) == 5
    with pytest.raises(SquigglesError, match="no class to unlearn"):
        unlearning_set(x, y, masks, patterns, [], share=0.2)
    data = Dataset("d", "train", x, y, 10)
    kept = remove_points(data, torch.arange(50) < 10)
    assert len(kept) == 40 and torch.equal(kept.x, x[10:])


def test_a_poisoned_cards_command_line_repeats_the_poisoning():
    from squiggles.zoo import card_command

    poison = PoisonSpec(trigger=Pattern(size=4, at=(2, 3)).describe(), target=5, rate=0.05, seed=2).to_dict()
    card = {"arch": "small-cnn", "recipe": {"arch": "small-cnn", "dataset": "digits", "poison": poison}}
    assert card_command(card).endswith("--poison pattern --poison-rate 0.05 --poison-seed 2 --poison-target 5 "
                                       "--trigger-size 4 --trigger-at 2,3 --out DIR")
