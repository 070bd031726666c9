"""The model zoo: registry, shipped weights found through SQUIGGLES_ZOO_DIR, `squiggles zoo`, and --model NAME.

The real zoo models are MNIST-sized, so a tiny entry (an MLP on digits, one epoch) stands in for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from squiggles.checkpoints import load_model, read_card
from squiggles.cli import main
from squiggles.cli.common import resolve_model
from squiggles.data import load_dataset
from squiggles.errors import SquigglesError
from squiggles.runtime import accuracy
from squiggles.zoo import (
    ENV_DIR,
    PACKAGED_DIR,
    ZOO,
    ZooEntry,
    card_command,
    compare,
    get_entry,
    is_shipped,
    list_entries,
    load_zoo_model,
    recipe_changes,
    register,
    reproduce,
    weights_dir,
    zoo_card,
)
from tests.conftest import run_cli

TINY = ZooEntry(
    "tiny-digits",
    "MLP on digits, one epoch: a stand-in for the real zoo",
    "standard",
    ("--model", "mlp", "--dataset", "digits", "--epochs", "1", "--lr", "0.01", "--batch-size", "32"),
)
NAMES = ["mnist-standard", "mnist-linf-0.3", "mnist-l2-2.0", "mnist-l2-observer-a", "mnist-l2-observer-b"]


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch) -> Path:
    """An empty SQUIGGLES_ZOO_DIR with the tiny entry registered (neither outlives the test)."""
    root = tmp_path / "zoo"
    monkeypatch.setenv(ENV_DIR, str(root))
    monkeypatch.setitem(ZOO, TINY.name, TINY)
    return root


@pytest.fixture(scope="module")
def shipped_tiny(tmp_path_factory) -> Path:
    """A zoo folder holding the tiny entry, trained once by `reproduce`, with a robust figure added to its card."""
    root = tmp_path_factory.mktemp("shipped-zoo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ZOO, TINY.name, TINY)
        reproduce(TINY.name, root / TINY.name, progress=False)
    card_path = root / TINY.name / "card.json"
    card = json.loads(card_path.read_text())
    card["metrics"].update(robust_accuracy=0.25, robust_eval={"norm": "linf", "eps": 0.1, "attacks": "fgsm"})
    card_path.write_text(json.dumps(card))
    (root / TINY.name / "checkpoint.safetensors").unlink()
    return root


@pytest.fixture
def shipped(shipped_tiny, monkeypatch) -> Path:
    monkeypatch.setenv(ENV_DIR, str(shipped_tiny))
    monkeypatch.setitem(ZOO, TINY.name, TINY)
    return shipped_tiny / TINY.name


def test_registry_holds_the_five_recipes():
    assert [e.name for e in list_entries()][:5] == NAMES
    assert [get_entry(n).role for n in NAMES] == ["standard", "linf-robust", "l2-robust", "observer", "observer"]
    linf = get_entry("mnist-linf-0.3").train_args
    assert linf == (
        "--model", "small-cnn", "--model-arg", "width=2", "--dataset", "mnist", "--method", "trades",
        "--attack-steps", "5", "--eps", "0.3", "--warmup", "0.3", "--lr", "2e-3", "--final-eval", "standard",
        "--epochs", "15",
    )  # fmt: skip
    a, b = get_entry("mnist-l2-observer-a").train_args, get_entry("mnist-l2-observer-b").train_args
    assert a[a.index("--method") + 1] == "pgd" and a[-2:] == ("--seed", "1")
    assert b[b.index("--model") + 1] == "mlp" and b[-2:] == ("--seed", "2")
    assert "--norm" in get_entry("mnist-l2-2.0").train_args
    assert all("--out" not in e.train_args for e in list_entries())
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_entry("mnist-standard").role = "x"  # type: ignore[misc]
    with pytest.raises(SquigglesError, match="already registered"):
        register(ZooEntry("mnist-standard", "again", "standard", ()))
    with pytest.raises(SquigglesError, match="leave --out out"):
        register(ZooEntry("with-out", "x", "standard", ("--out", "here")))
    assert "with-out" not in ZOO


def test_unknown_name_lists_the_zoo(capsys):
    with pytest.raises(SquigglesError, match="no zoo model called 'nope'; choose one of: mnist-standard, "):
        get_entry("nope")
    with pytest.raises(SquigglesError, match="squiggles zoo list"):
        weights_dir("nope")
    assert main(["zoo", "show", "nope"]) == 2
    assert "mnist-l2-observer-b" in capsys.readouterr().err


def test_not_shipped_says_how_to_reproduce(zoo_dir, capsys):
    assert not is_shipped(TINY.name) and weights_dir(TINY.name) == zoo_dir / TINY.name
    for fn in (load_zoo_model, zoo_card):
        with pytest.raises(SquigglesError, match="not in this build.*`squiggles zoo reproduce tiny-digits --out DIR`"):
            fn(TINY.name)
    (zoo_dir / TINY.name).mkdir(parents=True)
    (zoo_dir / TINY.name / "card.json").write_text("{}")
    assert not is_shipped(TINY.name), "a card without weights is not a shipped model"
    assert main(["zoo", "show", TINY.name]) == 0
    out = capsys.readouterr().out
    assert "squiggles train --model mlp --dataset digits --epochs 1 --lr 0.01 --batch-size 32 --out DIR" in out
    assert "not in this build" in out and "squiggles zoo reproduce tiny-digits --out DIR" in out
    assert main(["zoo", "show", TINY.name, "--json"]) == 2
    assert "not in this build" in capsys.readouterr().err


def test_env_dir_is_searched_before_the_package(shipped, monkeypatch, tmp_path):
    assert is_shipped(TINY.name) and weights_dir(TINY.name) == shipped
    assert zoo_card(TINY.name).arch == "mlp"
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "elsewhere"))
    assert not is_shipped(TINY.name)
    monkeypatch.delenv(ENV_DIR)
    assert weights_dir(TINY.name) == PACKAGED_DIR / TINY.name


def test_list_show_and_json_in_a_subprocess(shipped_tiny, tmp_path):
    # A subprocess cannot see an entry registered here, so the tiny model is shipped as "mnist-standard".
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "mnist-standard").symlink_to(shipped_tiny / TINY.name, target_is_directory=True)
    env = {ENV_DIR: str(root)}
    card = json.loads((shipped_tiny / TINY.name / "card.json").read_text())
    clean = f"{100 * card['metrics']['clean_accuracy']:.2f}%"

    listing = run_cli("zoo", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "SHIPPED", "CLEAN", "ROBUST", "SUMMARY"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows)[:5] == NAMES
    assert rows["mnist-standard"][1:5] == ["standard", "yes", clean, "25.00%"]
    assert rows["mnist-l2-2.0"][1] == "l2-robust"

    show = run_cli("zoo", "show", "mnist-standard", env=env)
    assert show.returncode == 0, show.stderr
    text = " ".join(show.stdout.split())
    assert text.startswith("mnist-standard (standard): Madry CNN")
    assert "arch: mlp" in text and "dataset: digits" in text
    assert "recipe: squiggles train --model mlp --dataset digits --batch-size 32 --lr 0.01 --out DIR" in text
    assert f"clean accuracy: {clean}" in text and "robust accuracy: 25.00%" in text
    assert f"wall time: {card['wall_time_s']} s" in text

    as_json = run_cli("zoo", "show", "mnist-standard", "--json", env=env)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == card


def test_reproduce_through_the_cli_compares_with_the_shipped_card(shipped, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["zoo", "reproduce", TINY.name, "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"reproduced {TINY.name} in {out}; compared with the shipped card" in text
    clean_row = next(line for line in text.splitlines() if "clean accuracy" in line)
    assert clean_row.split()[-2:] == ["+0.00", "pts"], "same recipe on CPU gives the same model"
    assert "robust accuracy" in text and "--norm linf --eps 0.1 --attacks fgsm" in text
    assert "recipe differs" not in text
    model, test = load_model(out), load_dataset("digits", "test")
    assert accuracy(model, test.x, test.y) == pytest.approx(read_card(out).metrics["clean_accuracy"])

    quick = tmp_path / "quick"
    assert main(["zoo", "reproduce", TINY.name, "--out", str(quick), "--epochs", "2", "--quiet"]) == 0
    assert "recipe differs from the shipped one (epochs 1 -> 2)" in capsys.readouterr().out


def test_reproduce_never_replaces_a_model(shipped, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_bytes(b"mine")
    assert main(["zoo", "reproduce", TINY.name, "--out", str(taken), "--quiet"]) == 2
    assert "already holds a model; reproduce never replaces one" in capsys.readouterr().err
    assert (taken / "model.safetensors").read_bytes() == b"mine"
    with pytest.raises(SquigglesError, match="'--overwrite' is not allowed"):
        reproduce(TINY.name, tmp_path / "new", extra_args=("--overwrite",))
    with pytest.raises(SquigglesError, match="'--out=x' is not allowed"):
        reproduce(TINY.name, tmp_path / "new", extra_args=("--out=x",))
    with pytest.raises(SquigglesError, match="unrecognized arguments: --overwr"):
        reproduce(TINY.name, tmp_path / "new", extra_args=("--overwr",))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(SquigglesError, match="pass --resume to continue it"):
        reproduce(TINY.name, unfinished)


def test_model_flag_takes_a_zoo_name(shipped, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval.json"
    args = ["--dataset", "digits", "--points", "40", "--eps", "0.1", "--attacks", "fgsm", "--no-checks", "--quiet"]
    assert main(["evaluate", "--model", TINY.name, *args, "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["model_card"]["arch"] == "mlp" and report["model_card"]["metrics"]["robust_accuracy"] == 0.25

    model, card = resolve_model(argparse.Namespace(model=TINY.name, model_arg=None, weights=None))
    assert card == zoo_card(TINY.name).to_dict() and not model.training
    # A folder of the same name is the user's and wins over the zoo.
    monkeypatch.chdir(tmp_path)
    own = reproduce(TINY.name, tmp_path / TINY.name, extra_args=("--seed", "5"), progress=False)
    assert resolve_model(argparse.Namespace(model=TINY.name, model_arg=None, weights=None))[1]["seed"] == 5
    assert own.name == TINY.name

    assert main(["evaluate", "--model", "nothing-here", *args, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "a zoo name (mnist-standard, " in err


def test_card_command_reruns_the_same_recipe(shipped, tmp_path):
    card = zoo_card(TINY.name)
    command = card_command(card, out=str(tmp_path / "rerun"))
    argv = shlex.split(command)
    assert argv[:2] == ["squiggles", "train"]
    assert main([*argv[1:], "--quiet"]) == 0
    rerun = read_card(tmp_path / "rerun")
    assert recipe_changes(card, rerun) == {}
    assert {k: v for k, v in rerun.recipe.items() if k != "from_recipe"} == \
        {k: v for k, v in card.recipe.items() if k != "from_recipe"}


def test_card_command_spells_out_what_the_architectures_recipe_would_change():
    # The zoo's L2 model was trained with Adam 1e-3: PGD's recipe would fill in 2e-3, so the command says 1e-3.
    command = card_command(zoo_card("mnist-l2-2.0"))
    assert "--lr 0.001" in command and "--warmup 0.3" in command
    old_pgd = {"arch": "small-cnn", "recipe": {"arch": "small-cnn", "dataset": "mnist", "method": "pgd",
                                                "method_options": {"eps": 0.3}, "epochs": 1, "lr": 0.002}}
    assert "--warmup 0.0" in card_command(old_pgd) and "--lr" not in card_command(old_pgd)


def test_compare_and_recipe_changes():
    shipped = {
        "arch": "mlp",
        "recipe": {"epochs": 8, "seed": 0},
        "metrics": {"clean_accuracy": 0.98, "robust_accuracy": 0.9},
    }
    new = {"arch": "mlp", "recipe": {"epochs": 1, "seed": 0}, "metrics": {"clean_accuracy": 0.95}}
    result = compare(shipped, new)
    assert result["clean_accuracy"] == {"shipped": 0.98, "reproduced": 0.95, "difference": -0.03}
    assert result["robust_accuracy"] == {"shipped": 0.9, "reproduced": None, "difference": None}
    assert "robust_accuracy" not in compare(new, new)
    assert recipe_changes(shipped, new) == {"epochs": (8, 1)}


def test_the_evaluate_hint_rebuilds_the_cards_threat():
    from squiggles.cli.zoo_cmd import _evaluate_hint

    linf = _evaluate_hint("runs/a", "mnist", {"robust_eval": {"norm": "linf", "eps": 0.3, "attacks": "quick"}})
    assert linf == ("squiggles evaluate --model runs/a --dataset mnist --norm linf --eps 0.3 --attacks quick "
                    "--out eval.json")
    box = {"norm": "spatial", "eps": 1.0, "points": 1000, "threat": {"max_rotation": 15, "max_translation": 2}}
    spatial = _evaluate_hint("runs/s", "mnist", {"robust_eval": box})
    assert spatial == ("squiggles evaluate --model runs/s --dataset mnist --threat spatial --max-rotation=15 "
                       "--max-translation=2 --n 1000 --out eval.json")
