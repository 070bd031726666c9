"""Rerun a zoo recipe exactly as ``squiggles train`` would, and set the result beside the shipped card.

Example:
    >>> from squiggles.zoo import compare
    >>> shipped = {"arch": "mlp", "metrics": {"clean_accuracy": 0.98}}
    >>> compare(shipped, {"arch": "mlp", "metrics": {"clean_accuracy": 0.97}})
    {'clean_accuracy': {'shipped': 0.98, 'reproduced': 0.97, 'difference': -0.01}}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from squiggles.checkpoints import WEIGHTS, ModelCard
from squiggles.errors import SquigglesError
from squiggles.train.state import CHECKPOINT
from squiggles.zoo.registry import get_entry

FIGURES = ("clean_accuracy", "robust_accuracy")
# Flags reproduce() supplies or forbids itself: the output folder is its argument, and it never replaces a model.
_RESERVED = ("--out", "--overwrite")


def reproduce(name: str, out_dir: str | Path, *, extra_args: Sequence[str] = (), progress: bool = True) -> Path:
    """Train zoo model ``name`` from its recipe into ``out_dir`` (through ``squiggles train``) and return the folder.

    ``extra_args`` are further ``squiggles train`` flags; given after the recipe they win, so
    ``("--epochs", "1")`` makes a quick check. An existing model in ``out_dir`` is never replaced.

    Example:
        >>> from squiggles.zoo import reproduce   # doctest: +SKIP
        >>> reproduce("mnist-standard", "runs/mnist-standard", extra_args=("--epochs", "1"))  # doctest: +SKIP
    """
    entry = get_entry(name)
    out = Path(out_dir)
    _check_extra_args(extra_args)
    _refuse_to_replace(out, resume="--resume" in extra_args)
    argv = ["train", *entry.train_args, "--out", str(out), *extra_args, *([] if progress else ["--quiet"])]
    args = _train_parser().parse_args(argv)
    # train prints its one-line summary on stdout; a quiet reproduction should print nothing at all.
    with contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO()):
        args.run(args)
    return out


def compare(shipped: ModelCard | dict[str, Any], new: ModelCard | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Shipped vs reproduced clean accuracy (and robust accuracy when either card has it), with the difference.

    ``difference`` is reproduced minus shipped, or None when one side lacks the figure.
    """
    before, after = _metrics(shipped), _metrics(new)
    out: dict[str, dict[str, Any]] = {}
    for key in FIGURES:
        if key != "clean_accuracy" and key not in before and key not in after:
            continue
        s, r = before.get(key), after.get(key)
        diff = round(r - s, 6) if s is not None and r is not None else None
        out[key] = {"shipped": s, "reproduced": r, "difference": diff}
    return out


def recipe_changes(shipped: ModelCard | dict[str, Any], new: ModelCard | dict[str, Any]) -> dict[str, tuple]:
    """Recipe fields that differ between two cards, as ``field -> (shipped, new)``: why figures may not match."""
    a, b = _card(shipped).recipe, _card(new).recipe
    # Which settings came from the architecture's recipe rather than a flag is how a value was given, not what
    # it was.
    keys = [k for k in dict.fromkeys([*a, *b]) if k != "from_recipe"]
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def card_command(card: ModelCard | dict[str, Any], out: str = "DIR") -> str:
    """The ``squiggles train`` command line of a card's recipe, leaving out settings at their defaults.

    Example:
        >>> card_command({"arch": "mlp", "recipe": {"arch": "mlp", "dataset": "digits", "epochs": 3}})
        'squiggles train --model mlp --dataset digits --epochs 3 --out DIR'
    """
    from squiggles.train import TrainConfig
    from squiggles.train.recipes import TRAINER_KEYS, recipe_for

    card = _card(card)
    recipe = {"arch": card.arch, "dataset": card.dataset, **card.recipe}
    # What `squiggles train` fills in for a flag left out is the architecture's recipe, not TrainConfig's default:
    # a setting is left out only where the two agree.
    filled = recipe_for(card.arch, str(recipe.get("method", "standard")))
    defaults = {**TrainConfig().to_dict(), **{k: filled[k] for k in TRAINER_KEYS}}
    args = ["--model", str(recipe.pop("arch")), *_model_args(card.arch_kwargs), "--dataset", str(recipe.pop("dataset"))]
    for key, value in recipe.items():
        if key == "method_options":
            # A recipe that ramps eps in by default must be told when the card did not.
            options = value if "warmup" not in filled or "warmup" in value else {**value, "warmup": 0.0}
            args += _method_flags(options)
        elif key == "from_recipe":
            continue
        elif key == "guard":
            args += _guard_flags(value)
        elif key == "poison":
            args += _poison_flags(value)
        elif key not in defaults:
            continue  # a record beside the recipe (e.g. method_defaults), not a flag
        elif value is not None and value != defaults.get(key):
            flag = "--" + key.replace("_", "-")
            args += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(["squiggles", "train", *args, "--out", out])


