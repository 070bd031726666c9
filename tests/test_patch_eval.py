"""The per-image patch threat: `patch_attack`, ``evaluate --threat patch`` and ``squiggles attack --attack patch``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squiggles.attacks.patch import patch_attack
from squiggles.errors import SquigglesError
from squiggles.evaluation import evaluate
from squiggles.patches import PatchArea
from tests.conftest import run_cli


def _data(n: int = 16, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)


class Corner(nn.Module):
    """Reads only the 2 x 2 block at the bottom-right corner: only a patch placed there can change its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        torch.manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x[:, 0, -2:, -2:].flatten(1)) * 20


def test_the_patch_changes_one_square_of_the_area_in_bounds_and_reports_its_corner():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 3))
    x, y = _data()
    res = patch_attack(model, x, y, PatchArea(0.09), steps=10, restarts=2)
    changed = (res.x_adv != x)[:, 0]
    assert (changed.flatten(1).sum(1) <= 9).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    for i in range(len(x)):
        r, c = res.params[i].long().tolist()
        outside = changed[i].clone()
        outside[r : r + 3, c : c + 3] = False
        assert not outside.any(), "nothing outside the reported 3 x 3 square changes"
    assert torch.allclose(res.norms, torch.full((len(x),), 0.09))


def test_saliency_finds_the_only_region_the_model_reads_and_restarts_only_add_successes():
    model = Corner()
    x, y = _data(24)
    y = model(x).argmax(1)  # every point starts correct
    salient = patch_attack(model, x, y, PatchArea(0.04), placement="saliency", steps=40)
    assert salient.success.all() and (salient.params == 8).all(), "the 2 x 2 patch goes on the corner block"
    one = patch_attack(model, x, y, PatchArea(0.04), placement="random", steps=40, restarts=1, seed=3)
    more = patch_attack(model, x, y, PatchArea(0.04), placement="random", steps=40, restarts=6, seed=3)
    assert (one.success <= more.success).all() and more.success.sum() > one.success.sum()


def test_a_budget_under_one_pixel_changes_nothing_and_bad_options_are_refused():
    model = Corner()
    x, y = _data(5)
    res = patch_attack(model, x, y, PatchArea(0.005))
    assert torch.equal(res.x_adv, x) and (res.norms == 0).all()
    assert torch.equal(res.success, model(x).argmax(1) != y)
    with pytest.raises(SquigglesError, match="placement must be 'saliency' or 'random'"):
        patch_attack(model, x, y, PatchArea(0.04), placement="best")
    with pytest.raises(SquigglesError, match="--patch-area is a fraction of the image in"):
        PatchArea(1.5)
    with pytest.raises(SquigglesError, match="needs images shaped N x C x H x W"):
        patch_attack(nn.Linear(6, 3), torch.rand(3, 6), None, PatchArea(0.1))


def test_patch_evaluation_is_monotone_in_the_area_and_the_worst_case_of_its_stages():
    model = Corner()
    x, y = _data(30)
    res = evaluate(model, (x, y), PatchArea(0.04), eps=[0, 0.01, 0.04], progress=False)
    curve = [c["robust_accuracy"] for c in res.curve()]
    assert curve[0] == res.clean_accuracy and curve[0] >= curve[1] >= curve[2]
    assert curve[2] == 0.0, "a 2 x 2 patch over the corner block breaks every point"
    assert [s["name"] for s in res.stages] == ["salient", "random-8"] and res.flags == []
    assert res.config["threat"]["threat"] == "patch"


def test_evaluate_threat_patch_from_the_cli(digits_model, tmp_path):
    out = tmp_path / "patch.json"
    res = run_cli("evaluate", "--model", str(digits_model), "--dataset", "digits", "--n", "40", "--threat", "patch",
                  "--patch-area", "0.05", "0.1", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["eps"] == [0.05, 0.1] and report["config"]["threat"]["norm"] == "patch"
    curve = [c["robust_accuracy"] for c in report["curve"]]
    assert curve[0] >= curve[1] and curve[0] <= report["clean_accuracy"]
    assert out.with_suffix(".curve.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threat", "patch"], "--threat patch needs --patch-area"),
        (["--threat", "patch", "--patch-area", "1.5"], "--patch-area is a fraction of the image in [0, 1]"),
        (["--threat", "patch", "--patch-area", "0.1", "--eps", "0.3"], "takes its budget from --patch-area"),
        (["--eps", "0.1", "--patch-area", "0.1"], "--patch-area is for --threat patch"),
        (["--threat", "patch", "--patch-area", "0.1", "--attacks", "apgd-ce"], "does not run under --threat patch"),
        (["--threat", "patch", "--patch-area", "0.01"], "less than one pixel of these 8 x 8 images"),
    ],
)
def test_evaluate_patch_bad_input_exits_2_and_writes_nothing(digits_model, tmp_path, capsys, extra, message):
    from squiggles.cli import main  # in process: these fail before any work, so a subprocess would only add start-up

    out = tmp_path / "sub" / "e.json"
    code = main(["evaluate", "--model", str(digits_model), "--dataset", "digits", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_patch_from_the_attack_command(digits_model, tmp_path):
    from safetensors.torch import load_file

    from squiggles.data import load_dataset

    out = tmp_path / "p"
    res = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--n", "20", "--attack", "patch",
                  "--patch-area", "0.1", "--restarts", "2", "--steps", "20", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    t = load_file(str(out / "adversarial.safetensors"))
    clean = load_dataset("digits", "test").x[:20]
    assert ((t["x_adv"] != clean).flatten(1).sum(1) <= 4).all() and t["params"].shape == (20, 2)
    assert json.loads((out / "summary.json").read_text())["threat"]["eps"] == 0.1
    bad = run_cli("attack", "--model", str(digits_model), "--dataset", "digits", "--attack", "patch",
                  "--patch-area", "0.001", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "less than one pixel" in bad.stderr and not (tmp_path / "b").exists()
