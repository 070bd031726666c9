"""``squiggles monitor``: each analysis end to end through a subprocess, and bad input."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import run_cli


def test_corruptions_end_to_end(tmp_path, digits_model):
    out = tmp_path / "c"
    r = run_cli("monitor", "corruptions", "--model", str(digits_model), "--dataset", "digits", "--n", "60",
                "--corruptions", "fog", "stripe", "canny_edges", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "monitor" and res["analysis"] == "corruptions" and res["n"] == 60
    row = res["rows"][0]
    assert set(row["errors"]) == {"fog", "stripe", "canny_edges"}
    assert row["mean_error"] == sum(row["errors"].values()) / 3
    assert {"corruptions.png", "examples.png"} <= {p.name for p in out.iterdir()}
    assert "mean corruption error" in r.stdout
    page = run_cli("report", str(out))
    assert page.returncode == 0, page.stderr
    assert "Error per corruption" in (out / "report.html").read_text()


def test_ood_end_to_end_with_a_users_set(tmp_path, digits_model):
    outliers = tmp_path / "mine.npz"
    np.savez(outliers, x=np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32))
    out = tmp_path / "o"
    r = run_cli("monitor", "ood", "--model", str(digits_model), "--dataset", "digits", "--n", "80",
                "--ood", "uniform", "letters", str(outliers), "--methods", "msp", "ensemble", "--out", str(out),
                "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert {(row["method"], row["ood"]) for row in res["rows"]} == {
        (m, s) for m in ("msp", "ensemble") for s in ("uniform", "letters", "mine")}
    assert all(0 <= row["auroc"] <= 1 for row in res["rows"]) and res["best"][0]["method"] in ("msp", "ensemble")
    assert res["n_out"]["mine"] == 40
    assert "best detector" in r.stdout


def test_calibration_end_to_end(tmp_path, digits_model):
    out = tmp_path / "k"
    r = run_cli("monitor", "calibration", "--model", str(digits_model), "--dataset", "digits", "--bins", "5",
                "--shift-n", "50", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    row = res["rows"][0]
    assert row["predictions_changed"] == 0 and row["temperature"] > 0
    assert row["after"]["ece"] >= 0 and row["before"]["nll"] > 0
    assert {r_["severity"] for r_ in res["shift_summary"]} == {1, 2, 3, 4, 5}
    assert {"reliability.png", "shift.png"} <= {p.name for p in out.iterdir()}


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, digits_model, capsys, monkeypatch):
    from squiggles.cli import main

    monkeypatch.setenv("SQUIGGLES_OFFLINE", "1")
    cases = [
        (["corruptions", "--corruptions", "snow"], "unknown corruption 'snow'"),
        (["corruptions", "--severity", "6"], "--severity must be 1 to 5"),
        (["ood", "--ood", "fashion-mnist"], "shape (1, 28, 28) but the model takes (1, 8, 8)"),
        (["calibration", "--n", "50"], "too few for 15 calibration bins"),
        (["calibration", "--shift-n", "20"], "give more points (--shift-n)"),
    ]
    for args, message in cases:
        out = tmp_path / args[0]
        code = main(["monitor", *args, "--model", str(digits_model), "--dataset", "digits", "--out", str(out),
                     "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    # The same through a subprocess: exit code 2 and one line, as a user sees it.
    r = run_cli("monitor", "corruptions", "--corruptions", "snow", "--model", str(digits_model), "--dataset", "digits",
                "--out", str(tmp_path / "sub"), "--quiet")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "sub").exists()


def test_an_earlier_result_is_never_replaced_without_overwrite(tmp_path, digits_model):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "results.json").write_text('{"kind": "evaluation"}')
    r = run_cli("monitor", "calibration", "--model", str(digits_model), "--dataset", "digits", "--no-shift",
                "--out", str(out), "--overwrite", "--quiet")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert json.loads((out / "results.json").read_text()) == {"kind": "evaluation"}
