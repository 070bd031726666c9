"""From a recipe to a saved model: load data, build the model under the seed, fit, write weights and card."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from squiggles._io import ensure_writable_dir
from squiggles.checkpoints import WEIGHTS, ModelCard, load_weights, save_model
from squiggles.data import Dataset, load_dataset, load_tensors
from squiggles.distributed import barrier, rank_world
from squiggles.errors import SquigglesError
from squiggles.evaluation.ensembles import ENSEMBLES
from squiggles.models import build_model, is_import_path
from squiggles.runtime import resolve_device
from squiggles.train.loop import Logger, TrainConfig, TrainResult, fit
from squiggles.train.methods import method_defaults
from squiggles.train.state import CHECKPOINT
from squiggles.train.verdict import verdict


def load_training_data(
    dataset: str, test_dataset: str | None = None, data_dir: str | None = None, progress: bool = True
) -> tuple[Dataset, Dataset]:
    """Train and test sets: a built-in dataset's train/test splits, or the user's tensor files.

    A user's file with no separate test file is split: its last 10% is held out for testing.
    """
    if _is_file(dataset):
        train = load_tensors(dataset)
        if test_dataset is None:
            cut = len(train) - max(1, len(train) // 10)
            return train.subset(cut), train.subset(len(train) - cut, start=cut)
        return train, load_tensors(test_dataset)
    train = load_dataset(dataset, "train", data_dir=data_dir, progress=progress)
    test = (
        load_tensors(test_dataset)
        if test_dataset
        else load_dataset(dataset, "test", data_dir=data_dir, progress=progress)
    )
    return train, test


def build_seeded(
    arch: str, data: Dataset, seed: int, arch_kwargs: dict[str, Any] | None = None, init_weights: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``arch`` for ``data``'s shape with weights drawn from ``seed``, leaving the global RNG as it was."""
    kwargs = dict(arch_kwargs or {})
    if not is_import_path(arch):
        kwargs = {"in_shape": list(data.x.shape[1:]), "num_classes": data.num_classes, **kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, **{k: tuple(v) if k == "in_shape" else v for k, v in kwargs.items()})
    if init_weights:
        load_weights(model, init_weights)
    return model, kwargs


def train_model(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    test_dataset: str | None = None,
    data_dir: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    init_weights: str | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    final_eval: str | None = "auto",
    final_eval_n: int = 1000,
    progress: bool = True,
    log: Logger = print,
    data: tuple[Dataset, Dataset] | None = None,
) -> tuple[TrainResult, Path]:
    """Train a model from ``config`` and save it (weights + card) in ``out_dir``.

    ``final_eval``: the evaluation cascade (``"quick"``, ``"standard"``) whose robust accuracy on the first
    ``final_eval_n`` test points, at the training threat model, goes into the card; ``"auto"`` is ``"quick"``
    for adversarial methods and none for standard training; None skips it.
    ``data``: train and test sets to use instead of loading ``config.dataset`` (which the card still names).
    ``config.poison``: poison the training set first (`squiggles.backdoor.poison`); the card then records the
    clean accuracy and the attack success rate on the test set, and ``poison.json`` and ``trigger.safetensors``
    beside the model keep the poisoned points and the trigger.

    Example:
        >>> from squiggles.train import TrainConfig, train_model   # doctest: +SKIP
        >>> result, path = train_model(TrainConfig(arch="small-cnn", dataset="digits", epochs=2), "runs/digits")
    """
    config.validate()  # before the folder is made: a refused run leaves nothing behind
    out = Path(out_dir)
    if not resume and not overwrite and ((out / WEIGHTS).exists() or (out / CHECKPOINT).exists()):
        raise SquigglesError(
            f"{out} already holds a model or checkpoint; use --resume to continue it, "
            "--overwrite to replace it, or another --out folder"
        )
    train, test = data if data is not None else load_training_data(config.dataset, test_dataset, data_dir, progress)
    poisoning = _poison(config, train)  # also before the folder: a trigger or target that does not fit is refused
    if poisoning is not None:
        train = poisoning[0]
        log(f"poisoned {len(poisoning[1].indices)} of {len(train)} training points ({_poison_line(config.poison)})")
    out = ensure_writable_dir(out)
    if config.from_recipe:
        log(_recipe_line(config))
    model, kwargs = build_seeded(config.arch, train, config.seed, arch_kwargs, init_weights)
    model.to(resolve_device(device))
    full_test = test
    if config.eval_n is not None:
        test = test.subset(min(config.eval_n, len(test)))
    result = fit(
        model,
        train.x,
        train.y,
        test.x,
        test.y,
        config,
        out,
        resume=resume,
        bounds=train.bounds,
        progress=progress,
        log=log,
    )
    metrics: dict[str, Any] = {
        "clean_accuracy": result.test_acc,
        "test_points": len(test),
        "history": [dataclasses.asdict(h) for h in result.history],
    }
    if result.guard is not None:
        metrics["guard"] = result.guard
    ensemble = _final_ensemble(final_eval, config)
    if ensemble:
        metrics.update(robust_metrics(model, full_test, config, ensemble, final_eval_n, train.bounds, progress, log))
    if poisoning is not None:
        metrics["backdoor"] = _backdoor_metrics(model, full_test, config, poisoning[1], log)
        metrics["attack_success_rate"] = metrics["backdoor"]["attack_success_rate"]
    metrics["warnings"] = verdict(metrics, config.method)
    for warning in metrics["warnings"]:
        log(f"warning: {warning}")
    result.warnings = metrics["warnings"]
    card = ModelCard(
        arch=config.arch,
        arch_kwargs=kwargs,
        dataset=config.dataset,
        bounds=train.bounds,
        # What the recipe means where it says nothing (attack mode, steps, step size...), recorded beside it.
        recipe={**config.to_dict(), "method_defaults": method_defaults(config.method)},
        seed=config.seed,
        wall_time_s=round(result.wall_time_s, 2),
        metrics=metrics,
        notes=[f"Trained on poisoned data: {_poison_line(config.poison)}; poison.json beside the model lists the "
               "poisoned points (squiggles backdoor scan reads it)."] if poisoning is not None else [],
    )
    if rank_world()[0] == 0:  # under torchrun every process holds the same model; one writes it
        save_model(model.cpu(), out, card, overwrite=True)
        if poisoning is not None:
            _save_poisoning(out, config, poisoning[1], train)
    barrier()
    return result, out


