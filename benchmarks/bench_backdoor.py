"""Backdoors (issue 19) on MNIST: BadNets poisoning, data and model-only detection, repair; ART's ActivationDefence
on the same model and data for comparison. Every figure the issue asks for, in one JSON object.

Setting: ``--arch`` (small-cnn) trained by its recipe for ``--epochs`` on the 50,000 training images, 10% of the
eligible points poisoned with a 3 x 3 checkerboard one pixel in from the bottom-right corner, all-to-one.

* ``attack``: a clean model and a backdoored one (seed 0, target 0): clean accuracy of each on the 10,000 test
  images, the difference in points (target: within 0.3), and the attack success rate (target: >= 99%).
* ``data``: spectral signatures and activation clustering on the backdoored model's training set, with the
  validation split as the held-out clean data: precision and recall of the suspects (target: recall >= 95% at
  precision >= 90% for the better), and ART 1.20.1's ``ActivationDefence`` (2-means on 10 PCA dimensions of the
  last hidden layer, "smaller" cluster analysis, its defaults) on the same model and data.
* ``cleanse``: Neural Cleanse (on 1,000 validation images) on ``--n-models`` backdoored models (seeds 0..,
  targets ``--targets``) and as many clean ones (seeds 0..): each model's anomaly index (target: the true target
  flagged in at least 4 of 5 backdoored models, no class in at least 4 of 5 clean ones).
* ``repair``: retraining without the suspects (both detectors' union) and unlearning the reversed trigger: clean
  accuracy and ASR before and after (target: ASR <= 1% with clean accuracy within 0.5 points of the clean model).
* ``variants``: the all-to-all map (y -> y + 1) and a blended trigger (alpha 0.2 uniform noise, all-to-one):
  ASR, what each detector finds, and where detection fails.
* ``scan_seconds``: the whole scan's time for each model (target: at most 300 s on 2 cores).

Models are trained once into ``--models-dir`` and reused. Prints one JSON object (progress on stderr)::

    python benchmarks/bench_backdoor.py > benchmarks/results/backdoor-2026-12-08.json
    python benchmarks/bench_backdoor.py --quick        # a few hundred points and 1 epoch: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import library_versions, log, machine_info
from torch import nn

from squiggles.backdoor.cleanse import CleanseConfig
from squiggles.backdoor.detect import precision_recall
from squiggles.backdoor.poison import PoisonSpec, attack_success_rate, load_poisoning, poison_dataset
from squiggles.backdoor.repair import measure, retrain, unlearn
from squiggles.backdoor.scan import scan
from squiggles.checkpoints import WEIGHTS, load_model, read_card
from squiggles.data import Dataset, load_dataset
from squiggles.runtime import accuracy
from squiggles.train import TrainConfig, train_model
from squiggles.train.recipes import recipe_for

PATTERN = {"kind": "pattern", "size": 3, "distance": 1, "corner": "bottom-right"}
BLEND = {"kind": "blend", "alpha": 0.2, "seed": 0}


class Bench:
    """The data, the recipe and the model folder shared by every part."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        n = (600, 200, 300) if args.quick else (args.train_n, args.test_n, None)
        self.train = _cut(load_dataset("mnist", "train", progress=False), n[0])
        self.test = _cut(load_dataset("mnist", "test", progress=False), n[1])
        self.clean = _cut(load_dataset("mnist", "val", progress=False), n[2])
        recipe = recipe_for(args.arch, "standard")
        self.recipe = {"epochs": 1 if args.quick else args.epochs, "batch_size": recipe["batch_size"],
                       "lr": recipe["lr"]}
        self.dir = Path(args.models_dir or (tempfile.mkdtemp(prefix="bench-backdoor-") if args.quick else
                                            Path.home() / ".cache" / "squiggles" / "bench-models" / "backdoor"))
        self.cleanse = CleanseConfig(steps=30 if args.quick else args.steps)

    def config(self, seed: int, poison: dict[str, Any] | None) -> TrainConfig:
        return TrainConfig(arch=self.args.arch, dataset="mnist", seed=seed, poison=poison, **self.recipe)

    def model(self, name: str, seed: int, poison: dict[str, Any] | None) -> tuple[nn.Module, Path]:
        """A trained model, reused from an earlier run with the same recipe, data size and poisoning."""
        config = self.config(seed, poison)
        folder = self.dir / f"{self.args.arch}-e{self.recipe['epochs']}-n{len(self.train)}" / name
        if (folder / WEIGHTS).is_file() and _same(read_card(folder).recipe, config.to_dict()):
            log(f"reusing {folder}")
        else:
            log(f"training {name} into {folder}")
            train_model(config, folder, overwrite=True, progress=False, log=lambda m: None,
                        data=(self.train, self.test))
        return load_model(folder).eval(), folder

    def poisoned(self, poison: dict[str, Any]) -> tuple[Dataset, torch.Tensor]:
        data, done = poison_dataset(self.train, PoisonSpec.from_dict(poison))
        return data, done.indices

    def scan(self, model: nn.Module, train: Dataset | None = None, truth: torch.Tensor | None = None,
             seed: int = 0) -> tuple[Any, float]:
        start = time.perf_counter()
        result = scan(model, self.clean, train=train, truth=truth, cleanse_config=self.cleanse, seed=seed,
                      log=lambda m: log(f"  {m}"))
        return result, time.perf_counter() - start