class _RaisingParser(argparse.ArgumentParser):
    """train's own parser, but a bad flag raises instead of exiting, and flags must be spelt in full."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # so "--overwr" cannot slip past the reserved-flag check
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise SquigglesError(f"zoo recipe for squiggles train: {message}")


def _train_parser() -> argparse.ArgumentParser:
    # Reuse train's flag definitions and its run(), so a recipe means exactly what it means on the command line.
    from squiggles.cli import train_cmd

    parser = _RaisingParser(prog="squiggles")
    train_cmd.add_parser(parser.add_subparsers(dest="command", parser_class=_RaisingParser))
    return parser


def _check_extra_args(extra_args: Sequence[str]) -> None:
    for arg in extra_args:
        if arg.split("=", 1)[0] in _RESERVED:
            raise SquigglesError(
                f"extra argument {arg!r} is not allowed: reproduce writes into out_dir and never replaces a model"
            )


def _refuse_to_replace(out: Path, resume: bool) -> None:
    if resume:
        return
    if (out / WEIGHTS).exists():
        raise SquigglesError(f"{out} already holds a model; reproduce never replaces one: choose another --out folder")
    if (out / CHECKPOINT).exists():
        raise SquigglesError(
            f"{out} holds an unfinished training run; pass --resume to continue it, or choose another --out folder"
        )


def _model_args(arch_kwargs: dict[str, Any]) -> list[str]:
    # in_shape and num_classes come from the dataset when training; only the user's own options are flags.
    args = []
    for key, value in arch_kwargs.items():
        if key not in ("in_shape", "num_classes"):
            args += ["--model-arg", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return args


def _method_flags(options: dict[str, Any]) -> list[str]:
    from squiggles.cli.train_cmd import METHOD_FLAGS

    flag_of = {keyword: dest for dest, keyword in METHOD_FLAGS.items()}
    args = []
    for keyword, value in options.items():
        args += ["--" + flag_of.get(keyword, keyword).replace("_", "-"), str(value)]
    return args


def _guard_flags(guard: dict[str, Any] | None) -> list[str]:
    if not guard:
        return []
    if not guard.get("enabled", True):
        return ["--no-guard"]
    return ["--guard-n", str(guard["n"])] if guard.get("n", 256) != 256 else []


def _poison_flags(poison: dict[str, Any] | None) -> list[str]:
    """``squiggles train``'s flags for a card's poisoning (`squiggles.backdoor.poison.PoisonSpec` as a dict)."""
    if not poison:
        return []
    trigger = dict(poison.get("trigger") or {})
    args = ["--poison", str(trigger.pop("kind", "pattern")), "--poison-rate", str(poison.get("rate")),
            "--poison-seed", str(poison.get("seed"))]
    all_to_all = poison.get("label_map") == "all-to-all"
    args += ["--poison-map", "all-to-all"] if all_to_all else ["--poison-target", str(poison.get("target"))]
    trigger.pop("seed", None)  # a blend's noise is drawn with --poison-seed
    for key, value in trigger.items():
        args += [f"--trigger-{key}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return args


def _card(card: ModelCard | dict[str, Any]) -> ModelCard:
    return card if isinstance(card, ModelCard) else ModelCard.from_dict(dict(card))


def _metrics(card: ModelCard | dict[str, Any]) -> dict[str, Any]:
    return dict(_card(card).metrics)
