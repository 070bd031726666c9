"""``torchrun -m squiggles train``: DistributedDataParallel over two CPU processes gives a model of the same quality."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from squiggles.checkpoints import load_model, read_card

ARGS = ["train", "--model", "small-cnn", "--dataset", "digits", "--method", "pgd", "--eps", "0.1", "--attack-steps",
        "5", "--epochs", "6", "--lr", "0.01", "--batch-size", "32", "--final-eval-n", "180", "--device", "cpu",
        "--quiet"]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_two_process_training_matches_single_process_quality(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single, sharded = tmp_path / "single", tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "squiggles", *ARGS, "--out", str(single)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "squiggles",
           *ARGS, "--out", str(sharded)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("saved to") == 1, "only rank 0 reports and writes"
    a, b = read_card(single).metrics, read_card(sharded).metrics
    assert a["clean_accuracy"] > 0.9 and b["clean_accuracy"] > 0.9
    assert abs(a["clean_accuracy"] - b["clean_accuracy"]) < 0.05
    assert abs(a["robust_accuracy"] - b["robust_accuracy"]) < 0.1
    assert len(b["guard"]["checks"]) == 6 and len(b["history"]) == 6
    load_model(sharded)  # a complete, loadable model folder
