"""Label-only evaluation (``access="labels"``), the norm-versus-queries curve, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from squiggles.errors import SquigglesError
from squiggles.evaluation import evaluate
from squiggles.threat import L1, L2, Linf
from tests.conftest import run_cli
from tests.user_model import LabelEndpoint, make_net


def _problem():
    torch.manual_seed(0)
    net = make_net().eval()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def test_label_only_evaluation_uses_rays_or_hsja_and_reads_only_labels():
    net, x, y = _problem()
    res = evaluate(LabelEndpoint(net), (x, y), Linf(0.1), access="labels", queries=300, batch_size=12,
                   progress=False)
    assert [s["attack"] for s in res.stages] == ["rays"] and res.stages[0]["options"]["queries"] == 300
    assert res.clean_accuracy == 1.0 and res.config["access"] == "labels" and res.flags == []
    per_point = res.queries_per_point()[0]
    assert per_point["max"] <= 300 + 1  # the cascade's budget per point, plus the evaluation's clean call
    # The same evaluation through the module itself: labels are all either one reads, so the answers agree.
    same = evaluate(net, (x, y), Linf(0.1), access="labels", queries=300, batch_size=12, progress=False)
    assert torch.equal(same.robust, res.robust)
    l2 = evaluate(LabelEndpoint(net), (x, y), L2(1.0), access="labels", queries=300, progress=False)
    assert [s["attack"] for s in l2.stages] == ["hsja"]
    # More queries can only break more points (the per-point worst case at every budget).
    curve = evaluate(net, (x, y), Linf(0.1), eps=[0.05, 0.2], access="labels", queries=300, progress=False)
    assert curve.accuracy_at(0) >= curve.accuracy_at(1)


def test_label_only_evaluation_resumes_from_its_state(tmp_path):
    net, x, y = _problem()
    state = tmp_path / "state.safetensors"
    first = evaluate(net, (x, y), L2(1.0), access="labels", queries=200, batch_size=8, state_path=state,
                     progress=False)
    again = evaluate(net, (x, y), L2(1.0), access="labels", queries=200, batch_size=8, state_path=state,
                     progress=False)
    assert torch.equal(first.robust, again.robust) and torch.equal(first.queries, again.queries)


@pytest.mark.parametrize(("attacks", "access", "match"), [
    ("apgd-ce", "labels", "attack 'apgd-ce' needs gradients"),
    ("square", "labels", "attack 'square' needs scores"),
    ("pgd", "scores", "attack 'pgd' needs gradients"),
])
def test_attacks_the_access_level_does_not_allow_are_refused(attacks, access, match):
    net, x, y = _problem()
    with pytest.raises(SquigglesError, match=match):
        evaluate(net, (x, y), Linf(0.1), attacks, access=access, progress=False)


def test_l1_has_no_label_only_cascade_and_says_so():
    net, x, y = _problem()
    with pytest.raises(SquigglesError, match="no label-only attack for --norm l1"):
        evaluate(net, (x, y), L1(1.0), access="labels", progress=False)


def test_norm_vs_queries_gives_a_falling_curve_beside_fmn(tmp_path):
    from squiggles.evaluation.queries import norm_vs_queries

    net, x, y = _problem()
    curve = norm_vs_queries(net, (x, y), "l2", queries=[50, 200, 600], n=12)
    assert curve.queries == [50, 200, 600] and curve.n == 12
    finite = [m for m in curve.median_norm if m is not None]
    assert finite == sorted(finite, reverse=True) and curve.median_norm[-1] is not None
    assert curve.reference["fmn"] is not None and curve.reference["fmn"] <= curve.median_norm[-1] * 1.5
    png = curve.plot(tmp_path / "curve.png")
    assert png.stat().st_size > 1000
    # A label-only callable has no gradients: no white-box reference, said by its absence.
    assert norm_vs_queries(LabelEndpoint(net), (x, y), "l2", queries=[100], n=6).reference == {}


def _tensors(tmp_path, x, name="points.npz"):
    import numpy as np

    path = tmp_path / name
    np.savez(path, x=x.numpy(), y=torch.zeros(len(x), dtype=torch.long).numpy())
    return path


def test_cli_attack_hsja_writes_files_and_the_curve(digits_model, tmp_path):
    out = tmp_path / "hsja"
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--n", "12", "--attack", "hsja",
                  "--norm", "l2", "--queries", "300", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attack"] == "hsja" and summary["backwards"] == 0
    assert summary["norm_curve"]["queries"][-1] == 300 and summary["reference_median_norm"]["fmn"] > 0
    assert {"adversarial.safetensors", "examples.png", "curve.png"} <= set(summary["files"])
    from safetensors.torch import load_file

    saved = load_file(out / "adversarial.safetensors")
    assert int(saved["queries"].max()) <= 300
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    page = (out / "report.html").read_text()
    assert "Median norm against queries" in page and "fmn (white-box minimal norm)" in page


def test_cli_evaluate_label_only_with_a_user_callable(tmp_path):
    out = tmp_path / "labels.json"
    res = run_cli("evaluate", "--model", "tests.user_model:make_label_endpoint", "--access", "labels",
                  "--queries", "200", "--dataset", "digits", "--n", "20", "--norm", "linf", "--eps", "0.1",
                  "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["config"]["access"] == "labels" and data["attacks"][0]["attack"] == "rays"
    assert data["queries_per_point"][0]["max"] <= 201


@pytest.mark.parametrize(("args", "match"), [
    (["--access", "labels", "--attacks", "apgd-ce"], "needs gradients"),
    (["--access", "labels", "--norm", "l1"], "no label-only attack"),
    (["--queries", "0"], "must be a positive integer"),
])
def test_cli_evaluate_bad_access_is_one_line_exit_2_nothing_written(digits_model, tmp_path, args, match):
    out = tmp_path / "sub" / "e.json"
    base = ["evaluate", "--model", str(digits_model), "--dataset", "digits", "--n", "10", "--eps", "0.1",
            "--out", str(out), "--quiet"]
    res = run_cli(*base, *args)
    assert res.returncode == 2 and match in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize(("args", "match"), [
    (["--attack", "rays", "--norm", "l2"], "supports --norm linf"),
    (["--attack", "hsja", "--norm", "l2", "--queries", "5"], "queries must be an integer >= 10"),
    (["--attack", "pgd", "--eps", "0.1", "--starts", "x.npz"], "--starts is for the label-only attacks"),
])
def test_cli_attack_bad_label_only_input(digits_model, tmp_path, args, match):
    out = tmp_path / "a"
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--n", "6", "--out", str(out),
                  "--quiet", *args)
    assert res.returncode == 2 and match in res.stderr and "Traceback" not in res.stderr
    assert not (out / "summary.json").exists()


def test_cli_attack_starts_of_the_wrong_shape(digits_model, tmp_path):
    starts = _tensors(tmp_path, torch.rand(3, 1, 8, 8))
    out = tmp_path / "a"
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--n", "6", "--attack", "hsja",
                  "--norm", "l2", "--starts", str(starts), "--out", str(out), "--quiet")
    assert res.returncode == 2 and "--starts" in res.stderr and "one starting image per point" in res.stderr
    assert not out.exists()

