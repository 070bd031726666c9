"""``squiggles attack`` end to end in a subprocess, on a small digits model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from squiggles.threat import Linf
from tests.conftest import run_cli


def test_attack_writes_examples_summary_and_picture(digits_model, tmp_path):
    out = tmp_path / "adv"
    res = run_cli(
        "attack",
        "--model",
        str(digits_model),
        "--dataset",
        "digits",
        "--n",
        "60",
        "--attack",
        "pgd",
        "--norm",
        "linf",
        "--eps",
        "0.2",
        "--steps",
        "10",
        "--batch-size",
        "25",
        "--out",
        str(out),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "success_rate",
        "robust_accuracy",
        "median_norm",
        "mean_norm",
        "forwards",
        "backwards",
        "wall_time_s",
        "model_card",
        "versions",
    ):
        assert key in summary
    assert summary["n"] == 60 and summary["config"]["steps"] == 10
    assert summary["warnings"] == [] and "not an evaluation" not in res.stderr  # it broke most points
    assert summary["clean_accuracy"] > 0.8
    assert summary["robust_accuracy"] < summary["clean_accuracy"]
    tensors = load_file(str(out / "adversarial.safetensors"))
    assert tensors["x_adv"].shape == (60, 1, 8, 8)
    from squiggles.data import load_dataset

    clean = load_dataset("digits", "test").x[:60]
    assert (Linf(0.2).norm(tensors["x_adv"] - clean) <= 0.2 + 1e-5).all()
    assert tensors["success"].float().mean().item() == pytest.approx(summary["success_rate"])
    assert (out / "examples.png").read_bytes()[:4] == b"\x89PNG"

    again = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--eps", "0.1", "--out", str(out))
    assert again.returncode == 2 and "already holds" in again.stderr


def test_targeted_attack_from_the_cli(digits_model, tmp_path):
    res = run_cli(
        "attack",
        "--model",
        str(digits_model),
        "--dataset",
        "digits",
        "--n",
        "20",
        "--attack",
        "pgd",
        "--norm",
        "l2",
        "--eps",
        "3",
        "--targeted",
        "next",
        "--out",
        str(tmp_path / "t"),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    tensors = load_file(str(tmp_path / "t" / "adversarial.safetensors"))
    assert torch.equal(tensors["targets"], (tensors["y"] + 1) % 10)
    assert torch.equal(tensors["success"], tensors["pred"] == tensors["targets"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--attack", "nope", "--eps", "0.1"], "unknown attack 'nope'; choose one of: fgsm"),
        (["--attack", "pgd"], "--eps is required"),
        (["--attack", "pgd", "--eps", "-0.1"], "--eps: must be >= 0"),
        (["--attack", "fgsm", "--eps", "0.1", "--steps", "5"], "attack 'fgsm' takes no --steps"),
    ],
)
def test_attack_bad_arguments(digits_model, tmp_path, extra, message):
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--out", str(tmp_path / "o"), *extra)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_attack_missing_model_folder(tmp_path):
    res = run_cli("attack", "--model", str(tmp_path / "none"), "--eps", "0.1", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "no such folder" in res.stderr


def test_one_gradient_attack_that_fails_says_it_is_not_an_evaluation(digits_model, tmp_path):
    out = tmp_path / "weak"
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--n", "40", "--attack", "pgd",
                  "--eps", "0.01", "--steps", "2", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "one gradient attack is not an evaluation" in res.stderr
    assert f"squiggles evaluate --model {digits_model} --dataset digits --norm linf --eps 0.01" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["robust_accuracy"] > 0.5 and "squiggles evaluate" in summary["warnings"][0]
