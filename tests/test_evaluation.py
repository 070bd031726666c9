"""The evaluation cascade on a small digits model: worst case, breakdown, curves, resume, verification."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import squiggles
from squiggles.errors import SquigglesError
from squiggles.evaluation import Stage
from squiggles.evaluation.cascade import CLEAN_ERROR, REUSED, ROBUST
from squiggles.threat import Linf

FAST = (Stage("fgsm"), Stage("pgd", {"steps": 10}), Stage("apgd-t", {"steps": 10, "n_target_classes": 3}))


@pytest.fixture(scope="module")
def setup(digits_model):
    model = squiggles.load_model(digits_model)
    test = squiggles.load_dataset("digits", "test").subset(120)
    return model, test


def test_cascade_is_the_per_point_worst_case_with_a_cumulative_breakdown(setup):
    model, test = setup
    res = squiggles.evaluate(model, test, Linf(0.1), FAST, batch_size=50, progress=False, checks=False)
    codes = res.broken_by[0]
    assert torch.equal(res.clean_correct, codes != CLEAN_ERROR)
    assert torch.equal(res.robust[0], codes == ROBUST)
    rows = res.breakdown()
    accs = [r["accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True) and accs[-1] == pytest.approx(res.robust_accuracy)
    assert sum(r["broken"] for r in rows[1:]) == int((res.clean_correct & ~res.robust[0]).sum())
    # Each attack alone is no stronger than the cascade: the cascade keeps every point any attack broke.
    for stage in FAST:
        alone = squiggles.evaluate(model, test, Linf(0.1), (stage,), batch_size=50, progress=False, checks=False)
        assert alone.robust_accuracy >= res.robust_accuracy
    # Every returned input is inside the budget and re-verified by a final forward pass.
    assert (Linf(0.1).norm(res.x_adv[0] - test.x) <= 0.1 + 1e-5).all()
    with torch.no_grad():
        assert torch.equal(model(res.x_adv[0]).argmax(1) == test.y, res.robust[0])
    assert res.disagreements == [0]


def test_curve_is_monotone_and_reuses_results(setup):
    model, test = setup
    res = squiggles.evaluate(model, test, Linf(0.1), FAST, eps=[0.2, 0.0, 0.05, 0.1], batch_size=60,
                             progress=False, checks=False)
    assert res.eps == [0.0, 0.05, 0.1, 0.2]
    accs = [c["robust_accuracy"] for c in res.curve()]
    assert accs[0] == pytest.approx(res.clean_accuracy)
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]
    assert res.min_norms is not None and (res.broken_by[1:] == REUSED).any()
    for k, eps in enumerate(res.eps):
        assert (Linf(eps).norm(res.x_adv[k] - test.x) <= eps + 1e-5).all()


def test_same_result_for_any_batch_order_of_resume(setup, tmp_path):
    model, test = setup
    full = squiggles.evaluate(model, test, Linf(0.1), FAST, batch_size=40, progress=False, checks=False)

    calls = {"n": 0}

    class Interrupting(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            calls["n"] += 1
            if calls["n"] == 60:
                raise KeyboardInterrupt
            return self.inner(x)

    state = tmp_path / "state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        squiggles.evaluate(Interrupting(), test, Linf(0.1), FAST, batch_size=40, progress=False, checks=False,
                           state_path=state)
    assert state.exists()
    resumed = squiggles.evaluate(model, test, Linf(0.1), FAST, batch_size=40, progress=False, checks=False,
                                 state_path=state)
    assert torch.equal(resumed.robust, full.robust) and torch.equal(resumed.broken_by, full.broken_by)
    assert torch.equal(resumed.x_adv, full.x_adv)
    with pytest.raises(SquigglesError, match="other settings"):
        squiggles.evaluate(model, test, Linf(0.2), FAST, batch_size=40, progress=False, state_path=state)


def test_non_deterministic_model_is_reported_not_hidden(setup):
    model, test = setup

    class Flaky(nn.Module):
        """Deterministic while attacked; says 'class 0' to every other call, as a train-mode bug might."""

        def __init__(self):
            super().__init__()
            self.inner = model
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return out if self.calls % 2 else out + 100 * torch.nn.functional.one_hot(
                torch.zeros(len(x), dtype=torch.long), out.shape[1])

    res = squiggles.evaluate(Flaky(), test, Linf(0.05), (Stage("fgsm"),), batch_size=120, progress=False)
    codes = {f["code"] for f in res.flags}
    assert "randomized-model" in codes or "non-deterministic" in codes


def test_bad_arguments(setup):
    model, test = setup
    with pytest.raises(SquigglesError, match="unknown attack"):
        squiggles.evaluate(model, test, Linf(0.1), "nope", progress=False)
    with pytest.raises(SquigglesError, match="minimal-norm"):
        squiggles.evaluate(model, test, Linf(0.1), ["fmn"], progress=False)
    with pytest.raises(SquigglesError, match="eps must be"):
        squiggles.evaluate(model, test, Linf(0.1), FAST, eps=[-1.0], progress=False)
    with pytest.raises(SquigglesError, match="Dataset or a tuple"):
        squiggles.evaluate(model, "data", Linf(0.1), FAST, progress=False)


def test_model_calls_include_the_minimal_norm_prepass(setup):
    model, test = setup
    res = squiggles.evaluate(model, test, Linf(0.1), FAST, eps=[0.05, 0.1], batch_size=60, progress=False,
                             checks=False)
    stages = sum(s["forwards"] for per in res.stage_stats for s in per)
    assert res.prepass_stats is not None and res.prepass_stats["forwards"] > 0
    assert res.model_calls()["forwards"] == stages + res.prepass_stats["forwards"]
    assert res.to_json()["minimal_norm_prepass"]["backwards"] > 0


def test_fast_layout_is_channels_last_inside_and_restored_after():
    from squiggles.models import build_model
    from squiggles.runtime import fast_layout

    torch.manual_seed(0)
    cnn = build_model("small-cnn", in_shape=(1, 8, 8), num_classes=10).eval()
    x = torch.rand(4, 1, 8, 8)
    before = cnn(x)
    conv = next(p for p in cnn.parameters() if p.dim() == 4 and p.shape[1] > 1)
    with fast_layout(cnn, x):
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        inside = cnn(x)
    assert all(p.is_contiguous() for p in cnn.parameters())
    assert torch.allclose(inside, before, atol=1e-5)
    mlp = build_model("mlp", in_shape=(6,), num_classes=2)
    with fast_layout(mlp, torch.rand(3, 6)):  # nothing to convolve: untouched
        assert all(p.is_contiguous() for p in mlp.parameters())


def test_fast_layout_nested_blocks_and_keep_layout_leave_the_outer_layout_alone():
    from squiggles.models import build_model
    from squiggles.runtime import fast_layout, keep_layout

    cnn = build_model("small-cnn", in_shape=(1, 8, 8), num_classes=10).eval()
    x = torch.rand(4, 1, 8, 8)
    conv = next(p for p in cnn.parameters() if p.dim() == 4 and p.shape[1] > 1)
    with fast_layout(cnn, x):
        with fast_layout(cnn, x):
            pass
        # the inner block did not restore NCHW under the outer one
        assert not conv.is_contiguous()
    assert conv.is_contiguous()
    with keep_layout(), fast_layout(cnn, x):
        assert conv.is_contiguous()
    cnn.to(memory_format=torch.channels_last)  # the user's own choice of layout is kept, not "restored"
    with fast_layout(cnn, x):
        pass
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_layout_mirror_is_a_channels_last_copy_that_follows_the_weights():
    from squiggles.models import build_model
    from squiggles.runtime import LayoutMirror

    torch.manual_seed(0)
    cnn = build_model("small-cnn", in_shape=(1, 8, 8), num_classes=10)
    x = torch.rand(4, 1, 8, 8)
    mirror = LayoutMirror()
    copy = mirror(cnn, x)
    assert copy is not cnn and all(p.is_contiguous() for p in cnn.parameters())  # the model keeps its layout
    conv = next(p for p in copy.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    with torch.no_grad():
        for p in cnn.parameters():
            p.add_(0.1)  # an optimizer step
    cnn.eval()
    again = mirror(cnn, x)
    assert again is copy and not again.training  # the same copy, refreshed: weights and modes
    assert torch.allclose(again(x), cnn(x), atol=1e-5)
    mlp = build_model("mlp", in_shape=(6,), num_classes=2)
    assert mirror(mlp, torch.rand(3, 6)) is mlp  # nothing to convolve: the model itself


def test_attacks_run_in_channels_last_and_restore_the_layout(monkeypatch):
    from squiggles.attacks import pgd
    from squiggles.models import build_model

    torch.manual_seed(0)
    cnn = build_model("small-cnn", in_shape=(1, 8, 8), num_classes=10).eval()
    conv = next(p for p in cnn.parameters() if p.dim() == 4 and p.shape[1] > 1)
    seen = []
    cnn.register_forward_pre_hook(lambda m, args: seen.append(conv.is_contiguous()))
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    res = pgd(cnn, x, y, Linf(0.1), steps=3)
    assert seen and not any(seen)  # every pass, the final verification included, in channels-last
    assert conv.is_contiguous()
    seen.clear()
    from squiggles.runtime import keep_layout

    with keep_layout():
        kept = pgd(cnn, x, y, Linf(0.1), steps=3)
    assert seen and all(seen)
    assert torch.allclose(kept.x_adv, res.x_adv, atol=1e-4)


def test_evaluate_leaves_the_model_layout_as_it_found_it(digits_model):
    import squiggles

    model = squiggles.load_model(digits_model)
    data = squiggles.load_dataset("digits", "test").subset(16)
    res = squiggles.evaluate(model, data, Linf(0.1), "apgd-ce", progress=False)
    assert all(p.is_contiguous() for p in model.parameters())
    assert res.disagreements == [0]  # the final verification agrees with the attacks, in the same layout
