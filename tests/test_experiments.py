"""The experiment framework: settings, the results folder, the command line (each experiment has its own file)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from squiggles.errors import SquigglesError
from squiggles.experiments import EXPERIMENTS, get_experiment, make_config
from squiggles.experiments.base import apply_overrides, check_out
from tests.conftest import run_cli


@dataclass
class _Config:
    n: int = 100
    eps: float = 0.25
    dims: list[int] = field(default_factory=lambda: [50, 100])
    name: str = "a"
    flag: bool = True


def test_overrides_take_the_kind_of_the_default():
    config = apply_overrides(_Config(), {"n": 7, "eps": 1, "dims": 20, "name": 3, "flag": False})
    assert config == _Config(n=7, eps=1.0, dims=[20], name="3", flag=False)
    assert apply_overrides(_Config(), {"dims": [1, 2.0]}).dims == [1, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 3}, "unknown setting(s) steps; this experiment takes: n, eps, dims, name, flag"),
        ({"n": 2.5}, "setting n=2.5 does not fit its default 100"),
        ({"flag": "yes"}, 'setting flag="yes" does not fit its default true'),
        ({"eps": "big"}, 'setting eps="big" does not fit its default 0.25'),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(SquigglesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(_Config(), overrides)


def test_every_experiment_has_the_contract():
    for name in EXPERIMENTS:
        module = get_experiment(name)
        assert module.NAME == name and module.TITLE and "arXiv" in module.PAPER
        assert make_config(name, quick=True) != make_config(name)  # --quick changes something
    with pytest.raises(SquigglesError, match="unknown experiment 'nope'; choose one of: fgsm-linear"):
        get_experiment("nope")


def test_a_folder_holding_something_else_is_refused(tmp_path):
    check_out(tmp_path / "new", "spheres")  # absent: fine
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(SquigglesError, match="is not empty and holds no earlier spheres run"):
        check_out(tmp_path, "spheres")
    (tmp_path / "results.json").write_text(json.dumps({"kind": "experiment", "name": "transfer"}))
    with pytest.raises(SquigglesError, match="holds no earlier spheres run"):
        check_out(tmp_path, "spheres")
    (tmp_path / "results.json").write_text(json.dumps({"kind": "experiment", "name": "spheres"}))
    check_out(tmp_path, "spheres")
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_cli_lists_the_experiments_and_refuses_bad_input(tmp_path):
    listing = run_cli("experiment", "list")
    assert listing.returncode == 0
    assert all(name in listing.stdout for name in EXPERIMENTS) and "arXiv 1801.02774" in listing.stdout
    bad = run_cli("experiment", "spheres", "--set", "nope=1", "--out", str(tmp_path / "a"))
    assert bad.returncode == 2 and "unknown setting(s) nope" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("experiment", "spheres", "--model", "mnist-standard", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "spheres takes no --model" in bad.stderr
    bad = run_cli("experiment", "spheres", "--set", "oops", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr
    assert not (tmp_path / "a").exists()  # refused before any work or folder
    bad = run_cli("experiment", "fgsm-linear", "--quick", "--dataset", "nope", "--out", str(tmp_path / "d"))
    assert bad.returncode == 2 and "unknown dataset 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "d").exists()  # the refused run leaves no empty folder behind


def test_an_experiment_page_in_a_real_browser(tmp_path):
    from test_report_browser import check_page_in_browser, require_browser

    from squiggles.experiments import run_experiment

    require_browser()
    results = run_experiment("spheres", tmp_path / "spheres", quick=True, progress=False, log=lambda m: None)
    seen = check_page_in_browser(Path(results["report"]), tmp_path / "spheres.png")
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    assert len(seen["image_widths"]) == len(results["figures"]) >= 3 and min(seen["image_widths"]) > 0
    assert seen["distinct_colours"] > 10
