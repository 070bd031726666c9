"""The data detectors on synthetic features, and Neural Cleanse's anomaly index and optimisation on a planted model."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from squiggles.backdoor.cleanse import CleanseConfig, anomaly_index, flagged_classes, neural_cleanse
from squiggles.backdoor.detect import (
    _two_means_threshold,
    activation_clustering,
    precision_recall,
    spectral_signatures,
)

DETECTORS = [spectral_signatures, activation_clustering]


def _planted(n: int = 600, dims: int = 20, share: float = 0.15, shift: float = 6.0, seed: int = 0):
    """Three Gaussian classes; a ``share`` of class 1 moved ``shift`` along one direction (the 'trigger')."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    feats = torch.randn(n, dims, generator=g) + 3 * nn.functional.one_hot(labels, dims).float()
    ones = (labels == 1).nonzero().flatten()
    truth = ones[: int(share * len(ones))]
    feats[truth] += shift * torch.ones(dims) / dims**0.5
    clean_labels = torch.arange(300) % 3
    clean = torch.randn(300, dims, generator=g) + 3 * nn.functional.one_hot(clean_labels, dims).float()
    return feats, labels, truth, (clean, clean_labels)


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("with_clean", [False, True])
def test_an_obvious_planted_cluster_is_found_exactly(detector, with_clean):
    feats, labels, truth, clean = _planted()
    det = detector(feats, labels, trusted=clean if with_clean else None)
    assert det.flagged() == [1]
    score = precision_recall(det.suspects, truth)
    assert score["precision"] == 1.0 and score["recall"] == 1.0 and score["poisoned"] == 30
    assert det.summary(truth)["suspects"] == 30
    # the suspects are the most suspicious points of their class
    ones = (labels == 1).nonzero().flatten()
    top = ones[det.scores[ones].argsort(descending=True)[:30]]
    assert set(top.tolist()) == set(truth.tolist())


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_single_gaussian_gives_no_suspect(detector, seed):
    g = torch.Generator().manual_seed(seed)
    feats, labels = torch.randn(900, 30, generator=g), torch.arange(900) % 3
    clean = (torch.randn(300, 30, generator=g), torch.arange(300) % 3)
    for trusted in (None, clean):
        det = detector(feats, labels, trusted=trusted)
        assert det.flagged() == [] and int(det.suspects.sum()) == 0
        assert all(c["separation"] < 4 for c in det.classes)


@pytest.mark.parametrize("detector", DETECTORS)
def test_clean_data_decides_which_group_is_poison_when_the_poison_is_the_larger_one(detector):
    # 60% of class 1 poisoned (as the target class of a 10% all-to-one attack can be): "the smaller cluster" picks
    # the clean points; held-out clean points of class 1 land only in the clean group and say which is which.
    feats, labels, truth, clean = _planted(share=0.6, shift=10.0)
    wrong = precision_recall(detector(feats, labels).suspects, truth)
    assert wrong["true_positives"] == 0
    right = precision_recall(detector(feats, labels, trusted=clean).suspects, truth)
    assert right["precision"] == 1.0 and right["recall"] == 1.0


def test_a_clean_class_split_by_style_is_not_flagged_when_clean_data_shares_the_styles():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 2
    feats = torch.randn(600, 10, generator=g)
    feats[::4] += 8  # two "styles" in both classes, in training and held-out data alike
    clean = torch.randn(200, 10, generator=g)
    clean[::4] += 8
    det = spectral_signatures(feats, labels, trusted=(clean, torch.arange(200) % 2))
    assert det.flagged() == [] and all(c["rule"] == "clean data" for c in det.classes)
    assert spectral_signatures(feats, labels).flagged() != []  # without clean data the style split looks like poison


def test_precision_recall_by_hand():
    suspects = torch.tensor([True, True, False, True, False, False])
    out = precision_recall(suspects, torch.tensor([0, 2, 3]))
    assert out["true_positives"] == 2 and out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(
        2 / 3)
    assert precision_recall(torch.zeros(6, dtype=torch.bool), torch.tensor([1]))["precision"] is None


def test_two_means_threshold_is_exact():
    assert _two_means_threshold(torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1], dtype=torch.float64)) == pytest.approx(2.6)


def test_anomaly_index_matches_a_hand_computation():
    norms = [10.0, 12.0, 11.0, 9.0, 2.0, 10.5, 11.5, 12.5, 9.5, 10.0]
    index, median, mad = anomaly_index(norms)
    assert median == 10.25  # the mean of the two middle norms, 10.0 and 10.5
    deviations = sorted(abs(n - 10.25) for n in norms)  # 0.25 0.25 0.25 0.75 0.75 1.25 1.25 1.75 2.25 8.25
    assert mad == pytest.approx(1.4826 * (0.75 + 1.25) / 2)
    assert index[4] == pytest.approx(8.25 / (1.4826 * 1.0))
    assert index[1] == pytest.approx(1.75 / 1.4826)
    assert statistics.median(deviations) == 1.0
    assert flagged_classes(norms, index, median) == [4]
    # a large outlier is anomalous too, but a backdoor makes a small trigger: only the small side is flagged
    assert flagged_classes([10, 10.5, 9.5, 10, 40], anomaly_index([10, 10.5, 9.5, 10, 40])[0], 10.0) == []


class _Planted(nn.Module):
    """Class c is the brightness of row c of a 6 x 6 input, except that a bright pixel (1, 1) alone sends anything
    to class 2: a hand-made backdoor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(36, 6)
        with torch.no_grad():
            self.linear.weight.zero_()
            for c in range(6):
                self.linear.weight[c, 6 * c:6 * c + 6] = 1.0
            self.linear.weight[:, 7] = 0.0
            self.linear.weight[2, 7] = 40.0
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_neural_cleanse_finds_the_planted_class_and_leaves_the_model_alone():
    model = _Planted().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    y = torch.arange(60) % 6
    x = torch.rand(60, 1, 6, 6, generator=g) * 0.2
    x[torch.arange(60), 0, y] = 0.9  # each input's own row is bright
    x[:, :, 1, 1] = 0  # and the trigger pixel dark
    assert torch.equal(model(x).argmax(1), y)
    cfg = CleanseConfig(steps=400, batch_size=16, round_steps=5)
    res = neural_cleanse(model, x, y, 6, config=cfg, seed=0)
    assert res.flagged == [2] and min(range(6), key=lambda t: res.norms[t]) == 2
    assert res.norms[2] < 0.5 < min(n for t, n in enumerate(res.norms) if t != 2)
    assert res.anomaly[2] > 2 and res.reached[2] and res.success[2] >= 0.99
    assert float(res.masks[2, 0, 1, 1]) == float(res.masks[2].max())  # the mask sits on the planted pixel
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    again = neural_cleanse(model, x, y, 6, config=cfg, seed=0)
    assert again.norms == res.norms  # seeded: the same run twice gives the same triggers
