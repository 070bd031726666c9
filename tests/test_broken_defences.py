"""Four small defences that hide gradients instead of resisting attacks. The sanity checks must flag each,
and with the remedies squiggles offers (by hand, or applied by `evaluate` itself) the reported robust accuracy
must not be inflated."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import squiggles
from squiggles.evaluation import Stage
from squiggles.evaluation.remedies import (
    expectation_over_transformation,
    logits_from_probabilities,
    straight_through,
)
from squiggles.threat import Linf

EPS = 0.2
WHITE_BOX = (Stage("apgd-ce", {"steps": 20}),)
CASCADE = (Stage("apgd-ce", {"steps": 20}), Stage("apgd-t", {"steps": 20, "n_target_classes": 3}),
           Stage("square", {"queries": 300}))


class Quantize(nn.Module):
    def forward(self, x):
        return (x * 4).round() / 4


class _Block(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class GradientBlocker(nn.Module):
    def forward(self, x):
        return _Block.apply(x)


class Scale(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x * self.k


class RandomNoise(nn.Module):
    def forward(self, x):
        return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)


@pytest.fixture(scope="module")
def base(digits_model):
    model = squiggles.load_model(digits_model)
    test = squiggles.load_dataset("digits", "test").subset(100)
    res = squiggles.evaluate(model, test, Linf(EPS), CASCADE, batch_size=100, progress=False, checks=False)
    return model, test, res.robust_accuracy


def _evaluate(model, test, stages, checks=True, remedies=False):
    return squiggles.evaluate(model, test, Linf(EPS), stages, batch_size=100, progress=False, checks=checks, seed=1,
                              remedies=remedies)


def _defences(net):
    return {
        "quantisation": (nn.Sequential(Quantize(), net), nn.Sequential(straight_through(Quantize()), net),
                         "vanishing-gradients"),
        "gradient-blocker": (nn.Sequential(GradientBlocker(), net),
                             nn.Sequential(straight_through(GradientBlocker()), net), "vanishing-gradients"),
        "saturated-softmax": (nn.Sequential(net, Scale(1000.0), nn.Softmax(1)),
                              logits_from_probabilities(nn.Sequential(net, Scale(1000.0), nn.Softmax(1))),
                              "probability-outputs"),
        "random-noise": (nn.Sequential(RandomNoise(), net),
                         expectation_over_transformation(nn.Sequential(RandomNoise(), net), samples=32),
                         "randomized-model"),
    }


@pytest.mark.parametrize("name", ["quantisation", "gradient-blocker", "saturated-softmax", "random-noise"])
def test_checks_flag_the_defence_and_remedies_keep_the_number_honest(base, name):
    net, test, base_robust = base
    defended, remedied, code = _defences(net)[name]
    torch.manual_seed(0)  # the random defence draws its noise from the global RNG, as such layers do
    if name == "saturated-softmax":  # every attack also warns on entry that these are not logits
        with pytest.warns(UserWarning, match="look like probabilities"):
            naive = _evaluate(defended, test, WHITE_BOX)
    else:
        naive = _evaluate(defended, test, WHITE_BOX)
    assert code in {f["code"] for f in naive.flags}, naive.flags
    honest = _evaluate(remedied, test, CASCADE, checks=False)
    # The remedied evaluation is no weaker than the naive one, and lands near the undefended model's
    # robust accuracy instead of the inflated figure.
    assert honest.robust_accuracy <= naive.robust_accuracy
    assert honest.robust_accuracy <= base_robust + 0.15, (name, naive.robust_accuracy, honest.robust_accuracy)


# What `evaluate` does by itself for each defence: the remedy it applies and how close to the undefended model's
# robust accuracy its headline must land (the bar for probability outputs is 5 points).
AUTOMATIC = {
    "quantisation": ("bpda", 0.15),
    "gradient-blocker": ("bpda", 0.15),
    "saturated-softmax": ("logits", 0.05),
    "random-noise": ("eot", 0.15),
}


@pytest.mark.parametrize("name", list(AUTOMATIC))
def test_evaluate_applies_the_remedy_itself_and_reports_the_lower_figure(base, name):
    net, test, base_robust = base
    defended, _, code = _defences(net)[name]
    remedy, slack = AUTOMATIC[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the probability-outputs warning on entry to every attack
        naive = _evaluate(defended, test, CASCADE, remedies=False)
        torch.manual_seed(0)
        res = _evaluate(defended, test, CASCADE, remedies=True)
    assert remedy in [r["remedy"] for r in res.remedies], res.remedies
    applied = next(r for r in res.remedies if r["remedy"] == remedy)
    assert applied["reason"] == [code] or code in applied["reason"]
    # The headline is the lower figure, the one before the remedies is kept, and they are in the JSON.
    assert res.robust_accuracy <= res.unremedied_robust_accuracy
    assert res.robust_accuracy <= base_robust + slack, (name, naive.robust_accuracy, res.robust_accuracy)
    out = res.to_json()
    assert out["robust_accuracy"] == res.robust_accuracy and out["remedies"][0]["reason"]
    assert out["unremedied_robust_accuracy"] == res.unremedied_robust_accuracy
    assert "REMEDY" in res.table()
    # The breakdown's last row is the headline: the points a remedy broke are counted by its own stages (a
    # random model also loses points to the final re-check, which the breakdown does not count).
    if name != "random-noise":
        assert res.breakdown(0)[-1]["accuracy"] == pytest.approx(res.robust_accuracy)


def test_no_remedies_keeps_the_cascade_figure(base):
    net, test, _ = base
    defended = _defences(net)["saturated-softmax"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _evaluate(defended, test, WHITE_BOX, remedies=False)
    assert res.remedies == [] and res.unremedied is None
    assert "probability-outputs" in {f["code"] for f in res.flags}


def test_remedied_softmax_model_keeps_every_prediction(base):
    from squiggles.evaluation.remedied import logits_model

    net, test, _ = base
    defended = _defences(net)["saturated-softmax"][0]
    with torch.no_grad():
        logits = logits_model(defended)(test.x)
        assert torch.equal(logits.argmax(1), defended(test.x).argmax(1))
        assert not torch.allclose(logits.sum(1), torch.ones(len(logits)))  # logits, not probabilities