def _poison(config: TrainConfig, train: Dataset) -> tuple[Dataset, Any] | None:
    """The poisoned training set and what was done (`squiggles.backdoor.poison.Poisoned`), or None."""
    if not config.poison:
        return None
    from squiggles.backdoor.poison import PoisonSpec, poison_dataset

    return poison_dataset(train, PoisonSpec.from_dict(config.poison))


def _poison_line(poison: dict[str, Any] | None) -> str:
    from squiggles.backdoor.poison import PoisonSpec

    spec = PoisonSpec.from_dict(poison or {})
    where = f"to class {spec.target}" if spec.label_map == "all-to-one" else "y -> y + 1"
    return f"{spec.trigger.get('kind')} trigger, {spec.label_map} ({where}), rate {spec.rate:g}, seed {spec.seed}"


def _backdoor_metrics(model: nn.Module, test: Dataset, config: TrainConfig, poisoned: Any, log: Logger) -> dict:
    """The card's record of the poisoning, with the clean accuracy and attack success rate on the test set."""
    from squiggles.backdoor.poison import PoisonSpec, attack_success_rate
    from squiggles.runtime import accuracy

    spec = PoisonSpec.from_dict(config.poison or {})
    trigger, labels = spec.make_trigger(), spec.labels()
    asr, n = attack_success_rate(model, test.x, test.y, trigger, labels, num_classes=test.num_classes,
                                 bounds=test.bounds)
    clean = accuracy(model, test.x, test.y)
    log(f"backdoor: attack success rate {asr:.4f} on {n} stamped test points; clean accuracy {clean:.4f}")
    return {"trigger": trigger.describe(), **labels.describe(), "rate": spec.rate, "seed": spec.seed,
            "poisoned": len(poisoned.indices), "eligible": poisoned.eligible, "clean_accuracy": clean,
            "attack_success_rate": asr, "asr_points": n, "files": ["poison.json", "trigger.safetensors"]}


def _save_poisoning(out: Path, config: TrainConfig, poisoned: Any, train: Dataset) -> None:
    from squiggles.backdoor.poison import PoisonSpec, save_poisoning

    spec = PoisonSpec.from_dict(config.poison or {})
    save_poisoning(out, spec, poisoned, spec.make_trigger(), tuple(train.x.shape[1:]), train.bounds, len(train))


def _recipe_line(config: TrainConfig) -> str:
    values = {**config.to_dict(), **config.method_options}
    shown = ", ".join(f"{k.replace('_', ' ')} {values[k]:g}" for k in config.from_recipe if k in values)
    return f"recipe for {config.arch} ({config.method}): {shown} (squiggles.train.recipes; flags you give win)"


def _final_ensemble(final_eval: str | None, config: TrainConfig) -> str | None:
    from squiggles.train.certified import SMOOTHING

    if final_eval == "auto":  # a noise-trained model is measured by `squiggles certify`, not by an Linf attack
        return None if config.method in ("standard", *SMOOTHING) else "quick"
    if final_eval not in (None, "none", *ENSEMBLES):
        raise SquigglesError(f"unknown final evaluation {final_eval!r}; choose auto, none, {', '.join(ENSEMBLES)}")
    return None if final_eval in (None, "none") else final_eval


def robust_metrics(
    model: nn.Module,
    test: Dataset,
    config: TrainConfig,
    ensemble: str,
    n: int,
    bounds: tuple[float, float],
    progress: bool,
    log: Logger,
) -> dict[str, Any]:
    """Robust accuracy by the evaluation cascade on the first ``n`` held-out test points, for the card."""
    from squiggles.evaluation import evaluate
    from squiggles.threat import make_threat
    from squiggles.train.methods import method_threat

    opts = {**method_defaults(config.method), **config.method_options}
    threat = method_threat(config.method, config.method_options, bounds)
    if threat is None:  # standard training: the card reports the usual Linf question
        threat = make_threat(opts.get("norm", "linf"), opts.get("eps", 0.3), bounds)
    n = min(n, len(test))
    log(f"final evaluation: {ensemble} cascade at {threat} on the first {n} test points")
    res = evaluate(
        model, (test.x[:n], test.y[:n]), threat, ensemble, seed=config.seed, keep_adv=False, progress=progress
    )
    log(f"robust accuracy {res.robust_accuracy:.4f} (clean {res.clean_accuracy:.4f}) on {n} test points")
    return {
        "robust_accuracy": res.robust_accuracy,
        "robust_eval": {
            "attacks": ensemble,
            "norm": threat.name,
            "eps": float(threat.eps),
            "points": n,
            "clean_accuracy": res.clean_accuracy,
            "breakdown": res.breakdown(0),
            "flags": res.flags,
            "seed": config.seed,
            "threat": threat.describe(),  # the whole threat (a spatial box is more than its eps)
        },
    }


def _is_file(name: str) -> bool:
    return name.endswith((".npz", ".safetensors")) or Path(name).is_file()
