"""Repairing a backdoored model, and measuring it before and after.

- ``retrain``: train the model's recipe again, from scratch, on the training data with the suspected points
  removed (Tran et al. 2018 and Chen et al. 2018 both repair this way), through the one trainer
  (`squiggles.train.train_model`).
- ``unlearn``: from the model alone (Wang et al. 2019, Neural Cleanse, section VI-C): fine-tune it on clean data of
  which a share (20% by default, as the paper) wears the reversed trigger of the flagged class(es) while keeping its
  true labels, so the model learns that the trigger means nothing; through the one loop (`squiggles.train.fit`).
  Repeated: the *minimal* trigger Neural Cleanse finds is often only part of the real one (two or three of a 3 x 3
  pattern's pixels on MNIST), and unlearning that part leaves the rest working, so after each round the triggers are
  reversed again on the tuned model and another round runs while a class it unlearns is still flagged, at most
  ``rounds`` times (on the benchmark's BadNets model one round left 95% of the attack, two left 1.3%).

Both are judged on the test set by clean accuracy and the attack success rate: of the real trigger when it is known
(a model trained here with ``--poison``), and of the reversed one.

Example:
    >>> from squiggles.backdoor.repair import remove_points, unlearning_set     # doctest: +SKIP
    >>> kept = remove_points(train, suspects)
    >>> x, y = unlearning_set(clean.x, clean.y, masks, patterns, classes=[0], share=0.2, seed=0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.backdoor.triggers import LabelMap, Stamp, Trigger
from squiggles.errors import SquigglesError

REPAIRS = ("retrain", "unlearn")
UNLEARN_STEPS = 300  # fine-tuning steps unlearning takes by default; a smaller clean set gets more passes


def remove_points(data: Any, suspects: Tensor) -> Any:
    """``data`` (a `Dataset`) without the points where ``suspects`` (bool per point) is True."""
    from squiggles.data import Dataset

    keep = ~suspects.to(data.y.device).bool()
    if not keep.any():
        raise SquigglesError("every training point is suspected: nothing would be left to train on")
    return Dataset(data.name, data.split, data.x[keep], data.y[keep], data.num_classes, data.bounds)


def unlearning_set(x: Tensor, y: Tensor, masks: Tensor, patterns: Tensor, classes: list[int], *, share: float = 0.2,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """A copy of ``(x, y)`` with ``round(share * N)`` points, drawn by a seeded generator, wearing the reversed
    trigger of one of ``classes`` (in turn); every label stays the true one."""
    if not 0 < share < 1:
        raise SquigglesError(f"--share must be in (0, 1), e.g. 0.2; got {share}")
    if not classes:
        raise SquigglesError("no class to unlearn: the scan flagged none; name one with --target K or use "
                             "--method retrain")
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(len(x), generator=g)[: int(round(share * len(x)))].to(x.device)
    out = x.clone()
    for i, c in enumerate(classes):
        rows = pick[i :: len(classes)]
        m, p = masks[c].to(x), patterns[c].to(x)
        out[rows] = (1 - m) * x[rows] + m * p
    return out, y.clone()


def retrain(config: Any, train: Any, test: Any, suspects: Tensor, out: Path, **kwargs: Any) -> tuple[Any, Path]:
    """``config`` (a `TrainConfig`, without poisoning) trained on ``train`` minus ``suspects``; saved in ``out``."""
    from squiggles.train import train_model

    kept = remove_points(train, suspects)
    return train_model(config, out, data=(kept, test), **kwargs)


def unlearn_epochs(n: int, batch_size: int) -> int:
    """Enough passes over ``n`` clean points for `UNLEARN_STEPS` steps (one pass over 10,000 MNIST images at 32)."""
    return max(1, math.ceil(UNLEARN_STEPS * batch_size / n))


def unlearn(model: nn.Module, clean: Any, test: Any, masks: Tensor, patterns: Tensor, classes: list[int], out: Path, *,
            epochs: int | None = None, lr: float = 1e-3, batch_size: int = 32, share: float = 0.2, seed: int = 0,
            rounds: int = 3, cleanse: Any = None, cleanse_n: int = 1000, progress: bool = False,
            log: Callable[[str], None] = print) -> tuple[nn.Module, Any, list[dict[str, Any]]]:
    """A fine-tuned copy of ``model`` on ``clean`` with a ``share`` wearing reversed triggers (module doc), for
    ``epochs`` per round (default: `unlearn_epochs`), repeated with freshly reversed triggers while one of ``classes``
    stays flagged (at most ``rounds``); Neural Cleanse (``cleanse``, a `CleanseConfig`) runs on the first
    ``cleanse_n`` clean points. The loop's checkpoint goes to ``out`` and is removed after. Returns the model, the
    last round's `TrainResult` and one record per round."""
    from squiggles.backdoor.cleanse import neural_cleanse
    from squiggles.train import TrainConfig, fit
    from squiggles.train.state import CHECKPOINT

    if rounds < 1:
        raise SquigglesError(f"--rounds must be >= 1, got {rounds}")
    epochs = epochs or unlearn_epochs(len(clean), batch_size)
    tuned = copy.deepcopy(model)
    history: list[dict[str, Any]] = []
    k = masks.shape[0]
    for r in range(rounds):
        x, y = unlearning_set(clean.x, clean.y, masks, patterns, classes, share=share, seed=seed + r)
        config = TrainConfig(arch="unlearning", dataset=clean.name, epochs=epochs, lr=lr, batch_size=batch_size,
                             seed=seed + r)
        log(f"unlearning, round {r + 1}: fine-tuning on {len(x)} clean points, {int(round(share * len(x)))} wearing "
            f"the reversed trigger of class(es) {', '.join(map(str, classes))} with their true labels")
        result = fit(tuned.train(), x, y, test.x, test.y, config, out, bounds=clean.bounds, progress=progress, log=log)
        (Path(out) / CHECKPOINT).unlink(missing_ok=True)
        nc = neural_cleanse(tuned.eval(), clean.x[:cleanse_n], clean.y[:cleanse_n], k, bounds=clean.bounds,
                            config=cleanse, seed=seed + r + 1)
        still = [c for c in classes if c in nc.flagged]
        history.append({"round": r + 1, "test_accuracy": result.test_acc, "flagged_after": nc.flagged,
                        "anomaly_after": {str(c): nc.anomaly[c] for c in classes}})
        log(f"  round {r + 1}: test accuracy {100 * result.test_acc:.2f}%; Neural Cleanse now flags "
            f"{nc.flagged or 'no class'}")
        if not still:
            break
        masks, patterns = nc.masks, nc.patterns
    return tuned.eval(), result, history


