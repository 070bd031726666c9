"""``squiggles evaluate`` end to end, alone and sharded over two processes with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_cli

# Without remedies: Square with four times the queries on these weak stages would triple the test's time (the
# remedies have their own test below).
ARGS = ["--dataset", "digits", "--points", "90", "--norm", "linf", "--attacks", "fgsm,pgd,square", "--batch-size", "30",
        "--quiet", "--no-remedies"]


def test_evaluate_writes_results_curve_and_table(digits_model, tmp_path):
    out = tmp_path / "eval.json"
    res = run_cli("evaluate", "--model", str(digits_model), "--eps", "0.05", "0.1", "0.2", "--out", str(out), *ARGS)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    for key in ("schema", "clean_accuracy", "robust_accuracy", "curve", "breakdown", "attacks", "flags",
                "model_calls", "wall_time_s", "seed", "versions", "model_card", "disagreements"):
        assert key in data, key
    assert [c["eps"] for c in data["curve"]] == [0.05, 0.1, 0.2]
    accs = [c["robust_accuracy"] for c in data["curve"]]
    assert accs == sorted(accs, reverse=True)
    assert [s["stage"] for s in data["breakdown"][0]["stages"]] == ["clean", "fgsm", "pgd", "square"]
    assert data["remedies"] == [] and data["config"]["remedies"] is False
    # Square broke points the white-box stages could not: the flag says at which budgets, worst first.
    flag = next(f for f in data["flags"] if f["code"] == "black-box-stronger")
    shares = [b["share"] for b in flag["budgets"]]
    assert shares == sorted(shares, reverse=True) and f"at Linf {flag['budgets'][0]['eps']:g}," in flag["message"]
    assert (tmp_path / "eval.curve.png").exists()
    assert not list(tmp_path.glob("*.state*")), "the progress file is removed once the evaluation is complete"
    assert "robust accuracy" in res.stdout
    again = run_cli("evaluate", "--model", str(digits_model), "--eps", "0.1", "--out", str(out), *ARGS)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_torchrun_two_processes_give_the_single_process_result(digits_model, tmp_path):
    single = tmp_path / "single.json"
    assert run_cli("evaluate", "--model", str(digits_model), "--eps", "0.1", "--out", str(single), *ARGS,
                   "--no-checks").returncode == 0
    sharded = tmp_path / "sharded.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "squiggles", "evaluate", "--model", str(digits_model), "--eps", "0.1", "--out", str(sharded),
           *ARGS, "--no-checks", "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert a["robust_accuracy"] == b["robust_accuracy"] and a["clean_accuracy"] == b["clean_accuracy"]
    assert a["breakdown"][0]["stages"][1:] and [s["broken"] for s in a["breakdown"][0]["stages"][1:]] == \
        [s["broken"] for s in b["breakdown"][0]["stages"][1:]]
    assert a["model_calls"] == b["model_calls"]


def test_evaluate_bad_arguments(digits_model, tmp_path):
    res = run_cli("evaluate", "--model", str(digits_model), "--eps", "0.1", "--out", str(tmp_path / "x.txt"), *ARGS)
    assert res.returncode == 2 and ".json" in res.stderr
    res = run_cli("evaluate", "--model", str(digits_model), "--eps", "-1", "--out", str(tmp_path / "x.json"), *ARGS)
    assert res.returncode == 2 and "must be >= 0" in res.stderr
    res = run_cli("evaluate", "--model", str(digits_model), "--eps", "0.1", "--out", str(tmp_path / "x.json"), *ARGS,
                  "--attacks", "nope")
    assert res.returncode == 2 and "unknown attack" in res.stderr


def test_a_softmax_model_is_evaluated_through_its_logits(tmp_path):
    """The user's model ends in a saturated softmax: the headline is the remedied figure, never more than 5
    points above the same network's logits."""
    run = tmp_path / "run"
    assert run_cli("train", "--model", "tests.user_model:make_net", "--dataset", "digits", "--epochs", "5", "--lr",
                   "0.01", "--out", str(run), "--quiet").returncode == 0
    common = ["--weights", str(run / "model.safetensors"), "--dataset", "digits", "--points", "60", "--eps", "0.1",
              "--attacks", "apgd-ce", "--quiet"]
    logits, probs = tmp_path / "logits.json", tmp_path / "probs.json"
    res = run_cli("evaluate", "--model", "tests.user_model:make_net", *common, "--out", str(logits))
    assert res.returncode == 0, res.stderr
    res = run_cli("evaluate", "--model", "tests.user_model:make_softmax_net", *common, "--out", str(probs))
    assert res.returncode == 0, res.stderr
    a, b = json.loads(logits.read_text()), json.loads(probs.read_text())
    assert [r["remedy"] for r in b["remedies"]] == ["logits"]
    assert b["remedies"][0]["reason"] == ["probability-outputs"]
    assert b["robust_accuracy"] <= a["robust_accuracy"] + 0.05 < b["unremedied_robust_accuracy"]
    assert "REMEDY logits (for probability-outputs)" in res.stdout and "without remedies" in res.stdout
