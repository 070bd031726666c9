"""fgsm-linear (Goodfellow et al. 2014): the FGSM maths, the linearity checks, the tables, one run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from squiggles.attacks import fgsm
from squiggles.errors import SquigglesError
from squiggles.experiments import make_config, run_experiment
from squiggles.experiments.fgsm_linear import Config, published
from squiggles.experiments.fgsm_linear_analysis import (
    confidences,
    error_rate,
    fgsm_step,
    fgsm_sweep,
    is_softmax_regression,
    linearity_row,
    loss_grad,
    margin_rows,
    sweep_rows,
)
from squiggles.models import build_model
from squiggles.threat import Linf
from tests.conftest import run_cli

CPU = torch.device("cpu")


def _linear(seed: int = 0, classes: int = 4) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model("linear", in_shape=(1, 4, 4), num_classes=classes).eval()


def _data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_fgsm_step_clips_only_when_given_bounds():
    x = torch.tensor([[0.0, 0.5, 0.9]])
    sign = torch.tensor([[-1.0, 1.0, 1.0]])
    assert torch.allclose(fgsm_step(x, sign, 0.25, (0.0, 1.0)), torch.tensor([[0.0, 0.75, 1.0]]))
    assert torch.allclose(fgsm_step(x, sign, 0.25, None), torch.tensor([[-0.25, 0.75, 1.15]]))


def test_error_rate_and_the_two_confidences():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]))
    labels = torch.tensor([0, 0, 0])
    assert error_rate(logits, labels) == pytest.approx(2 / 3)
    everything, wrong = confidences(logits, labels)
    assert everything == pytest.approx((0.7 + 0.6 + 0.6) / 3)
    assert wrong == pytest.approx(0.6)  # the wrong class's probability, on the two misclassified rows
    assert confidences(logits[:1], labels[:1])[1] is None  # nothing misclassified


def test_softmax_regression_is_recognised_by_structure():
    assert is_softmax_regression(_linear())
    assert is_softmax_regression(build_model("linear", in_shape=(1, 4, 4), num_classes=3, mean=0.5, std=0.2))
    assert not is_softmax_regression(build_model("mlp", in_shape=(1, 4, 4), num_classes=3))
    assert not is_softmax_regression(build_model("small-cnn", in_shape=(1, 8, 8), num_classes=3))


def test_sweep_matches_the_library_attack():
    net, (x, y) = _linear(), _data()
    sweep = fgsm_sweep(net, x, y, [0.0, 0.1, 0.3], (0.0, 1.0), unclipped_eps=0.1, device=CPU, batch_size=16)
    assert sweep.adv.shape == (3, 64, 4) and torch.equal(sweep.at(0.0), sweep.clean)
    sign = loss_grad(net, x, y)[1].sign()
    for eps in (0.1, 0.3):
        lib = fgsm(net, x, y, Linf(eps, (0.0, 1.0)))
        assert torch.allclose(lib.x_adv, fgsm_step(x, sign, eps, (0.0, 1.0)))
        assert torch.equal(lib.pred, sweep.at(eps).argmax(1))
    assert torch.allclose(sweep.unclipped, net(x + 0.1 * sign).detach(), atol=1e-6)


def test_a_linear_model_moves_its_logits_exactly_linearly_and_first_order_is_exact_for_logits():
    net, (x, y) = _linear(), _data()
    wide = (-10.0, 10.0)  # no clipping, so delta = eps * sign exactly
    sweep = fgsm_sweep(net, x, y, [0.01, 0.1, 0.3], wide, unclipped_eps=0.3, device=CPU)
    rows = [
        linearity_row(e, sweep.clean, sweep.adv[k], y, sweep.first_order[k], sweep.grad_l1)
        for k, e in enumerate(sweep.eps)
    ]
    per_eps = [r["logit_change_per_eps"] for r in rows]
    assert per_eps[0] == pytest.approx(per_eps[1], rel=1e-4) == pytest.approx(per_eps[2], rel=1e-4)
    # Unclipped, grad . delta = eps * ||grad||_1 exactly; the loss change matches it at a small eps.
    assert rows[1]["first_order"] == pytest.approx(rows[1]["eps_grad_l1"], rel=1e-5)
    assert rows[0]["measured_over_first_order"] == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(sweep.unclipped, sweep.at(0.3))


def test_margin_drop_is_proportional_to_eps_and_bounded_by_the_weight_difference():
    net, (x, y) = _linear(), _data()
    rows = margin_rows(net, x, y, [0.1, 0.2], CPU, batch_size=20)
    w = net[-1].weight.detach()
    logits = net(x).detach()
    runner_up = logits.scatter(1, y[:, None], -float("inf")).argmax(1)
    l1 = (w[y] - w[runner_up]).abs().sum(1).double().mean().item()
    assert rows[0]["eps_w_diff_l1"] == pytest.approx(0.1 * l1, rel=1e-5)
    assert rows[1]["margin_drop"] == pytest.approx(2 * rows[0]["margin_drop"], rel=1e-4)
    assert 0 < rows[0]["ratio"] <= 1 + 1e-6 and rows[0]["ratio"] == pytest.approx(rows[1]["ratio"], rel=1e-4)


def test_config_checks_and_grid():
    assert Config().grid() == [0.0, 0.001, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert make_config("fgsm-linear", overrides={"epochs": 3}).epochs == [3]  # one value for every arch
    for overrides, message in [
        ({"archs": ["resnet"]}, "unknown arch"),
        ({"epochs": [1, 2]}, "one per arch"),
        ({"small_eps": 0.5}, "small_eps"),
        ({"eps_sweep": [-0.1]}, "eps_sweep"),
        ({"archs": [], "models": []}, "at least one"),
    ]:
        with pytest.raises(SquigglesError, match=message):
            make_config("fgsm-linear", overrides=overrides)


def test_published_rows_use_the_softmax_regression_and_say_when_it_is_missing():
    logits = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    from squiggles.experiments.fgsm_linear_analysis import Sweep

    sweep = Sweep([0.25], torch.tensor([0, 0]), logits, logits[None], torch.zeros(1, 2), torch.zeros(2), 0.25, logits)
    rows = sweep_rows("linear", sweep)
    table = published(rows, "linear")
    assert table[0]["published"] == 99.9 and table[0]["ours"] == 100.0
    assert table[1]["ours"] == pytest.approx(
        100 * (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(1.0))).item() / 2, abs=0.01
    )
    assert table[2]["ours"] is None and "no maxout" in table[2]["note"]
    assert published(rows, None)[0]["ours"] is None and "no softmax-regression" in published(rows, None)[0]["note"]


def test_user_models_replace_the_trained_ones(tmp_path, digits_model):
    results = run_experiment(
        "fgsm-linear",
        tmp_path / "mine",
        quick=True,
        dataset="digits",
        progress=False,
        log=lambda m: None,
        overrides={"models": [str(digits_model)], "examples": 2},
    )
    assert [m["model"] for m in results["models"]] == [str(digits_model)]
    assert results["published"][0]["ours"] is None  # a CNN is no softmax regression
    assert not (tmp_path / "mine" / "models").exists()  # nothing was trained
    assert (tmp_path / "mine" / "figures" / "examples.png").is_file()


def test_quick_run_through_the_cli(tmp_path):
    out = tmp_path / "x"
    done = run_cli(
        "experiment",
        "fgsm-linear",
        "--quick",
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--quiet",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["name"] == "fgsm-linear" and data["quick"] and data["test_points"] == 360
    for key in (
        "summary",
        "description",
        "notes",
        "published",
        "models",
        "sweep",
        "linearity",
        "softmax_regression_margin",
        "figures",
    ):
        assert data[key], key
    assert (out / "report.html").is_file()
    assert {f["path"] for f in data["figures"]} == {
        "figures/fgsm_sweep.png",
        "figures/linearity.png",
        "figures/examples.png",
    }
    models = {m["model"]: m for m in data["models"]}
    assert list(models) == ["linear", "mlp", "small-cnn"] and models["linear"]["softmax_regression"]
    for m in models.values():
        assert m["clean_accuracy"] > 0.7 and m["library_fgsm_agreement"] >= 0.99
        assert m["error_rate"] > 1 - m["clean_accuracy"]  # FGSM at 0.25 adds errors
    linear_025 = next(r for r in data["sweep"] if r["model"] == "linear" and r["eps"] == 0.25)
    assert data["published"][0]["ours"] == pytest.approx(100 * linear_025["error_rate"], abs=0.01)
    errors = [r["error_rate"] for r in data["sweep"] if r["model"] == "linear"]
    assert errors == sorted(errors)  # FGSM on a linear model only gets stronger with eps
