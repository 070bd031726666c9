"""The transfer experiment: the rate maths, the settings, and quick runs on scikit-learn's digits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from squiggles.errors import SquigglesError
from squiggles.experiments import make_config, run_experiment
from squiggles.experiments.transfer import ref_name, unique
from squiggles.experiments.transfer_analysis import (
    accuracy_rows,
    block_mean,
    block_rows,
    matrix_records,
    off_diagonal_means,
    transfer_rates,
)
from tests.conftest import run_cli

T, F = True, False
NAN = math.nan


def test_rates_count_only_the_points_both_models_classify_correctly():
    correct = torch.tensor([[T, T, T, F], [T, F, T, T]])
    adv_correct = torch.tensor(
        [
            [[F, F, T, F], [F, T, T, F]],  # crafted on model 0: seen by 0, then by 1
            [[T, T, F, F], [F, F, F, F]],  # crafted on model 1
        ]
    )
    rates = transfer_rates(correct, adv_correct)
    # 0 -> 0: points 0-2, fooled on 0 and 1; 0 -> 1: common points 0 and 2, fooled on 0 only (point 3 is
    # misclassified by 1 but model 0 gets it wrong clean, so it does not count); 1 -> 0: common 0, 2, fooled 2.
    expected = torch.tensor([[2 / 3, 1 / 2], [1 / 2, 1.0]])
    assert torch.allclose(rates, expected)
    none_common = transfer_rates(torch.tensor([[T, F], [F, T]]), torch.zeros(2, 2, 2, dtype=torch.bool))
    assert none_common[0, 0] == 1 and none_common[0, 1].isnan() and none_common[1, 0].isnan()


RATES = torch.tensor([[1.0, 0.5, 0.1], [0.3, 1.0, NAN], [0.2, 0.4, 0.9]])


def test_means_leave_out_the_diagonal_and_missing_pairs():
    rows, cols = off_diagonal_means(RATES)
    assert torch.allclose(rows, torch.tensor([0.3, 0.3, 0.3]))
    assert torch.allclose(cols, torch.tensor([0.25, 0.45, 0.1]))
    two, one = torch.tensor([T, T, F]), torch.tensor([F, F, T])
    assert block_mean(RATES, two, two) == pytest.approx(0.4)
    assert block_mean(RATES, two, one) == pytest.approx(0.1)  # 0.1 and a missing pair
    assert block_mean(RATES, one, two) == pytest.approx(0.3)
    assert math.isnan(block_mean(RATES, one, one))  # a lone model has no other model in its group


def test_matrix_records_are_flat_with_row_and_column_means():
    records = matrix_records(RATES, ["a", "b", "c"])
    assert records[0] == {"source": "a", "a": 1.0, "b": 0.5, "c": 0.1, "mean to others": 0.3}
    assert records[1]["c"] is None
    assert records[-1] == {"source": "mean from others", "a": 0.25, "b": 0.45, "c": 0.1, "mean to others": 0.3}


def test_block_rows_split_standard_and_robust():
    rows = block_rows({"pgd": RATES}, torch.tensor([F, F, T]))
    table = {(r["from"], r["to"]): (r["mean_rate"], r["pairs"]) for r in rows}
    assert table == {
        ("standard", "standard"): (0.4, 2),
        ("standard", "robust"): (0.1, 2),
        ("robust", "standard"): (0.3, 2),
        ("robust", "robust"): (None, 0),
    }
    rows = accuracy_rows({"fgsm": torch.tensor([[0.0, 0.25], [0.5, 1.0]])}, ["a", "b"])
    assert rows == [
        {"attack": "fgsm", "source": "a", "a": 0.0, "b": 0.25},
        {"attack": "fgsm", "source": "b", "a": 0.5, "b": 1.0},
    ]


def test_names_of_references():
    assert ref_name("runs/wide") == "wide" and ref_name("mnist-linf-0.3") == "mnist-linf-0.3"
    assert ref_name("tests.user_model:tiny@w.safetensors") == "tiny"
    assert unique(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"archs": ["resnet"]}, "unknown arch(s) resnet"),
        ({"archs": []}, "give at least one standard model"),
        ({"eps": 0}, "eps must be > 0"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"n": 0}, "n must be >= 1"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(SquigglesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config("transfer", quick=True, overrides=overrides)


@pytest.fixture(scope="module")
def robust_digits(tmp_path_factory) -> list[str]:
    """Two small PGD-trained models on digits (about ten seconds), as model folders to pass with --robust.

    Eps 0.2: at 0.3, eight epochs on the 8x8 digits collapse the small CNN to one class."""
    from squiggles.train import TrainConfig, train_model
    from squiggles.train.guard import GuardConfig

    folders = []
    for arch, seed in (("small-cnn", 0), ("mlp", 1)):
        out = tmp_path_factory.mktemp(f"robust-{arch}")
        config = TrainConfig(
            arch=arch,
            dataset="digits",
            method="pgd",
            method_options={"eps": 0.2, "steps": 5},
            epochs=8,
            lr=1e-2,
            batch_size=64,
            seed=seed,
            guard=GuardConfig(enabled=False),
        )
        train_model(config, out, progress=False, log=lambda m: None)
        folders.append(str(out))
    return folders


def test_quick_run_through_the_cli_with_robust_models(tmp_path, robust_digits):
    out = tmp_path / "x"
    res = run_cli(
        "experiment",
        "transfer",
        "--quick",
        "--dataset",
        "digits",
        "--set",
        "eps=0.2",
        "--robust",
        robust_digits[0],
        "--robust",
        robust_digits[1],
        "--quiet",
        "--out",
        str(out),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "results.json").read_text())
    assert (out / "report.html").is_file()
    assert data["kind"] == "experiment" and data["name"] == "transfer" and data["quick"] is True
    assert data["summary"].startswith("At L∞ eps 0.2 on 200 digits test points")
    assert "both s and t classify correctly" in data["description"]
    names = ["linear", "mlp", "small-cnn", "robust-small-cnn0", "robust-mlp0"]
    assert [m["model"] for m in data["models"]] == names
    assert [m["role"] for m in data["models"]] == ["standard"] * 3 + ["robust"] * 2
    for key in ("transfer_pgd", "transfer_fgsm"):
        table = data[key]
        assert [r["source"] for r in table] == [*names, "mean from others"]
        assert set(table[0]) == {"source", *names, "mean to others"}
        assert all(0 <= r[n] <= 1 for r in table for n in names)
    models = {m["model"]: m for m in data["models"]}
    for name in names:
        assert models[name]["clean_accuracy"] > 0.85
    white_box = [models[name]["pgd_white_box"] for name in names]
    assert min(white_box[:3]) > 0.9 and max(white_box[3:]) < 0.7  # the robust models resist white-box PGD too
    blocks = {(b["attack"], b["from"], b["to"]): b["mean_rate"] for b in data["blocks"]}
    # The finding the experiment exists to show: standard models fool each other, robust ones resist.
    assert blocks["pgd", "standard", "standard"] > 0.5
    assert blocks["pgd", "standard", "robust"] < blocks["pgd", "standard", "standard"] - 0.2
    assert data["pgd_standard_to_robust"] == blocks["pgd", "standard", "robust"]
    assert len(data["accuracy_under_attack"]) == 2 * len(names)
    quantities = [row["quantity"] for row in data["published"]]
    assert quantities[-1] == "transfer matrix between standard and robust MNIST models"
    assert [row["published"] for row in data["published"]] == [0.956, 0.932, 0.954, 0.964, 0.9681, None]
    first = "robust-small-cnn0"
    white_box_acc = [r[first] for r in data["accuracy_under_attack"] if r["source"] == first]  # PGD, FGSM
    assert [row["ours"] for row in data["published"][:2]] == white_box_acc[::-1]
    assert data["published"][4]["ours"] is None  # no standard madry-cnn in the quick run
    assert len(data["notes"]) == 2 and "trained with pgd at linf eps 0.2" in data["notes"][0]
    assert [f["path"] for f in data["figures"]] == ["figures/transfer_pgd.png", "figures/transfer_fgsm.png"]
    assert all((out / f["path"]).is_file() for f in data["figures"])


def test_without_robust_models_on_digits_the_zoo_is_left_out_with_a_note(tmp_path):
    results = run_experiment(
        "transfer",
        tmp_path / "y",
        quick=True,
        dataset="digits",
        overrides={"archs": ["linear", "mlp"], "n": 50},
        progress=False,
        log=lambda m: None,
    )
    assert "No robust model in this run" in results["notes"][0]
    assert [m["model"] for m in results["models"]] == ["linear", "mlp"]
    assert results["summary"].endswith("No robust model was in this run.")
    assert all(row["ours"] is None for row in results["published"])


def test_a_robust_model_that_does_not_fit_is_refused_clearly(tmp_path):
    res = run_cli(
        "experiment",
        "transfer",
        "--quick",
        "--dataset",
        "digits",
        "--robust",
        "mnist-linf-0.3",
        "--quiet",
        "--out",
        str(tmp_path / "z"),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "robust model mnist-linf-0.3 cannot take inputs of shape (1, 8, 8)" in res.stderr
    assert not (tmp_path / "z" / "models").exists()  # refused before any standard model was trained


def test_published_rows_put_the_first_robust_model_beside_madry():
    from squiggles.experiments.transfer_analysis import published_rows

    pgd = torch.tensor([[0.0, 0.1, 0.90], [0.2, 0.0, 0.80], [0.5, 0.5, 0.70]])
    fgsm = torch.tensor([[0.1, 0.1, 0.95], [0.2, 0.1, 0.85], [0.5, 0.5, 0.75]])
    rows = published_rows(
        ["m", "l", "r"], [F, F, T], ["madry-cnn", "linear", "small-cnn"], {"pgd": pgd, "fgsm": fgsm}, "eps 0.3"
    )
    # white-box FGSM and PGD on r, then the most transferable standard source (l), then the Madry CNN (m).
    assert [row["ours"] for row in rows] == [0.75, 0.7, 0.85, 0.8, 0.9, None]
    assert "ours: r attacked from l, eps 0.3" in rows[2]["note"]
    none = published_rows(["m", "l"], [F, F], ["madry-cnn", "linear"], {"pgd": pgd[:2, :2], "fgsm": fgsm[:2, :2]}, "")
    assert all(row["ours"] is None for row in none)
