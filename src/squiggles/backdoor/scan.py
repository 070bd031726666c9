"""A backdoor scan: Neural Cleanse on the model with clean data, and, given the training data, spectral signatures
and activation clustering on its penultimate features; one JSON-ready results dict.

The data detectors also see held-out clean points (the clean data Neural Cleanse uses), which decide which group
of a class, if any, is poison (`squiggles.backdoor.detect`). When the truth is known (a model trained here with
``--poison`` keeps the poisoned indices beside it), the suspects are scored by precision and recall.

Example:
    >>> from squiggles.backdoor.scan import scan, training_data_of            # doctest: +SKIP
    >>> train, truth, expected = training_data_of("runs/badnets")
    >>> result = scan(model, clean=load_dataset("mnist", "val"), train=train, truth=truth)
    >>> result.summary["cleanse"]["flagged_classes"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.backdoor.cleanse import CleanseConfig, CleanseResult, neural_cleanse
from squiggles.backdoor.detect import DETECTORS, Detection, detect
from squiggles.errors import SquigglesError

METHODS = ("cleanse", *DETECTORS)
NAMES = {"cleanse": "Neural Cleanse", "spectral": "Spectral signatures", "clustering": "Activation clustering"}


@dataclass
class ScanResult:
    """What a scan found: Neural Cleanse's triggers and index, each data detector's suspects, the JSON summary."""

    cleanse: CleanseResult | None
    detections: dict[str, Detection]
    truth: Tensor | None
    summary: dict[str, Any] = field(default_factory=dict)


def penultimate_features(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """The input of the model's last ``nn.Linear`` for every row of ``x`` (on the model's device), batched."""
    from squiggles.monitor.ood import _penultimate

    device = next(iter(model.parameters())).device
    return torch.cat([_penultimate(model, b.to(device)).cpu() for b in x.split(batch_size)])


def num_classes_of(model: nn.Module, x: Tensor, flag: str = "--clean-data") -> int:
    """How many class scores the model gives (one forward pass on two inputs of ``x``); a one-line error naming
    ``flag`` when the model cannot take them."""
    from squiggles.runtime import predict

    try:
        out = predict(model, x[:2])
    except RuntimeError as exc:
        raise SquigglesError(f"{flag}: the model cannot take inputs of shape {tuple(x.shape[1:])} "
                             f"({str(exc).splitlines()[0]}); give data of the model's input shape") from None
    if out.dim() != 2:
        raise SquigglesError(f"the model gives outputs of shape {tuple(out.shape[1:])}, not one score per class")
    return int(out.shape[1])


def check_data(data: Any, num_classes: int, shape: tuple[int, ...], flag: str) -> None:
    """Labels of ``data`` must be classes of the model and its inputs of the model's shape; else a one-line error."""
    if tuple(data.x.shape[1:]) != tuple(shape):
        raise SquigglesError(f"{flag} holds inputs of shape {tuple(data.x.shape[1:])} but the model takes "
                             f"{tuple(shape)}; give the data the model was trained on")
    top = int(data.y.max()) if len(data.y) else -1
    if top >= num_classes:
        raise SquigglesError(f"{flag} has labels up to {top} but the model has {num_classes} classes (0-"
                             f"{num_classes - 1}); give the data the model was trained on")


