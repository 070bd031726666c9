"""The demo's stages on tiny models: the squiggles grid, wormholes, model roles, and one end-to-end run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from squiggles.demo.figure12 import other_classes, pick_digits, targeted_grid
from squiggles.demo.models import load_ref, parse_ref
from squiggles.demo.run import DemoConfig
from squiggles.demo.wormholes import RANDOM, describe, random_perturbation, wormholes
from squiggles.errors import SquigglesError
from squiggles.models import build_model


def _linear(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("linear", in_shape=(1, 4, 4), num_classes=3).eval()


def test_other_classes_lists_every_class_but_the_label():
    assert other_classes(torch.tensor([0, 2]), 4).tolist() == [[1, 2, 3], [0, 1, 3]]


def test_pick_digits_takes_the_first_point_of_each_new_label():
    assert pick_digits(torch.tensor([7, 7, 2, 7, 1, 0]), 3) == [0, 2, 4]


def test_targeted_grid_reaches_targets_with_budget_and_stays_inside_it():
    net = _linear()
    x = torch.rand(2, 1, 4, 4)
    y = net(x).argmax(1)
    grid = targeted_grid(net, x, y, [0.01, 50.0], 3, steps=30, bounds=(-100.0, 100.0))
    assert grid.pred.shape == (2, 2, 2)
    assert bool((grid.norms[0] <= 0.01 + 1e-5).all()) and bool((grid.norms[1] <= 50.0 + 1e-4).all())
    # A tiny budget cannot move a linear model far; a huge one reaches every target.
    assert bool((grid.pred[1] == grid.targets).all())
    assert grid.summary()[1]["target_reached"] == 1.0
    assert grid.summary()[0]["target_reached"] < 1.0


def test_random_perturbation_has_the_requested_norm_and_stays_in_bounds():
    x = torch.rand(5, 1, 8, 8) * 0.2 + 0.4
    budgets = torch.tensor([0.0, 0.5, 1.0, 0.25, 0.75])
    out = random_perturbation(x, budgets, (0.0, 1.0), torch.Generator().manual_seed(1))
    assert torch.allclose((out - x).flatten(1).norm(dim=1), budgets, atol=1e-5)
    big = random_perturbation(x, torch.full((5,), 30.0), (0.0, 1.0), torch.Generator().manual_seed(1))
    assert big.min() >= 0 and big.max() <= 1  # clipped, so the norm used is measured, not assumed


def test_wormholes_observer_equal_to_the_surrogate_sees_exactly_the_white_box_success():
    net = _linear()
    x = torch.rand(6, 1, 4, 4)
    y = net(x).argmax(1)
    t = (y + 1) % 3
    rows = wormholes({"a": net}, [net], x, y, t, [0.0, 0.5, 30.0], steps=20, bounds=(-50.0, 50.0))
    assert [(r["source"], r["budget"]) for r in rows] == [
        ("a", 0.0), ("a", 0.5), ("a", 30.0), (RANDOM, 0.0), (RANDOM, 0.5), (RANDOM, 30.0)]
    for r in rows[:3]:
        assert r["target_rate"] == pytest.approx(r["source_success"])
        assert r["followed_rate"] in (None, 1.0)  # an observer identical to the fooled model always follows it
    assert rows[0]["target_rate"] == 0.0 and rows[0]["abandon_rate"] == 0.0  # budget 0 changes nothing
    assert rows[2]["target_rate"] == 1.0 and rows[3]["source_success"] is None


def _rows(robust: float, standard: float, noise: float) -> list[dict]:
    return [{"source": s, "budget": 4.0, "target_rate": v, "abandon_rate": v} for s, v in
            (("robust", robust), ("standard", standard), (RANDOM, noise))]


def test_describe_says_what_the_numbers_show_whatever_they_show():
    assert "more than the standard model's, and noise" in describe(_rows(0.6, 0.05, 0.01), "robust", "standard")
    assert "not an absence of transfer" in describe(_rows(0.6, 0.3, 0.01), "robust", "standard")
    assert "faintly" in describe(_rows(0.10, 0.05, 0.01), "robust", "standard")
    text = describe(_rows(0.02, 0.05, 0.01), "robust", "standard")
    assert "did not appear" in text and "2%" in text and "5%" in text


def test_parse_ref_splits_factory_weights_only():
    assert parse_ref("pkg.mod:make@w/x.safetensors") == ("pkg.mod:make", "w/x.safetensors")
    assert parse_ref("runs/a@b") == ("runs/a@b", None)
    assert parse_ref("mnist-standard") == ("mnist-standard", None)


def test_load_ref_errors_name_the_problem(tmp_path):
    kw = {"retrain": False, "device": "cpu", "log": lambda m: None, "progress": False}
    with pytest.raises(SquigglesError, match="not a model folder, a zoo name"):
        load_ref("no-such-model", tmp_path, **kw)
    with pytest.raises(SquigglesError, match="needs its weights"):
        load_ref("user_model:make", tmp_path, **kw)


def test_a_model_that_does_not_fit_the_data_is_a_clear_error(digits_model, tmp_path):
    from squiggles.data import load_dataset
    from squiggles.demo.models import Cast
    from squiggles.demo.run import _check_fit

    mnist_shaped = build_model("small-cnn", in_shape=(1, 28, 28), num_classes=10).eval()
    cast = Cast({"standard": mnist_shaped}, [], {"standard": {"ref": "runs/mnist"}})
    with pytest.raises(SquigglesError, match=r"standard model \(runs/mnist\) cannot take digits inputs of shape "
                                             r"\(1, 8, 8\).*--standard"):
        _check_fit(cast, load_dataset("digits", "test"), torch.device("cpu"))


def test_config_refuses_settings_that_cannot_work():
    with pytest.raises(SquigglesError, match="eval eps must be positive"):
        DemoConfig(eval_eps=[0.0]).check()
    with pytest.raises(SquigglesError, match="at least one observer"):
        DemoConfig(observers=[]).check()


def _demo_args(model: str, out) -> list[str]:
    return ["demo", "--dataset", "digits", "--standard", model, "--robust", model, "--l2", model, "--observer", model,
            "--n", "16", "--eps", "0.1", "0.3", "--attacks", "apgd-ce", "--digits", "2", "--budgets", "1", "2",
            "--wormhole-n", "12", "--wormhole-budgets", "0", "2", "--out", str(out), "--quiet"]


@pytest.fixture(scope="module")
def demo_run(digits_model, tmp_path_factory):
    """One small demo run on scikit-learn's digits, every role played by the same tiny CNN."""
    out = tmp_path_factory.mktemp("demo") / "out"
    # One thread: tiny models gain nothing from more, and a busy machine makes competing thread pools crawl.
    proc = run_cli(*_demo_args(str(digits_model), out), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_demo_end_to_end_on_digits(demo_run):
    out, proc = demo_run
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "demo"
    assert set(results["evaluation"]["roles"]) == {"standard", "robust"}
    assert [c["eps"] for c in results["evaluation"]["roles"]["standard"]["curve"]] == [0.1, 0.3]
    assert len(results["wormholes"]["rows"]) == 3 * 2  # (standard, robust, random) x 2 budgets
    assert len(results["squiggles"]["indices"]) == 2 and len(results["squiggles"]["labels"]) == 2
    assert list(results["stage_seconds"]) == ["data and models", "evaluation", "squiggles figure", "wormholes"]
    for name in ("eps-curve.png", "squiggles-standard.png", "squiggles-l2.png", "squiggles-perturbations.png",
                 "wormholes.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "Wormholes" in page and "The squiggles figure" in page and "Note:" not in page
    assert "report:" in proc.stdout and "standard model" in proc.stdout


def test_demo_rewrites_its_own_folder_and_refuses_anyone_elses(demo_run, digits_model, tmp_path):
    out, _ = demo_run
    before = json.loads((out / "results.json").read_text())["wall_time_s"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    proc = run_cli(*_demo_args(str(digits_model), other))
    assert proc.returncode == 2 and "holds no earlier demo" in proc.stderr
    assert (other / "notes.txt").read_text() == "keep me" and not (other / "results.json").exists()
    assert json.loads((out / "results.json").read_text())["wall_time_s"] == before


def test_demo_page_in_a_real_browser(demo_run, tmp_path):
    from test_report_browser import check_page_in_browser, require_browser

    require_browser()
    out, _ = demo_run
    shot = Path(os.environ.get("SQUIGGLES_SCREENSHOT_DEMO", tmp_path / "demo.png"))
    seen = check_page_in_browser(out / "report.html", shot)
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    assert len(seen["image_widths"]) == 5 and min(seen["image_widths"]) > 0
    assert seen["distinct_colours"] > 10


def test_pooled_followed_weights_each_budget_by_the_images_that_fooled_the_model():
    from squiggles.demo.wormholes import pooled_followed

    rows = [{"source": "a", "source_success": 0.2, "followed_rate": 1.0},
            {"source": "a", "source_success": 0.6, "followed_rate": 0.5},
            {"source": "a", "source_success": 0.0, "followed_rate": None},
            {"source": "b", "source_success": 0.0, "followed_rate": None}]
    assert pooled_followed(rows, "a") == pytest.approx((0.2 * 1.0 + 0.6 * 0.5) / 0.8)
    assert pooled_followed(rows, "b") is None


def test_a_zoo_model_missing_from_the_build_is_trained_once_then_reused(tmp_path, monkeypatch):
    from squiggles.zoo import ENV_DIR, ZOO, ZooEntry

    tiny = ZooEntry("tiny-demo", "MLP on digits, one epoch", "standard",
                    ("--model", "mlp", "--dataset", "digits", "--epochs", "1", "--batch-size", "32"))
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "empty-zoo"))
    monkeypatch.setitem(ZOO, tiny.name, tiny)
    said: list[str] = []
    kw = {"device": "cpu", "log": said.append, "progress": False}
    _, first = load_ref("tiny-demo", tmp_path / "models", retrain=False, **kw)
    assert first["trained_now"] and first["card"]["arch"] == "mlp"
    assert "training tiny-demo" in said[0] and "squiggles train --model mlp" in said[0]
    _, again = load_ref("tiny-demo", tmp_path / "models", retrain=False, **kw)
    assert not again["trained_now"] and "reusing tiny-demo" in said[-1]
    # --retrain trains anew and keeps the earlier training aside rather than deleting it.
    _, redone = load_ref("tiny-demo", tmp_path / "models", retrain=True, **kw)
    assert redone["trained_now"] and (tmp_path / "models" / "tiny-demo.old-1" / "model.safetensors").exists()