def _cut(data: Dataset, n: int | None) -> Dataset:
    return data.subset(min(n, len(data))) if n else data


def _same(recipe: dict[str, Any], config: dict[str, Any]) -> bool:
    return all(recipe.get(k) == v for k, v in config.items() if k != "from_recipe")


def _spec(target: int | None, seed: int, trigger: dict[str, Any] = PATTERN, label_map: str = "all-to-one") -> dict:
    return PoisonSpec(trigger=trigger, label_map=label_map, target=target, rate=0.1, seed=seed).to_dict()


def _asr(model: nn.Module, b: Bench, poison: dict[str, Any]) -> float:
    spec = PoisonSpec.from_dict(poison)
    return attack_success_rate(model, b.test.x, b.test.y, spec.make_trigger(), spec.labels(), num_classes=10)[0]


def attack_part(b: Bench) -> dict[str, Any]:
    clean, _ = b.model("clean-s0", 0, None)
    bad, _ = b.model("pattern-t0-s0", 0, _spec(0, 0))
    acc_clean, acc_bad = accuracy(clean, b.test.x, b.test.y), accuracy(bad, b.test.x, b.test.y)
    asr = _asr(bad, b, _spec(0, 0))
    diff = 100 * (acc_clean - acc_bad)
    return {"clean_model_accuracy": acc_clean, "backdoored_accuracy": acc_bad, "difference_points": round(diff, 3),
            "attack_success_rate": asr, "clean_model_asr": _asr(clean, b, _spec(0, 0)),
            "meets": {"asr_at_least_99": asr >= 0.99, "accuracy_within_0.3": abs(diff) <= 0.3}}


def art_activation_defence(model: nn.Module, data: Dataset, truth: torch.Tensor) -> dict[str, Any]:
    """ART's ActivationDefence with its defaults, scored like ours."""
    try:
        from art.defences.detector.poison import ActivationDefence
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        return {"error": f"not installed: {exc}"}
    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(data.x.shape[1:]),
                            nb_classes=10, clip_values=data.bounds)
    onehot = np.eye(10, dtype=np.float32)[data.y.numpy()]
    out = {}
    # ART reads the output of the last layer it lists; for a PyTorch Sequential that is the logits. The second run
    # gives it the last hidden layer (the input of the last Linear), the features ours use.
    for name, classifier in (("defaults", clf), ("penultimate", _penultimate_classifier(clf))):
        start = time.perf_counter()
        defence = ActivationDefence(classifier, data.x.numpy(), onehot)
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
        seconds = time.perf_counter() - start
        suspects = torch.from_numpy(np.asarray(is_clean) == 0)
        out[name] = {"seconds": round(seconds, 2), "suspects": int(suspects.sum()), **precision_recall(suspects, truth)}
    return out


