"""Detection and calibration metrics by hand, temperature scaling, the detectors and the out-of-distribution sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from squiggles.errors import SquigglesError
from squiggles.monitor.calibration import Scaled, fit_temperature
from squiggles.monitor.metrics import calibration, detection, fpr_at_tpr
from squiggles.monitor.ood import METHODS, fit_detector, make_detector
from squiggles.monitor.oodsets import gaussian, letters, load_ood, severe_corruptions, uniform


def test_auroc_of_separable_and_identical_scores():
    m = detection(torch.tensor([2.0, 3.0, 4.0]), torch.tensor([-1.0, 0.0, 1.0]))
    assert m["auroc"] == 1.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0 and m["fpr_at_95_tpr"] == 0.0
    same = detection(torch.ones(10), torch.ones(10))
    assert same["auroc"] == 0.5 and same["fpr_at_95_tpr"] == 1.0


def test_detection_by_hand():
    # In: 4, 3, 2, 1; out: 3.5, 0. Pairs (in > out) + ties / 2: 4 beats both, 3 and 2 and 1 beat 0 -> 5 of 8.
    m = detection(torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([3.5, 0.0]))
    assert m["auroc"] == pytest.approx(5 / 8)
    # 95% of 4 inliers -> all four kept: threshold 1, and one of two outliers (3.5) is >= 1 -> FPR 0.5.
    assert m["fpr_at_95_tpr"] == 0.5
    assert fpr_at_tpr(np.array([4.0, 3.0, 2.0, 1.0]), np.array([3.5, 0.0]), tpr=0.5) == 0.5


def test_ece_on_confidences_with_a_known_answer():
    # 20 points at 90% confidence of which 14 right (gap 0.2) and 20 at 60% of which 12 right (gap 0): ECE 0.1.
    def logits_at(p: float) -> list[float]:
        return [float(np.log(p)), float(np.log(1 - p))]

    logits = torch.tensor([logits_at(0.9)] * 20 + [logits_at(0.6)] * 20)
    y = torch.tensor([0] * 14 + [1] * 6 + [0] * 12 + [1] * 8)
    m = calibration(logits, y, bins=4, check=False)
    assert m["ece"] == pytest.approx(0.1) and m["mce"] == pytest.approx(0.2)
    assert m["accuracy"] == pytest.approx(26 / 40) and m["confidence"] == pytest.approx(0.75)
    assert m["reliability"]["count"] == [0, 0, 20, 20]  # (0.5, 0.75] holds 0.6, (0.75, 1] holds 0.9
    brier = (14 * (0.01 + 0.01) + 6 * (0.81 + 0.81) + 12 * (0.16 + 0.16) + 8 * (0.36 + 0.36)) / 40
    assert m["brier"] == pytest.approx(brier)
    assert m["nll"] == pytest.approx(-(14 * np.log(0.9) + 6 * np.log(0.1) + 12 * np.log(0.6) + 8 * np.log(0.4)) / 40)


def test_bins_are_closed_on_the_right():
    # Confidence exactly 0.5 with two bins falls in (0, 0.5], not (0.5, 1].
    m = calibration(torch.zeros(1, 2), torch.tensor([0]), bins=2, check=False)
    assert m["reliability"]["count"] == [1, 0]


def test_too_few_points_for_the_bins():
    with pytest.raises(SquigglesError, match="too few for 15 calibration bins"):
        calibration(torch.randn(40, 3), torch.zeros(40, dtype=torch.long), bins=15)


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_predictions():
    g = torch.Generator().manual_seed(1)
    z = 4 * torch.randn(6000, 10, generator=g)
    y = torch.multinomial((z / 3.0).softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature(z, y)
    assert t == pytest.approx(3.0, rel=0.05)
    model = nn.Linear(10, 10)
    x = torch.randn(50, 10, generator=g)
    assert torch.equal(Scaled(model, t)(x).argmax(1), model(x).argmax(1))
    assert calibration(z / t, y)["ece"] < calibration(z, y)["ece"]


def test_temperature_needs_two_classes():
    with pytest.raises(SquigglesError, match="holds only class 3"):
        fit_temperature(torch.randn(20, 5), torch.full((20,), 3))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(),
                         nn.Linear(16, 3)).eval()


def _blobs(n: int, shift: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.2 * torch.rand(n, 1, 8, 8, generator=g)
    for c in range(3):
        x[y == c, 0, 2 * c: 2 * c + 2, :] += 0.7
    return (x + shift).clamp(0, 1), y


@pytest.mark.parametrize("method", METHODS)
def test_every_detector_scores_each_input(method):
    model = _model()
    x, y = _blobs(90)
    det = fit_detector(model, (x, y), method, k=5)
    s = det.score(x[:7])
    assert s.shape == (7,) and bool(torch.isfinite(s).all())
    assert torch.equal(s, det.score(x[:7]))  # deterministic
    assert torch.allclose(det.score(x[:7]), torch.cat([det.score(x[:3]), det.score(x[3:7])]), atol=1e-5)


def test_learned_detectors_tell_planted_outliers_apart():
    model = _model()
    x, y = _blobs(300)
    far = torch.ones(60, 1, 8, 8)  # a saturated image, far from every blob
    for method in ("mahalanobis", "knn", "layer-stats", "ensemble"):
        det = fit_detector(model, (x[:240], y[:240]), method, k=5)
        assert detection(det.score(x[240:]), det.score(far))["auroc"] > 0.95, method


def test_detectors_learn_only_from_the_data_given_to_fit():
    model = _model()
    x, y = _blobs(120)
    a = fit_detector(model, (x, y), "mahalanobis")
    b = make_detector(model, "mahalanobis").fit(x, y)
    probe = _blobs(10, seed=5)[0]
    assert torch.equal(a.score(probe), b.score(probe))
    before = a.score(probe)
    a.score(torch.rand(50, 1, 8, 8))  # scoring other data never refits
    assert torch.equal(a.score(probe), before)
    assert a.fitted_on == {"n": 120}


def test_fitting_on_a_test_split_is_refused():
    from squiggles.data import Dataset

    x, y = _blobs(30)
    with pytest.raises(SquigglesError, match="fitted on training data"):
        fit_detector(_model(), Dataset("blobs", "test", x, y, 3), "mahalanobis")


def test_unfitted_and_unsuitable_models_are_refused():
    with pytest.raises(SquigglesError, match="not fitted"):
        make_detector(_model(), "knn").score(torch.rand(2, 1, 8, 8))
    with pytest.raises(SquigglesError, match="no nn.Linear"):
        make_detector(nn.Sequential(nn.Conv2d(1, 3, 8), nn.Flatten()), "mahalanobis")
    with pytest.raises(SquigglesError, match="unknown detector"):
        make_detector(_model(), "entropy")


def test_out_of_distribution_sets():
    assert gaussian(5, (1, 8, 8), 0).shape == (5, 1, 8, 8) and float(gaussian(500, (1, 8, 8)).min()) < 0
    u = uniform(5, (1, 8, 8), 0)
    assert float(u.min()) >= 0 and float(u.max()) <= 1 and torch.equal(u, uniform(5, (1, 8, 8), 0))
    a, b = letters(4, (1, 28, 28), 7), letters(4, (1, 28, 28), 7)
    assert torch.equal(a, b) and float(a.amax((1, 2, 3)).min()) > 0.5
    small = letters(3, (1, 8, 8), 0)
    assert small.shape == (3, 1, 8, 8) and float(small[:, :, 0, :].sum()) == 0  # a margin, like MNIST's
    x = torch.rand(30, 1, 28, 28).mul(255).round().div(255)
    assert severe_corruptions(x).shape == x.shape


def test_an_ood_set_of_another_shape_names_the_fix(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros((4, 1, 28, 28), dtype=np.float32))
    with pytest.raises(SquigglesError, match=r"shape \(1, 28, 28\) but the model takes \(1, 8, 8\); resize"):
        load_ood(str(path), torch.zeros(2, 1, 8, 8), n=4)
    with pytest.raises(SquigglesError, match="unknown out-of-distribution set 'cifar'"):
        load_ood("cifar", torch.zeros(2, 1, 8, 8), n=4)
