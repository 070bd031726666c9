"""``squiggles train --poison`` and ``squiggles backdoor scan|repair``: a tiny backdoored model on scikit-learn's digits
found and repaired end to end through the CLI; bad input is one line, exit code 2, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from squiggles.backdoor.poison import poisoned_count
from squiggles.cli import main
from squiggles.data import load_dataset
from squiggles.report.html import write_report
from tests.conftest import run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # small models: one thread is fastest, and the figures are the same each run


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Run the command in this process (fast); its exit code and stderr."""
    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def test_a_backdoored_digits_model_is_found_and_repaired_end_to_end(tmp_path):
    model, scan = tmp_path / "badnets", tmp_path / "scan"
    r = run_cli("train", "--model", "small-cnn", "--dataset", "digits", "--epochs", "10", "--lr", "0.01",
                "--batch-size", "32", "--poison", "pixel", "--trigger-distance", "0", "--poison-target", "3",
                "--poison-rate", "0.1", "--out", str(model), "--quiet", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    card = json.loads((model / "card.json").read_text())
    record = card["metrics"]["backdoor"]
    eligible = int((load_dataset("digits", "train").y != 3).sum())
    assert record["eligible"] == eligible and record["poisoned"] == poisoned_count(0.1, eligible) == 102
    assert record["trigger"] == {"kind": "pixel", "distance": 0, "corner": "bottom-right"} and record["target"] == 3
    assert record["attack_success_rate"] > 0.9 and card["metrics"]["clean_accuracy"] > 0.95
    assert card["recipe"]["poison"]["rate"] == 0.1 and "Trained on poisoned data" in card["notes"][0]
    assert len(json.loads((model / "poison.json").read_text())["indices"]) == 102

    r = run_cli("backdoor", "scan", "--model", str(model), "--steps", "300", "--out", str(scan), "--quiet",
                env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    res = json.loads((scan / "results.json").read_text())
    assert res["kind"] == "backdoor" and res["analysis"] == "scan" and res["expected"]["label_map"]["target"] == 3
    assert res["cleanse"]["flagged_classes"] == [3] and res["cleanse"]["smallest_index"] > 2
    for method in ("spectral", "clustering"):
        found = res["data"][method]
        assert found["flagged_classes"] == [3] and found["poisoned"] == 102
        assert found["precision"] >= 0.95 and found["recall"] >= 0.6, found
    assert "Neural Cleanse found it" in r.stdout
    assert {"results.json", "suspects.json", "triggers.safetensors", "triggers.png", "norms.png",
            "suspects.png"} <= {p.name for p in scan.iterdir()}
    page = run_cli("report", str(scan))
    assert page.returncode == 0, page.stderr
    html = (scan / "report.html").read_text()
    assert "Backdoor scan" in html and "Neural Cleanse on 297 clean points" in html and "data:image/png" in html

    r = run_cli("backdoor", "repair", "--scan", str(scan), "--method", "retrain", "--out", str(tmp_path / "fixed"),
                "--quiet", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    fixed = json.loads((tmp_path / "fixed" / "results.json").read_text())
    suspects = json.loads((scan / "suspects.json").read_text())
    assert fixed["removed"] == len(set(suspects["spectral"]) | set(suspects["clustering"]))
    assert fixed["removed_score"]["precision"] >= 0.95
    assert fixed["after"]["attack_success_rate"] < fixed["before"]["attack_success_rate"] - 0.5
    assert fixed["after"]["clean_accuracy"] > 0.95 and (tmp_path / "fixed" / "model.safetensors").is_file()
    page = write_report(tmp_path / "fixed", None).read_text()
    assert "Backdoor repair (retrain)" in page and "attack success rate (real trigger)" in page
    assert "Retrained without" in page  # the new model's card says where it came from

    r = run_cli("backdoor", "repair", "--scan", str(scan), "--method", "unlearn", "--out", str(tmp_path / "unlearned"),
                "--quiet", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    unlearned = json.loads((tmp_path / "unlearned" / "results.json").read_text())
    assert unlearned["classes"] == [3] and unlearned["settings"]["epochs"] == 33  # 300 steps of 32 on 297 points
    assert unlearned["after"]["attack_success_rate"] < 0.2 < unlearned["before"]["attack_success_rate"]
    assert unlearned["after"]["reversed_asr"]["3"] < 0.2
    rounds = unlearned["rounds"]
    assert 1 <= len(rounds) <= 3 and [r_["round"] for r_ in rounds] == list(range(1, len(rounds) + 1))
    assert all(3 in r_["flagged_after"] for r_ in rounds[:-1])  # another round only while class 3 stays flagged
    assert "attack success rate (real trigger)" in r.stdout


def test_a_clean_model_scanned_alone_flags_nothing(tmp_path, digits_model, capsys):
    out = tmp_path / "scan"
    rc, err = _cli(capsys, "backdoor", "scan", "--model", str(digits_model), "--steps", "300", "--out", str(out),
                   "--quiet")
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["cleanse"]["flagged_classes"] == [] and res["cleanse"]["smallest_index"] < 2
    assert "data" not in res and res["sources"]["train"] is None and res["expected"] is None
    assert res["sources"]["clean"] == {"source": "builtin", "name": "digits", "split": "val"}
    assert not (out / "suspects.json").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--poison", "pattern", "--poison-rate", "1.5"], "argument --poison-rate: must be in (0, 1), e.g. 0.1; got 1.5"),
    (["--poison", "pattern", "--poison-rate", "0"], "argument --poison-rate: must be in (0, 1)"),
    (["--poison", "pattern", "--trigger-size", "9"], "--trigger-size 9 is larger than the 8 x 8 image; use at most 8"),
    (["--poison", "pixel", "--trigger-at", "3,8"], "--trigger-at 3,8 puts the 1 x 1 trigger outside the 8 x 8 image"),
    (["--poison", "pattern", "--poison-target", "12"], "--poison-target 12 is not a class of this data (0-9)"),
    (["--poison-rate", "0.1"], "--poison-rate needs --poison pattern, pixel or blend"),
    (["--poison", "pattern", "--trigger-alpha", "0.3"], "--poison pattern takes no --trigger-alpha"),
    (["--poison", "blend", "--trigger-image", "missing.npz"], "--trigger-image missing.npz: no such"),
    (["--poison", "blend", "--poison-map", "all-to-all", "--poison-target", "2"], "--poison-target is for"),
])
def test_bad_poisoning_flags_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    rc, err = _cli(capsys, "train", "--dataset", "digits", "--out", str(out), "--quiet", *flags)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.fixture
def mismatched(tmp_path) -> dict[str, Path]:
    """Data files a digits model cannot have been trained on."""
    digits = load_dataset("digits", "train").subset(50)
    files = {"labels": tmp_path / "labels.npz", "shape": tmp_path / "shape.npz"}
    np.savez(files["labels"], x=digits.x.numpy(), y=(np.arange(50) % 12))
    np.savez(files["shape"], x=np.zeros((50, 1, 28, 28), np.float32), y=np.arange(50) % 10)
    return files


def test_bad_scan_and_repair_input_is_one_line_and_writes_nothing(tmp_path, digits_model, mismatched, capsys):
    scan = tmp_path / "scan"
    rc, err = _cli(capsys, "backdoor", "scan", "--model", str(digits_model), "--methods", "cleanse", "--steps", "5",
                   "--out", str(scan), "--quiet")
    assert rc == 0, err
    model = str(digits_model)
    cases = [
        (["scan", "--model", model, "--data", str(mismatched["labels"])],
         "--data has labels up to 11 but the model has 10 classes (0-9); give the data the model was trained on"),
        (["scan", "--model", model, "--data", str(mismatched["shape"])],
         "--data holds inputs of shape (1, 28, 28) but the model takes (1, 8, 8)"),
        (["scan", "--model", model, "--clean-data", str(mismatched["labels"])], "--clean-data has labels up to 11"),
        (["scan", "--model", model, "--clean-data", str(mismatched["shape"])],
         "--clean-data: the model cannot take inputs of shape (1, 28, 28)"),
        (["scan", "--model", str(tmp_path / "nowhere")], "is not a model folder, a zoo name"),
        (["repair", "--scan", str(scan), "--method", "unlearn", "--target", "12"],
         "--target 12: the model has classes 0-9; choose one of them"),
        (["repair", "--scan", str(tmp_path)], "not a folder written by `squiggles backdoor scan`"),
        (["repair", "--scan", str(scan), "--method", "retrain"], "was a model-only scan: scan with --data"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        rc, err = _cli(capsys, "backdoor", *args, "--out", str(out), "--quiet")
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists(), args


def test_nothing_the_user_had_is_overwritten(tmp_path, digits_model, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"kind": "evaluation"}')
    rc, err = _cli(capsys, "backdoor", "scan", "--model", str(digits_model), "--out", str(mine), "--overwrite",
                   "--quiet")
    assert rc == 2 and "already exists" in err
    assert (mine / "results.json").read_text() == '{"kind": "evaluation"}'
    rc, err = _cli(capsys, "backdoor", "repair", "--scan", str(tmp_path), "--out", str(digits_model), "--quiet")
    assert rc == 2 and "already holds a model; use --overwrite" in err