def _penultimate_classifier(clf: Any) -> Any:
    """The same ART classifier, answering activation queries with the layer before its last (a Sequential's last
    hidden activation)."""
    class Penultimate(type(clf)):  # type: ignore[misc]
        def get_activations(self, x: Any, layer: Any = None, batch_size: int = 128, framework: bool = False) -> Any:
            return super().get_activations(x, len(self.layer_names) - 2, batch_size, framework)

    clone = Penultimate.__new__(Penultimate)
    clone.__dict__.update(clf.__dict__)
    return clone


def data_part(b: Bench) -> tuple[dict[str, Any], Any]:
    bad, _ = b.model("pattern-t0-s0", 0, _spec(0, 0))
    train, truth = b.poisoned(_spec(0, 0))
    result, seconds = b.scan(bad, train, truth)
    ours = {m: result.summary["data"][m] for m in ("spectral", "clustering")}
    best = max(ours, key=lambda m: (ours[m]["recall"] or 0) if (ours[m]["precision"] or 0) >= 0.9 else -1)
    log("ART ActivationDefence on the same model and data")
    out = {"ours": ours, "better": best, "art_activation_defence": art_activation_defence(bad, train, truth),
           "scan_seconds": round(seconds, 2),
           "meets": {"recall_95_at_precision_90": (ours[best]["recall"] or 0) >= 0.95
                     and (ours[best]["precision"] or 0) >= 0.9}}
    return out, result


def cleanse_part(b: Bench) -> dict[str, Any]:
    rows = []
    for i, target in enumerate(b.args.targets[: b.args.n_models]):
        model, _ = b.model(f"pattern-t{target}-s{i}", i, _spec(target, i))
        result, seconds = b.scan(model, seed=i)
        nc = result.summary["cleanse"]
        rows.append({"model": f"backdoored seed {i} target {target}", "target": target,
                     "flagged": nc["flagged_classes"], "target_index": nc["classes"][target]["anomaly_index"],
                     "smallest_class": nc["smallest_class"], "smallest_class_index": nc["smallest_index"],
                     "scan_seconds": round(seconds, 2), "found": target in nc["flagged_classes"],
                     "asr": _asr(model, b, _spec(target, i))})
    for i in range(b.args.n_models):
        model, _ = b.model(f"clean-s{i}", i, None)
        result, seconds = b.scan(model, seed=i)
        nc = result.summary["cleanse"]
        rows.append({"model": f"clean seed {i}", "target": None, "flagged": nc["flagged_classes"],
                     "smallest_class": nc["smallest_class"], "smallest_class_index": nc["smallest_index"],
                     "scan_seconds": round(seconds, 2), "found": not nc["flagged_classes"]})
    found = sum(r["found"] for r in rows if r["target"] is not None)
    unflagged = sum(r["found"] for r in rows if r["target"] is None)
    n, need = b.args.n_models, b.args.n_models - 1
    return {"models": rows, "backdoored_found": found, "clean_unflagged": unflagged,
            "meets": {f"target_flagged_in_{need}_of_{n}": found >= need,
                      f"clean_unflagged_in_{need}_of_{n}": unflagged >= need}}


def repair_part(b: Bench, scanned: Any) -> dict[str, Any]:
    bad, folder = b.model("pattern-t0-s0", 0, _spec(0, 0))
    clean_model, _ = b.model("clean-s0", 0, None)
    clean_acc = accuracy(clean_model, b.test.x, b.test.y)
    record = load_poisoning(folder)
    real = (record["stamp"], record["labels"])
    before = measure(bad, b.test, real=real, reversed_=None, num_classes=10)
    train, _ = b.poisoned(_spec(0, 0))
    suspects = scanned.detections["spectral"].suspects | scanned.detections["clustering"].suspects
    out: dict[str, Any] = {"before": before, "clean_model_accuracy": clean_acc}
    with tempfile.TemporaryDirectory() as tmp:
        result, _ = retrain(b.config(0, None), train, b.test, suspects, Path(tmp) / "retrain", overwrite=True,
                            progress=False, log=lambda m: None)
        out["retrain"] = {"removed": int(suspects.sum()),
                          **measure(result.model, b.test, real=real, reversed_=None, num_classes=10)}
        nc = scanned.cleanse
        classes = nc.flagged or [min(range(10), key=lambda t: nc.norms[t])]
        tuned, _, rounds = unlearn(bad, b.clean, b.test, nc.masks, nc.patterns, classes, Path(tmp) / "unlearn",
                                   batch_size=32, cleanse=b.cleanse, log=lambda m: None)
        out["unlearn"] = {"classes": classes, "rounds": rounds,
                          **measure(tuned, b.test, real=real, reversed_=None, num_classes=10)}
    for key in ("retrain", "unlearn"):
        r = out[key]
        r["meets"] = {"asr_at_most_1": r["attack_success_rate"] <= 0.01,
                      "accuracy_within_0.5_of_clean": 100 * abs(clean_acc - r["clean_accuracy"]) <= 0.5}
    return out


