"""The command line, run as a user would run it: in a subprocess, on the small `digits` dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from squiggles.checkpoints import load_model
from squiggles.data import load_dataset
from squiggles.runtime import accuracy
from tests.conftest import ROOT, run_cli


def test_version_and_help():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("squiggles 0.")
    for cmd in ("train", "data"):
        res = run_cli(cmd, "--help")
        assert res.returncode == 0 and "usage: squiggles " + cmd in res.stdout
    assert run_cli().returncode == 2


def test_train_on_digits_writes_a_loadable_model(tmp_path):
    out = tmp_path / "run"
    res = run_cli(
        "train",
        "--model",
        "small-cnn",
        "--dataset",
        "digits",
        "--epochs",
        "4",
        "--lr",
        "0.01",
        "--out",
        str(out),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    assert "test accuracy" in res.stdout
    card = json.loads((out / "card.json").read_text())
    assert card["arch"] == "small-cnn" and card["dataset"] == "digits" and card["recipe"]["epochs"] == 4
    model = load_model(out)
    test = load_dataset("digits", "test")
    acc = accuracy(model, test.x, test.y)
    assert acc == pytest.approx(card["metrics"]["clean_accuracy"])
    assert acc > 0.8

    again = run_cli("train", "--dataset", "digits", "--out", str(out), "--quiet")
    assert again.returncode == 2 and "already holds" in again.stderr
    changed = run_cli(
        "train",
        "--model",
        "small-cnn",
        "--dataset",
        "digits",
        "--epochs",
        "5",
        "--lr",
        "0.01",
        "--out",
        str(out),
        "--resume",
        "--quiet",
    )
    assert changed.returncode == 2 and "different settings (epochs)" in changed.stderr


def test_users_own_model_and_tensors(tmp_path):
    data = load_dataset("digits", "train")
    np.savez(tmp_path / "mine.npz", x=data.x.numpy(), y=data.y.numpy())
    res = run_cli(
        "train",
        "--model",
        "tests.user_model:make_net",
        "--model-arg",
        "width=16",
        "--dataset",
        str(tmp_path / "mine.npz"),
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["arch"] == "tests.user_model:make_net" and card["arch_kwargs"] == {"width": 16}
    assert card["metrics"]["test_points"] == len(data) // 10
    assert load_model(tmp_path / "run")(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "resnet", "--out", "X"], "unknown model 'resnet'; choose one of: madry-cnn"),
        (["train", "--dataset", "cifar", "--out", "X"], "unknown dataset 'cifar'; choose one of: mnist, fashion-mnist"),
        (["train", "--epochs", "-2", "--out", "X"], "--epochs: must be a positive integer"),
        (["train", "--lr", "abc", "--out", "X"], "not a valid float"),
        (["train", "--dataset", "missing.npz", "--out", "X"], "missing.npz"),
        (["train", "--dataset", "digits", "--model-arg", "oops", "--out", "X"], "KEY=VALUE"),
        (["data", "info", "cifar"], "cifar"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(tmp_path, args, message):
    args = [str(tmp_path / a) if a == "X" else a for a in args]
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_unwritable_output_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = run_cli("train", "--dataset", "digits", "--out", str(blocker / "sub"), "--quiet")
    assert res.returncode == 2 and "cannot create output folder" in res.stderr


def test_data_list_info_fetch():
    listing = run_cli("data", "list")
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names == ["mnist", "fashion-mnist", "digits", "spheres", "mnist-c"]
    info = run_cli("data", "info", "digits")
    assert info.returncode == 0 and json.loads(info.stdout)["num_classes"] == 10
    assert run_cli("data", "fetch", "digits", "--quiet").returncode == 0