def scan(model: nn.Module, clean: Any, *, train: Any | None = None, truth: Tensor | None = None,
         methods: tuple[str, ...] = METHODS, cleanse_config: CleanseConfig | None = None, cleanse_n: int = 1000,
         seed: int = 0, progress: bool = False, log: Callable[[str], None] = print) -> ScanResult:
    """Scan ``model`` (module doc). ``clean``: held-out clean data (a `Dataset`); ``train``: the training data to
    search for poison (skipped when None); ``truth``: its poisoned indices, when known; ``cleanse_n``: clean points
    Neural Cleanse optimises on."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SquigglesError(f"unknown scan method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    device = next(iter(model.parameters())).device
    k = num_classes_of(model, clean.x.to(device))
    check_data(clean, k, tuple(clean.x.shape[1:]), "--clean-data")
    if train is not None:
        check_data(train, k, tuple(clean.x.shape[1:]), "--data")
    result = ScanResult(None, {}, truth)
    summary: dict[str, Any] = {"num_classes": k, "clean_points": len(clean), "methods": list(methods)}
    if "cleanse" in methods:
        n = min(cleanse_n, len(clean))
        log(f"Neural Cleanse: reversing a trigger for each of {k} classes on {n} clean points")
        result.cleanse = neural_cleanse(model, clean.x[:n].to(device), clean.y[:n].to(device), k, bounds=clean.bounds,
                                        config=cleanse_config, seed=seed, progress=progress)
        summary["cleanse"] = {"points": n, **result.cleanse.summary()}
    detectors = [m for m in methods if m in DETECTORS]
    if train is not None and detectors:
        log(f"penultimate features of {len(train)} training and {len(clean)} clean points")
        feats, clean_feats = penultimate_features(model, train.x), penultimate_features(model, clean.x)
        summary["data"] = {"points": len(train), "truth_known": truth is not None}
        for method in detectors:
            det = detect(method, feats, train.y, num_classes=k, trusted=(clean_feats, clean.y), seed=seed)
            result.detections[method] = det
            summary["data"][method] = det.summary(truth)
            log(f"{NAMES[method]}: {int(det.suspects.sum())} suspects in classes {det.flagged() or 'none'} "
                f"({det.seconds:.1f} s)")
    summary["verdict"] = verdict(summary)
    result.summary = summary
    return result


def verdict(summary: dict[str, Any], expected: dict[str, Any] | None = None) -> list[str]:
    """Sentences saying what the scan found (and, when the poisoning is known, whether that was what it should)."""
    lines = []
    nc = summary.get("cleanse")
    if nc:
        top = nc["smallest_class"]
        if nc["flagged_classes"]:
            lines.append(f"Neural Cleanse flags class(es) {', '.join(map(str, nc['flagged_classes']))}: the smallest "
                         f"trigger (class {top}) has anomaly index {nc['smallest_index']:.2f} > 2, its L1 norm "
                         f"{nc['classes'][top]['mask_l1']:.1f} against a median of {nc['median_norm']:.1f}.")
        else:
            lines.append(f"Neural Cleanse flags no class: the smallest trigger (class {top}) has anomaly index "
                         f"{nc['smallest_index']:.2f}, not above 2.")
    for method in DETECTORS:
        d = (summary.get("data") or {}).get(method)
        if not d:
            continue
        found = (f"suspects {d['suspects']} training points in class(es) "
                 f"{', '.join(map(str, d['flagged_classes']))}" if d["flagged_classes"] else "suspects no point")
        score = ""
        if d.get("recall") is not None:
            p = "n/a" if d["precision"] is None else f"{100 * d['precision']:.1f}%"
            score = f" (precision {p}, recall {100 * d['recall']:.1f}% of the {d['poisoned']} poisoned points)"
        lines.append(f"{NAMES[method]} {found}{score}.")
    if expected:
        lines.append(expected_sentence(summary, expected))
    return lines


def expected_sentence(summary: dict[str, Any], expected: dict[str, Any]) -> str:
    """Whether Neural Cleanse found the target the model's card records."""
    label_map = expected.get("label_map") or {}
    if label_map.get("map") != "all-to-one":
        return ("The card records an all-to-all poisoning: every class is a target, so Neural Cleanse's one-outlier "
                "test is not expected to single one out.")
    target = label_map.get("target")
    flagged = (summary.get("cleanse") or {}).get("flagged_classes")
    if flagged is None:
        return f"The card records a backdoor to class {target}."
    hit = "found it" if target in flagged else "missed it"
    return f"The card records a backdoor to class {target}: Neural Cleanse {hit}."


def training_data_of(folder: str | Path) -> tuple[Any, Tensor, dict[str, Any]] | None:
    """For a model trained here with ``--poison``: its training set rebuilt (the same poisoned points, checked
    against ``poison.json``), the poisoned indices and what the card records; None for any other folder."""
    from squiggles.backdoor.poison import load_poisoning, poison
    from squiggles.checkpoints import read_card
    from squiggles.train.run import load_training_data

    folder = Path(folder)
    record = load_poisoning(folder) if folder.is_dir() else None
    if record is None:
        return None
    card = read_card(folder)
    train, _ = load_training_data(str(card.dataset), progress=False)
    spec = record["spec"]
    # The saved trigger stamps exactly what training stamped (a blend's image file may have moved since).
    done = poison(train.x, train.y, record["stamp"], spec.labels(), spec.rate, num_classes=train.num_classes,
                  bounds=train.bounds, seed=spec.seed)
    poisoned = type(train)(train.name, train.split, done.x, done.y, train.num_classes, train.bounds)
    if not torch.equal(done.indices.cpu(), record["indices"]):
        raise SquigglesError(f"{folder}: rebuilding the poisoned training set gave other points than poison.json "
                             "records (was the dataset changed?); pass the training data with --data")
    return poisoned, record["indices"], _expected(record)


def expected_of(folder: str | Path) -> dict[str, Any] | None:
    """What the card of a model trained here with ``--poison`` records (trigger, map, counts), else None."""
    from squiggles.backdoor.poison import load_poisoning

    record = load_poisoning(Path(folder)) if Path(folder).is_dir() else None
    return _expected(record) if record else None


def _expected(record: dict[str, Any]) -> dict[str, Any]:
    expected = {k: record[k] for k in ("trigger", "label_map", "poisoned", "eligible", "train_points") if k in record}
    return {**expected, "rate": record["spec"].rate}