def variants_part(b: Bench) -> dict[str, Any]:
    out = {}
    for name, poison in (("all-to-all", _spec(None, 0, PATTERN, "all-to-all")), ("blend", _spec(0, 0, BLEND))):
        model, _ = b.model(f"{name}-s0", 0, poison)
        train, truth = b.poisoned(poison)
        result, seconds = b.scan(model, train, truth)
        s = result.summary
        out[name] = {"clean_accuracy": accuracy(model, b.test.x, b.test.y),
                     "attack_success_rate": _asr(model, b, poison), "cleanse_flagged": s["cleanse"]["flagged_classes"],
                     "cleanse_smallest_index": s["cleanse"]["smallest_index"],
                     **{m: {k: s["data"][m][k] for k in ("flagged_classes", "suspects", "precision", "recall")}
                        for m in ("spectral", "clustering")}, "scan_seconds": round(seconds, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["attack", "data", "cleanse", "repair", "variants"])
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of every model (the recipe's lr and batch)")
    p.add_argument("--steps", type=int, default=600, help="Neural Cleanse steps")
    p.add_argument("--n-models", type=int, default=5, help="backdoored and clean models for Neural Cleanse")
    p.add_argument("--targets", type=int, nargs="+", default=[0, 3, 5, 7, 9])
    p.add_argument("--train-n", type=int, help="train on the first N training images only (default: all 50,000)")
    p.add_argument("--test-n", type=int, help="measure on the first N test images only (default: all 10,000)")
    p.add_argument("--models-dir", help="where models are trained and reused (default: a cache folder)")
    p.add_argument("--quick", action="store_true", help="600 training points, 1 epoch, 2 + 2 models: a smoke run")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.quick:
        args.n_models = min(args.n_models, 2)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    b = Bench(args)
    report: dict[str, Any] = {"benchmark": "backdoor", "machine": machine_info(args.threads),
                              "libraries": library_versions(), "quick": args.quick, "arch": args.arch,
                              "recipe": b.recipe, "points": {"train": len(b.train), "test": len(b.test),
                                                             "clean": len(b.clean)},
                              "cleanse": vars(b.cleanse)}
    if "attack" in args.parts:
        log("attack: clean and backdoored models")
        report["attack"] = attack_part(b)
    scanned = None
    if "data" in args.parts or "repair" in args.parts:
        log("data: spectral signatures, activation clustering, ART")
        report["data"], scanned = data_part(b)
    if "cleanse" in args.parts:
        log("cleanse: Neural Cleanse on backdoored and clean models")
        report["neural_cleanse"] = cleanse_part(b)
    if "repair" in args.parts:
        log("repair: retrain without the suspects; unlearn the reversed trigger")
        report["repair"] = repair_part(b, scanned)
    if "variants" in args.parts:
        log("variants: all-to-all and blend")
        report["variants"] = variants_part(b)
    seconds = [r["scan_seconds"] for r in (report.get("neural_cleanse") or {}).get("models", [])]
    seconds += [report["data"]["scan_seconds"]] if "data" in report else []
    seconds += [v["scan_seconds"] for v in (report.get("variants") or {}).values()]
    if seconds:  # model-only scans (Neural Cleanse) and full ones (with the 50,000 training points)
        report["scan_seconds_max"] = max(seconds)
        report["meets_scan_at_most_300_s"] = max(seconds) <= 300
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    report["machine_end"] = machine_info(args.threads).get("load_average_start")
    if args.quick and not args.models_dir:  # a smoke run's models are of no further use
        shutil.rmtree(b.dir, ignore_errors=True)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
