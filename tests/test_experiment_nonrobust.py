"""The non-robust features experiment (Ilyas et al. 2019): target choice, the sanity arithmetic, settings, and
quick runs on scikit-learn's digits (through the CLI and with the user's own source model)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from squiggles.errors import DataError, SquigglesError
from squiggles.experiments import make_config, run_experiment
from squiggles.experiments import nonrobust as nr
from squiggles.experiments import nonrobust_report as report
from tests.conftest import run_cli


def test_targets_det_is_next_class_and_rand_is_any_other_class():
    y = torch.arange(10).repeat(50)
    assert nr.choose_targets("det", torch.tensor([0, 3, 9]), 10).tolist() == [1, 4, 0]
    t = nr.choose_targets("rand", y, 10, torch.Generator().manual_seed(0))
    assert (t != y).all() and len(t.unique()) == 10
    # every other class about equally often (500 draws over 9 classes per label: ~5.6 each)
    counts = torch.bincount((t - y) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() >= 30
    again = nr.choose_targets("rand", y, 10, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    with pytest.raises(SquigglesError, match="unknown variant 'up'"):
        nr.choose_targets("up", y, 10)


def test_class_agreement_by_hand():
    labels = torch.tensor([0, 1, 2, 9])
    pred = torch.tensor([0, 2, 3, 0])  # right once; y + 1 three times (9 + 1 wraps to 0)
    assert nr.class_agreement(pred, labels, 10) == {"accuracy": 0.25, "says_next_class": 0.75}
    assert nr.share(torch.tensor([True, False, False, False])) == 0.25
    assert [report.versus_chance(a, 0.1) for a in (0.0, 0.08, 0.12, 0.5)] == ["below", "near", "near", "above"]
    assert math.isnan(nr.share(torch.tensor([], dtype=torch.bool)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": ["a", "b"]}, "one source model"),
        ({"eps": 0.0}, "eps and step_size must be > 0"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"n_train": 5}, "n_train must be >= 10"),
        ({"epochs": 0}, "epochs and source_epochs"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(SquigglesError, match=message):
        make_config("nonrobust", overrides=overrides)


def test_defaults_are_the_real_run():
    real, quick = make_config("nonrobust"), make_config("nonrobust", quick=True)
    assert real.models == [] and real.also_fashion and real.baselines and real.drop_failures
    assert real.n_train > quick.n_train and real.steps * real.step_size >= 2 * real.eps
    assert make_config("nonrobust", overrides={"models": ["runs/a"]}).models == ["runs/a"]


def _fake_run(dataset: str, rand: float, det: float) -> dict:
    rows = {"D_rand": rand, "D_det": det, "D_rand labels, no perturbation": 0.1, "D_det labels, no perturbation": 0.0}
    fresh = {k: {"test_accuracy": v, "test_says_next_class": 0.2} for k, v in rows.items()}
    return {"dataset": dataset, "status": "ok", "num_classes": 10, "source_accuracy": 0.98, "fresh": fresh}


def test_results_text_and_rows_from_the_numbers():
    runs = [_fake_run("mnist", 0.7, 0.5), {"dataset": "fashion-mnist", "status": "not available: offline"}]
    summary = report.summarize(runs)
    assert summary == (
        "A model trained only on relabelled adversarial images reaches 70.0% (D_rand) and 50.0% (D_det) on the "
        "real mnist test set (chance 10%), against 63.3% and 43.7% published for CIFAR-10 (no MNIST or "
        "Fashion-MNIST version is published)."
    )
    rows = report.published_rows(runs, nr.Config())
    assert [r["quantity"] for r in rows] == [
        "attack budget",
        "D_rand test accuracy (mnist)",
        "D_det test accuracy (mnist)",
    ]
    assert rows[1]["published"] == 0.633 and rows[1]["ours"] == 0.7 and rows[2]["ours"] == 0.5
    table = [report.dataset_row(r) for r in runs]
    assert table[0]["chance"] == 0.1 and table[0]["baseline_det_test_accuracy"] == 0.0
    assert table[1] == {
        "dataset": "fashion-mnist",
        "status": "not available: offline",
        "source_test_accuracy": None,
        "d_rand_test_accuracy": None,
        "d_det_test_accuracy": None,
        "baseline_rand_test_accuracy": None,
        "baseline_det_test_accuracy": None,
        "chance": None,
    }
    lines = report.notes(runs)
    assert "give 10.0% (D_rand targets, near chance) and 0.0% (D_det targets, below chance" in lines[0]
    assert lines[1].startswith("mnist: the D_det model calls 20.0% of the real test images y + 1")
    assert lines[2] == "fashion-mnist: not available: offline."


def test_a_missing_second_dataset_is_recorded_and_other_errors_are_not_hidden(monkeypatch, tmp_path):
    ctx = nr.Context(out=tmp_path, device=torch.device("cpu"), progress=False, log=lambda m: None)

    def no_files(*args):
        raise DataError("could not get fashion-mnist (train-images-idx3-ubyte). Sources tried:\n  - ...")

    monkeypatch.setattr(nr, "run_dataset", no_files)
    record = nr.try_dataset(ctx, nr.Config(), "fashion-mnist")
    assert record == {
        "dataset": "fashion-mnist",
        "status": "not available: could not get fashion-mnist (train-images-idx3-ubyte). Sources tried:",
    }

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(nr, "run_dataset", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        nr.try_dataset(ctx, nr.Config(), "fashion-mnist")


def test_quick_run_on_digits_through_the_cli(tmp_path):
    out = tmp_path / "x"
    proc = run_cli(
        "experiment",
        "nonrobust",
        "--quick",
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--quiet",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert (out / "report.html").is_file()
    for key in (
        "summary",
        "description",
        "notes",
        "published",
        "datasets",
        "construction",
        "fresh_models",
        "d_rand_test_accuracy",
        "d_det_test_accuracy",
        "attack_budget",
        "fashion_mnist",
        "figures",
    ):
        assert key in data, key
    assert data["name"] == "nonrobust" and data["quick"] and data["dataset"] == "digits"
    assert [f["path"] for f in data["figures"]] == ["figures/examples-digits.png", "figures/accuracy.png"]
    assert all((out / f["path"]).is_file() for f in data["figures"])
    assert data["published"][1]["published"] == 0.633 and data["published"][2]["published"] == 0.437
    built = {row["set"]: row for row in data["construction"]}
    assert set(built) == {"D_rand", "D_det"}
    for row in built.values():  # failures are dropped by default, and counted
        assert row["images"] == 1000 and row["kept"] == 1000 - row["failures"]
        assert row["failures"] == round(1000 * (1 - row["attack_success"]))
        assert row["attack_success"] > 0.85 and row["mean_l2_norm"] <= 1.5 + 1e-4
    fresh = {row["training_set"]: row for row in data["fresh_models"]}
    assert len(fresh) == 4
    assert fresh["D_det"]["n_train"] == fresh["D_det labels, no perturbation"]["n_train"] == built["D_det"]["kept"]
    # the fresh models learned their relabelled data...
    assert fresh["D_rand"]["train_accuracy"] > 0.95 and fresh["D_det"]["train_accuracy"] > 0.95
    assert fresh["D_det labels, no perturbation"]["train_accuracy"] > 0.95  # the map y -> y + 1
    # ...and what generalises to the real test set comes from the perturbations, not from the labels
    assert data["d_rand_test_accuracy"] > 0.6 and data["d_det_test_accuracy"] > 0.5
    assert fresh["D_rand labels, no perturbation"]["test_accuracy"] < 0.05
    assert fresh["D_det labels, no perturbation"]["test_accuracy"] < 0.05
    assert fresh["D_det labels, no perturbation"]["test_says_next_class"] > 0.9
    assert data["fashion_mnist"].startswith("not run") and "digits" in proc.stdout


def test_the_users_source_model_and_kept_failures(tmp_path, digits_model):
    results = run_experiment(
        "nonrobust",
        tmp_path / "y",
        quick=True,
        dataset="digits",
        progress=False,
        log=lambda m: None,
        overrides={"models": [str(digits_model)], "drop_failures": False, "baselines": False, "steps": 3},
    )
    assert str(digits_model) in results["description"]
    assert not (tmp_path / "y" / "models" / "source-digits").exists()  # nothing trained for the source
    for row in results["construction"]:
        assert row["kept"] == row["images"] and row["failures"] > 0
    fresh = {row["training_set"]: row for row in results["fresh_models"]}
    assert set(fresh) == {"D_rand", "D_det"}
    assert fresh["D_rand"]["n_train"] == built_kept(results, "D_rand")
    assert results["datasets"][0]["baseline_det_test_accuracy"] is None


def built_kept(results: dict, name: str) -> int:
    return next(row["kept"] for row in results["construction"] if row["set"] == name)
