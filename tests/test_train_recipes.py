"""Each architecture's recipe fills what the user left out; the end-of-run verdict of adversarial runs."""

from __future__ import annotations

import json

import pytest

from squiggles.train.recipes import GENERIC, fill, recipe_for
from squiggles.train.verdict import verdict
from tests.conftest import run_cli


def test_recipes_fill_only_what_was_left_out():
    values, filled = fill("small-cnn", "standard", {"epochs": 3, "batch_size": None, "lr": None, "warmup": None})
    assert values == {"epochs": 3, "batch_size": 16, "lr": 5e-3, "warmup": None}
    assert filled == ["batch_size", "lr"]
    # Wong et al.'s MNIST recipe for fgsm-rs on any model; the generic defaults for a user's own model.
    assert recipe_for("mlp", "fgsm-rs") == {"epochs": 10, "batch_size": 100, "lr": 5e-3, "warmup": 0.3}
    assert recipe_for("pkg.mod:make", "standard") == GENERIC
    assert recipe_for("madry-cnn", "pgd")["warmup"] == 0.3


def test_cli_records_the_recipe_it_used(tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", "--model", "small-cnn", "--dataset", "digits", "--out", str(out), "--eval-n", "50")
    assert res.returncode == 0, res.stderr
    assert "recipe for small-cnn (standard): epochs 1, batch size 16, lr 0.005" in res.stderr
    recipe = json.loads((out / "card.json").read_text())["recipe"]
    assert (recipe["lr"], recipe["batch_size"], recipe["epochs"]) == (5e-3, 16, 1)
    assert recipe["from_recipe"] == ["epochs", "batch_size", "lr"]


ROBUST_EVAL = {"norm": "linf", "eps": 0.3, "points": 1000}


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"clean_accuracy": 0.8, "robust_accuracy": 0.05, "robust_eval": {**ROBUST_EVAL, "clean_accuracy": 0.8}},
         ["did not become robust: 5.0% robust accuracy at linf 0.3 on 1000 test points against 80.0% clean"]),
        ({"clean_accuracy": 0.98, "robust_accuracy": 0.56, "robust_eval": {**ROBUST_EVAL, "clean_accuracy": 0.98}},
         []),
        ({"clean_accuracy": 0.9, "guard": {"best": 0.7, "checks": [{"robust": 0.7}, {"robust": 0.5}]}},
         ["ended far below its best: the guard measured 50.0% robust after the last epoch against 70.0%"]),
        ({"clean_accuracy": 0.9, "guard": {"best": 0.1, "checks": [{"robust": 0.1}]}},
         ["did not become robust: 10.0% robust accuracy by the guard on training points"]),
    ],
)
def test_verdict_says_when_an_adversarial_run_failed(metrics, expected):
    warnings = verdict(metrics, "fgsm-rs")
    assert len(warnings) == len(expected)
    for warning, text in zip(warnings, expected, strict=True):
        assert text in warning and "try: train with --method pgd" in warning


def test_standard_runs_get_no_verdict():
    assert verdict({"clean_accuracy": 0.1}, "standard") == []


def test_a_run_that_never_became_robust_says_so_in_the_log_and_the_card(tmp_path):
    out = tmp_path / "weak"
    res = run_cli("train", "--dataset", "digits", "--method", "fgsm-rs", "--eps", "0.3", "--epochs", "6", "--lr",
                  "0.01", "--batch-size", "32", "--final-eval-n", "60", "--guard-n", "32", "--quiet", "--out", str(out))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "card.json").read_text())["metrics"]
    assert metrics["robust_accuracy"] < 0.25 * metrics["robust_eval"]["clean_accuracy"]
    assert any("did not become robust" in w for w in metrics["warnings"]), metrics["warnings"]
    assert "warning: the run did not become robust" in res.stderr  # even with --quiet
