"""``squiggles certify`` end to end: smoothing and bounds, certified beside empirical, resume, shards, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from squiggles.certify.run import CertifyConfig, certify_points
from squiggles.checkpoints import load_model
from squiggles.data import load_dataset
from tests.conftest import run_cli

SMOOTH = ["--dataset", "digits", "--points", "24", "--method", "smoothing", "--sigma", "0.25", "--n0", "20",
          "--samples", "400", "--alpha", "0.01", "--quiet"]
BOUNDS = ["--dataset", "digits", "--points", "40", "--eps", "0.005", "0.02", "0.1", "--quiet"]


def test_smoothing_writes_radii_curve_and_the_attack_beside(digits_model, tmp_path):
    out = tmp_path / "smooth.json"
    res = run_cli("certify", "--model", str(digits_model), "--out", str(out), *SMOOTH)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["kind"] == "certification" and data["method"] == "smoothing" and data["norm"] == "l2"
    assert len(data["per_point"]["radius"]) == 24 and data["model_calls"] == 24 * (20 + 400 + 1)
    radii = [row["radius"] for row in data["curve"]]
    assert radii[0] == 0.0 and radii == sorted(radii)
    accs = [row["certified_accuracy"] for row in data["curve"]]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.5
    assert data["abstentions"] == sum(p < 0 for p in data["per_point"]["prediction"])
    assert data["empirical"] and all(row["certified_le_empirical"] for row in data["empirical"])
    assert (tmp_path / "smooth.curve.png").exists() and not list(tmp_path.glob("*.state*"))
    assert "certified" in res.stdout and "empirical" in res.stdout
    page = run_cli("report", str(out))
    assert page.returncode == 0, page.stderr
    html = (tmp_path / "smooth.html").read_text()
    assert "Certified beside empirical accuracy" in html and "smoothed PGD" in html
    before = out.read_text()
    again = run_cli("certify", "--model", str(digits_model), "--out", str(out), *SMOOTH)
    assert again.returncode == 2 and "already exists" in again.stderr and out.read_text() == before


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_bounds_verify_no_more_than_the_attack_leaves(digits_model, tmp_path, method):
    out = tmp_path / f"{method}.json"
    res = run_cli("certify", "--model", str(digits_model), "--method", method, "--out", str(out), *BOUNDS)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert [row["eps"] for row in data["curve"]] == [0.005, 0.02, 0.1]
    certified = [row["certified_accuracy"] for row in data["curve"]]
    assert certified == sorted(certified, reverse=True) and certified[0] > 0
    for row in data["empirical"]:
        assert row["certified_le_empirical"] and row["certified_accuracy"] <= row["robust_accuracy"] + 1e-6, row
    assert len(data["per_point"]["verified"]) == 3 and len(data["per_point"]["verified"][0]) == 40


def test_crown_verifies_at_least_what_ibp_does(digits_model):
    model = load_model(digits_model)
    data = load_dataset("digits", "test").subset(60)
    flags = {}
    for method in ("ibp", "crown-ibp", "crown"):
        res = certify_points(model, data, CertifyConfig(method=method, eps=[0.01, 0.03]), progress=False)
        flags[method] = res.per_point["verified"]
    assert (flags["crown"] >= flags["ibp"]).all() and (flags["crown-ibp"] >= flags["ibp"]).all()
    assert flags["crown"].sum() > flags["ibp"].sum()


class _Dies(torch.nn.Module):
    """Stops the run (as a kill would) after ``calls`` forward passes."""

    def __init__(self, net: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.net, self.left = net, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.net(x)


def test_an_interrupted_certification_resumes_to_the_uninterrupted_result(digits_model, tmp_path):
    net = load_model(digits_model).eval()
    data = load_dataset("digits", "test").subset(12)
    config = CertifyConfig(method="smoothing", sigma=0.25, n0=10, n=300, alpha=0.01, batch_size=100, chunk=4)
    whole = certify_points(net, data, config, progress=False)
    state = tmp_path / "run.state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        certify_points(_Dies(net, 20), data, config, state_path=state, progress=False)
    assert state.exists()  # one chunk of four points (15 calls) finished before the interruption
    resumed = certify_points(net, data, config, state_path=state, progress=False)
    for key in ("prediction", "radius", "count", "clean"):
        assert torch.equal(whole.per_point[key], resumed.per_point[key]), key
    other = CertifyConfig(method="smoothing", sigma=0.5, n0=10, n=300, alpha=0.01, batch_size=100, chunk=4)
    with pytest.raises(Exception, match="other settings"):
        certify_points(net, data, other, state_path=state, progress=False)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_torchrun_two_processes_give_the_single_process_result(digits_model, tmp_path):
    args = [*SMOOTH, "--no-empirical", "--device", "cpu", "--chunk", "5"]  # five chunks: both processes work
    single = tmp_path / "single.json"
    assert run_cli("certify", "--model", str(digits_model), "--out", str(single), *args).returncode == 0
    sharded = tmp_path / "sharded.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "squiggles",
           "certify", "--model", str(digits_model), "--out", str(sharded), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert a["per_point"] == b["per_point"] and a["curve"] == b["curve"]


@pytest.mark.parametrize("flags,message", [
    (["--sigma", "0"], "--sigma"),
    (["--samples", "0"], "--samples"),
    (["--n0", "0"], "--n0"),
    (["--alpha", "1.5"], "--alpha"),
    (["--method", "ibp", "--eps", "2"], "outside the input range"),
    (["--method", "ibp"], "needs --eps"),
    (["--eps", "0.1"], "--eps is for bound propagation"),
    (["--method", "crown", "--eps", "0.1", "--model-arg", "dummy=1"], "dummy"),
])
def test_bad_input_is_one_line_and_exit_code_2(digits_model, tmp_path, flags, message):
    out = tmp_path / "bad.json"
    out.write_text("keep me")
    model = ["--model", "tests.user_model:make_net"] if "--model-arg" in flags else ["--model", str(digits_model)]
    res = run_cli("certify", *model, "--dataset", "digits", "--points", "4", *flags, "--out", str(out),
                  "--overwrite", "--quiet")
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert out.read_text() == "keep me"


def test_an_unsupported_layer_is_named(tmp_path):
    res = run_cli("certify", "--model", "tests.user_model:make_softmax_net", "--dataset", "digits", "--points", "4",
                  "--method", "ibp", "--eps", "0.1", "--out", str(tmp_path / "c.json"), "--quiet")
    assert res.returncode == 2 and "(Scale) is not supported by bound propagation" in res.stderr


def test_predict_gives_the_smoothed_classifier_with_abstentions(digits_model, tmp_path):
    out = tmp_path / "predict.json"
    res = run_cli("certify", "--model", str(digits_model), "--dataset", "digits", "--points", "30", "--predict",
                  "--sigma", "0.25", "--samples", "200", "--alpha", "0.01", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    pred, label = torch.tensor(data["prediction"]), torch.tensor(data["label"])
    assert data["method"] == "predict" and len(pred) == 30 and data["model_calls"] == 30 * 200
    assert data["abstentions"] == int((pred == -1).sum())
    assert data["smoothed_accuracy"] == pytest.approx(float((pred == label).double().mean()))
    assert data["smoothed_accuracy"] > 0.5
    bad = run_cli("certify", "--model", str(digits_model), "--dataset", "digits", "--method", "ibp", "--eps", "0.1",
                  "--predict", "--out", str(tmp_path / "x.json"), "--quiet")
    assert bad.returncode == 2 and "takes --method smoothing" in bad.stderr and not (tmp_path / "x.json").exists()
