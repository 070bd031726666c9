"""The zoo's registry: which models it holds, the recipe behind each, and where the shipped weights live.

A zoo model is an ordinary model folder (``model.safetensors`` + ``card.json``) stored in the package under
``squiggles/zoo/weights/<name>/``. ``SQUIGGLES_ZOO_DIR`` names a folder searched first, laid out the same
way (``$SQUIGGLES_ZOO_DIR/<name>/model.safetensors``): weights kept outside the package (a shared drive,
models being trained for the zoo, tests) are then found by every command and every process.

Example:
    >>> from squiggles.zoo import get_entry, train_command
    >>> get_entry("mnist-standard").role
    'standard'
    >>> train_command(get_entry("mnist-standard").train_args)
    'squiggles train --model madry-cnn --dataset mnist --epochs 2 --out DIR'
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from squiggles.checkpoints import CARD, WEIGHTS, ModelCard, load_model, read_card
from squiggles.errors import SquigglesError

ENV_DIR = "SQUIGGLES_ZOO_DIR"
PACKAGED_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: its name, what it is for, and the exact ``squiggles train`` arguments behind it.

    ``train_args`` leave out ``--out``; the figures to reproduce come from the shipped card's metrics
    (``clean_accuracy``, and ``robust_accuracy`` with ``robust_eval`` describing how it was measured).
    """

    name: str
    summary: str
    role: str
    train_args: tuple[str, ...]


def _args(line: str) -> tuple[str, ...]:
    """A recipe written as it is typed after ``squiggles train``."""
    return tuple(shlex.split(line))


# The L-inf budget and schedule of mnist-linf-0.3.
_LINF = "--eps 0.3 --warmup 0.3 --lr 2e-3 --final-eval standard"
# The fast-recipe candidate, chosen by a search on a GPU (README.md, Results): TRADES with 5 attack steps on a
# twice-as-wide small CNN reached 99.0% clean and 91.5% under the standard cascade (1,000 test points), 15 epochs.
_WIDE = "--model small-cnn --model-arg width=2"
# One copy of the L2 method and budget, shared by the L2-robust model and the observers.
_L2 = "--method pgd --norm l2 --eps 2.0 --attack-steps 10 --warmup 0.3"

ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    """Add ``entry`` to the zoo (refusing a name already taken, so a recipe is never silently replaced)."""
    if entry.name in ZOO:
        raise SquigglesError(f"zoo name {entry.name!r} is already registered; pick another name")
    if "--out" in entry.train_args:
        raise SquigglesError(f"zoo entry {entry.name!r}: leave --out out of train_args; reproduce() supplies it")
    ZOO[entry.name] = entry
    return entry


