"""``evaluate`` under a spatial threat: the grid, worst-of-10 and first-order cascade, resumable, from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from squiggles.errors import SquigglesError
from squiggles.evaluation import evaluate
from squiggles.evaluation.ensembles import SPATIAL, resolve_stages
from squiggles.transforms import Spatial
from tests.conftest import run_cli


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 4))
    x = torch.rand(20, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_spatial_evaluation_is_the_per_point_worst_case_of_its_stages():
    model, x, y = _setup()
    res = evaluate(model, (x, y), Spatial(30, 2), batch_size=8, progress=False)
    assert [s["attack"] for s in res.config["attacks"]] == [s.attack for s in SPATIAL]
    assert res.flags == [] and res.config["threat"]["threat"] == "spatial"
    from squiggles.attacks.spatial import spatial_grid

    grid = spatial_grid(model, x, y, Spatial(30, 2))
    # every point the grid alone breaks is broken in the evaluation, which may break more
    assert res.robust_accuracy <= grid.robust_accuracy
    assert not (res.robust[0] & grid.success).any()


def test_a_larger_box_never_leaves_more_points_standing():
    model, x, y = _setup()
    res = evaluate(model, (x, y), Spatial(30, 2), eps=[0.25, 0.5, 1.0], batch_size=10, progress=False)
    accs = [c["robust_accuracy"] for c in res.curve()]
    assert accs == sorted(accs, reverse=True) and len(accs) == 3


def test_spatial_evaluation_resumes_to_the_same_result(tmp_path):
    model, x, y = _setup()
    state = tmp_path / "s.safetensors"
    full = evaluate(model, (x, y), Spatial(30, 2), batch_size=5, progress=False)
    again = evaluate(model, (x, y), Spatial(30, 2), batch_size=5, progress=False, state_path=state)
    resumed = evaluate(model, (x, y), Spatial(30, 2), batch_size=5, progress=False, state_path=state)
    assert torch.equal(full.robust, again.robust) and torch.equal(full.robust, resumed.robust)


def test_spatial_threat_refuses_norm_attacks_and_flat_inputs():
    with pytest.raises(SquigglesError, match="does not run under --threat spatial"):
        resolve_stages("apgd-ce", "gradients", "spatial")
    with pytest.raises(SquigglesError, match="does not run under --norm linf"):
        resolve_stages("spatial-grid", "gradients", "linf")
    model = nn.Linear(6, 3)
    with pytest.raises(SquigglesError, match="needs images shaped N x C x H x W"):
        evaluate(model, (torch.rand(4, 6), torch.zeros(4, dtype=torch.long)), Spatial(), progress=False)


def test_evaluate_threat_spatial_from_the_cli(digits_model, tmp_path):
    out = tmp_path / "spatial.json"
    res = run_cli("evaluate", "--model", str(digits_model), "--dataset", "digits", "--n", "40", "--threat",
                  "spatial", "--max-rotation", "20", "--max-translation", "1", "--eps", "0.5", "1", "--out",
                  str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["config"]["threat"]["max_rotation"] == 20 and report["eps"] == [0.5, 1.0]
    assert report["robust_accuracy"] <= report["clean_accuracy"]
    assert out.with_suffix(".curve.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threat", "spatial", "--max-rotation", "181"], "--max-rotation) must be between 0 and 180"),
        (["--threat", "spatial", "--attacks", "apgd-ce"], "does not run under --threat spatial"),
        (["--threat", "norm"], "--eps is required for --threat norm"),
    ],
)
def test_evaluate_spatial_bad_input_exits_2_and_writes_nothing(digits_model, tmp_path, extra, message):
    out = tmp_path / "sub" / "e.json"
    res = run_cli("evaluate", "--model", str(digits_model), "--dataset", "digits", "--out", str(out), *extra)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_evaluate_spatial_on_flat_user_data_exits_2(digits_model, tmp_path):
    data = tmp_path / "flat.npz"
    np.savez(data, x=np.random.rand(10, 64).astype(np.float32), y=np.zeros(10, dtype=np.int64))
    out = tmp_path / "e.json"
    res = run_cli("evaluate", "--model", str(digits_model), "--dataset", str(data), "--threat", "spatial", "--out",
                  str(out))
    assert res.returncode == 2 and "needs images shaped N x C x H x W" in res.stderr
    assert not out.exists() and not list(tmp_path.glob("*.state*"))