def measure(model: nn.Module, test: Any, *, real: tuple[Trigger, LabelMap] | None,
            reversed_: tuple[Tensor, Tensor, list[int]] | None, num_classes: int) -> dict[str, Any]:
    """Clean accuracy on ``test``; ASR of the real trigger (when known) and of each reversed trigger (to its class)."""
    from squiggles.backdoor.poison import attack_success_rate
    from squiggles.runtime import accuracy

    row: dict[str, Any] = {"clean_accuracy": accuracy(model, test.x, test.y)}
    if real is not None:
        row["attack_success_rate"], row["asr_points"] = attack_success_rate(
            model, test.x, test.y, real[0], real[1], num_classes=num_classes, bounds=test.bounds)
    if reversed_ is not None:
        masks, patterns, classes = reversed_
        row["reversed_asr"] = {
            str(c): attack_success_rate(model, test.x, test.y, Stamp(masks[c], patterns[c]), LabelMap("all-to-one", c),
                                        num_classes=num_classes, bounds=test.bounds)[0] for c in classes}
    return row


def before_after(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The before/after table as rows: one per measure, with the change."""
    rows = []
    names = {"clean_accuracy": "clean accuracy", "attack_success_rate": "attack success rate (real trigger)"}
    for key, name in names.items():
        if key in before and key in after:
            rows.append({"measure": name, "before": before[key], "after": after[key],
                         "change": after[key] - before[key]})
    for c, value in (before.get("reversed_asr") or {}).items():
        new = (after.get("reversed_asr") or {}).get(c)
        if new is not None:
            rows.append({"measure": f"attack success rate (reversed trigger of class {c})", "before": value,
                         "after": new, "change": new - value})
    return rows