for _entry in (
    ZooEntry(
        "mnist-standard",
        "Madry CNN trained without attacks: high clean accuracy, no robustness",
        "standard",
        _args("--model madry-cnn --dataset mnist --epochs 2"),
    ),
    ZooEntry(
        "mnist-linf-0.3",
        "Small CNN (width 2), TRADES adversarial training at L-inf eps 0.3",
        "linf-robust",
        _args(f"{_WIDE} --dataset mnist --method trades --attack-steps 5 {_LINF} --epochs 15"),
    ),
    ZooEntry(
        "mnist-l2-2.0",
        "Small CNN, PGD adversarial training at L2 eps 2.0",
        "l2-robust",
        _args(f"--model small-cnn --dataset mnist {_L2} --epochs 8"),
    ),
    # The observers stand in for people in the demo's wormholes experiment: robust to the same kind of change
    # (L2) as the model whose perturbations they judge, but of another seed and, for one, another architecture.
    ZooEntry(
        "mnist-l2-observer-a",
        "Small CNN, PGD-10 at L2 eps 2.0, seed 1, 5 epochs: an independent observer for transfer checks",
        "observer",
        _args(f"--model small-cnn --dataset mnist {_L2} --epochs 5 --seed 1"),
    ),
    ZooEntry(
        "mnist-l2-observer-b",
        "MLP, PGD-10 at L2 eps 2.0, seed 2: an observer of a different architecture for transfer checks",
        "observer",
        _args(f"--model mlp --dataset mnist {_L2} --epochs 8 --seed 2"),
    ),
    # Rotations and shifts (Engstrom et al. 2019): the worst of 10 grid transforms per step, on a small CNN that
    # first moves each digit's centre of mass to the middle, so translations cost it nothing; the weights'
    # moving average generalises better than the last weights (chosen on validation: README, Results).
    ZooEntry(
        "mnist-spatial",
        "Small CNN (width 2) with Recenter, spatial training (worst of 10 grid rotations and shifts)",
        "spatial-robust",
        _args(f"{_WIDE} --model-arg recenter=true --dataset mnist --method spatial --warmup 0.2 --draw grid "
              "--epochs 12 --lr 2e-3 --ema 0.999"),
    ),
    # Base classifiers for randomized smoothing (Cohen et al. 2019): Gaussian noise augmentation at the sigma
    # they are certified with (`squiggles certify --method smoothing --sigma ...`).
    ZooEntry(
        "mnist-smooth-0.25",
        "Small CNN trained with Gaussian noise (sigma 0.25): the base classifier for randomized smoothing",
        "smoothing-base",
        _args("--model small-cnn --dataset mnist --method noise --sigma 0.25 --epochs 10 --lr 2e-3 --batch-size 128"),
    ),
    ZooEntry(
        "mnist-smooth-0.5",
        "Small CNN trained with Gaussian noise (sigma 0.5): the base classifier for randomized smoothing",
        "smoothing-base",
        _args("--model small-cnn --dataset mnist --method noise --sigma 0.5 --epochs 10 --lr 2e-3 --batch-size 128"),
    ),
    # Verified robustness (Gowal et al. 2018): interval-bound training at Linf 0.3 (trained at 0.33), certified by
    # `squiggles certify --method ibp --eps 0.3`.
    ZooEntry(
        "mnist-certified-0.3",
        "Small CNN (width 2), interval bound propagation (IBP) training at L-inf eps 0.3: verified, not only robust",
        "certified",
        _args(f"{_WIDE} --dataset mnist --method ibp --eps 0.3 --epochs 40 --lr 1e-3 --batch-size 100"),
    ),
):
    register(_entry)


def list_entries() -> list[ZooEntry]:
    """Every registered zoo entry, in registration order."""
    return list(ZOO.values())


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name is an error listing the zoo."""
    try:
        return ZOO[name]
    except KeyError:
        raise SquigglesError(
            f"no zoo model called {name!r}; choose one of: {', '.join(ZOO)} (see `squiggles zoo list`)"
        ) from None


def weights_dir(name: str) -> Path:
    """Folder holding ``name``'s weights and card: under ``$SQUIGGLES_ZOO_DIR`` if complete there, else packaged.

    When neither holds the model, the folder where it is expected first is returned.
    """
    get_entry(name)
    candidates = [Path(root) / name for root in _roots()]
    return next((c for c in candidates if _complete(c)), candidates[0])


def is_shipped(name: str) -> bool:
    """True when both ``model.safetensors`` and ``card.json`` of ``name`` are present."""
    return _complete(weights_dir(name))


def zoo_card(name: str) -> ModelCard:
    """The card shipped with ``name`` (an error saying how to reproduce it when it is not shipped)."""
    return read_card(_shipped_dir(name))


def load_zoo_model(name: str, device: str | torch.device | None = None) -> nn.Module:
    """The zoo model ``name`` in eval mode (on ``device`` if given).

    Example:
        >>> from squiggles.zoo import load_zoo_model   # doctest: +SKIP
        >>> model = load_zoo_model("mnist-linf-0.3")  # doctest: +SKIP
    """
    return load_model(_shipped_dir(name), device)


def train_command(train_args: Sequence[str], out: str = "DIR") -> str:
    """The shell command line that runs ``train_args`` into ``out``."""
    return shlex.join(["squiggles", "train", *train_args, "--out", out])


def _shipped_dir(name: str) -> Path:
    path = weights_dir(name)
    if not _complete(path):
        raise SquigglesError(
            f"the weights of zoo model {name!r} are not in this build (looked in {path}); "
            f"train them with `squiggles zoo reproduce {name} --out DIR`, then pass --model DIR"
        )
    return path


def _roots() -> list[Path]:
    extra = os.environ.get(ENV_DIR)
    return [Path(extra), PACKAGED_DIR] if extra else [PACKAGED_DIR]


def _complete(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / CARD).is_file()
