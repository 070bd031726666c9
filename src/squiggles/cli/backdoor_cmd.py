"""``squiggles backdoor scan|repair``: look for a planted backdoor from the model alone (Neural Cleanse) and from its
training data (spectral signatures, activation clustering); then repair the model by retraining without the suspects
or by unlearning the reversed trigger, with a before/after table. Results JSON + figures; `squiggles report` renders
them."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from squiggles.cli.common import add_common, positive_float, positive_int, say
from squiggles.errors import SquigglesError

EXAMPLES = """examples:
  squiggles train --model small-cnn --poison pattern --poison-target 0 --out runs/badnets      # a backdoored model
  squiggles backdoor scan --model runs/badnets --out scans/badnets     # its poisoned training set, from its card
  squiggles backdoor scan --model mnist-standard --out scans/standard  # model only: Neural Cleanse
  squiggles backdoor scan --model runs/mine --data train.npz --clean-data heldout.npz --out scans/mine
  squiggles backdoor repair --scan scans/badnets --method retrain --out runs/badnets-repaired
  squiggles backdoor repair --scan scans/badnets --method unlearn --out runs/badnets-unlearned
  squiggles report scans/badnets
"""
SUSPECTS_FILE, TRIGGERS_FILE = "suspects.json", "triggers.safetensors"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from squiggles.backdoor.repair import REPAIRS, UNLEARN_STEPS
    from squiggles.backdoor.scan import METHODS

    p = sub.add_parser("backdoor", help="scan a model (and its training data) for a backdoor; repair it",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    s = actions.add_parser("scan", help="Neural Cleanse on the model; spectral signatures and activation clustering "
                           "on its training data")
    s.add_argument("--model", required=True, help="a model folder, a zoo name, or package.module:factory@weights")
    s.add_argument("--data", help="the training data to search for poisoned points: a built-in dataset (its train "
                   "split) or your .npz/.safetensors with x and y (default: for a model trained with --poison, its "
                   "training set rebuilt from the card; else none, model only)")
    s.add_argument("--clean-data", help="held-out clean data for Neural Cleanse and the detectors: a built-in dataset "
                   "(its val split) or a .npz/.safetensors (default: the val split of the model's dataset)")
    s.add_argument("--methods", nargs="+", choices=METHODS, help=f"default: all of {', '.join(METHODS)}")
    s.add_argument("--n", "--points", dest="n", type=positive_int, default=1000,
                   help="clean points Neural Cleanse optimises on (default 1000)")
    s.add_argument("--steps", type=positive_int, default=600, help="Neural Cleanse's optimisation steps (default 600)")
    s.add_argument("--batch-size", type=positive_int, default=32, help="clean inputs per class per step (default 32)")
    s.add_argument("--data-dir", help="folder with the dataset's files, when they cannot be fetched")
    s.add_argument("--out", required=True, help="output folder: results.json, suspects.json, triggers, figures")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier backdoor scan in --out")
    add_common(s)
    s.set_defaults(run=run_scan)
    r = actions.add_parser("repair", help="retrain without the suspects, or unlearn the reversed trigger")
    r.add_argument("--scan", required=True, help="a folder written by `squiggles backdoor scan`")
    r.add_argument("--method", choices=REPAIRS, default="retrain",
                   help="retrain: the model's recipe on the data without the suspects (needs a scan with data); "
                   "unlearn: fine-tune on clean data, a share wearing the reversed trigger (default: retrain)")
    r.add_argument("--suspects", choices=("union", "spectral", "clustering"), default="union",
                   help="retrain: whose suspects to remove (default: union, both detectors')")
    r.add_argument("--target", type=int, nargs="+", help="unlearn: the class(es) whose reversed trigger to unlearn "
                   "(default: those Neural Cleanse flagged)")
    r.add_argument("--rounds", type=positive_int, default=3, help="unlearn: at most this many rounds of reversing the "
                   "trigger again and unlearning it, while the class stays flagged (default 3)")
    r.add_argument("--share", type=positive_float, default=0.2, help="unlearn: share of clean points wearing the "
                   "reversed trigger (default 0.2, as Wang et al.)")
    r.add_argument("--epochs", type=positive_int, help="default: the model's recipe (retrain); unlearn: enough "
                   f"passes over the clean data for {UNLEARN_STEPS} steps (one on 10,000 MNIST images)")
    r.add_argument("--lr", type=positive_float, help="default: the model's recipe (retrain), 1e-3 (unlearn)")
    r.add_argument("--batch-size", type=positive_int, help="default: the model's recipe (retrain), 32 (unlearn)")
    r.add_argument("--test-data", help="test set for before/after (default: the dataset's test split)")
    r.add_argument("--out", required=True, help="output folder for the repaired model (model.safetensors, card.json) "
                   "and results.json with the before/after table")
    r.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    add_common(r)
    r.set_defaults(run=run_repair)


# --- data and models from the flags ----------------------------------------------------------------------------


def _load(ref: str, split: str, flag: str, data_dir: str | None = None) -> tuple[Any, dict[str, Any]]:
    """A built-in dataset's ``split`` or a user's file, and how to load it again."""
    from squiggles.data import DATASETS, is_builtin, load_dataset, load_tensors

    if is_builtin(ref):
        return load_dataset(ref, split, data_dir=data_dir, progress=False), {"source": "builtin", "name": ref,
                                                                             "split": split}
    if ref.endswith((".npz", ".safetensors")) or Path(ref).is_file():
        return load_tensors(ref), {"source": "file", "path": str(Path(ref).resolve())}
    raise SquigglesError(f"{flag} {ref!r} is not a built-in dataset ({', '.join(DATASETS)}) or a .npz/.safetensors "
                         "file with x and y")


def _reload(record: dict[str, Any] | None) -> tuple[Any, Any]:
    """The data a scan recorded, loaded again, and its poisoned indices when known."""
    from squiggles.backdoor.scan import training_data_of

    if not record:
        return None, None
    if record["source"] == "card":
        rebuilt = training_data_of(record["model"])
        if rebuilt is None:
            raise SquigglesError(f"{record['model']} no longer holds poison.json; scan it again")
        return rebuilt[0], rebuilt[1]
    ref = record["name"] if record["source"] == "builtin" else record["path"]
    return _load(ref, record.get("split", "train"), "--scan data")[0], None


def _model(ref: str, out: Path, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from squiggles.demo.models import load_ref
    from squiggles.runtime import resolve_device

    return load_ref(ref, out / "models", retrain=False, device=resolve_device(args.device),
                    log=lambda m: say(args, m), progress=not args.quiet)


def _check_out(out: Path, overwrite: bool, analysis: str) -> None:
    """Refuse, before any work, an --out holding anything but an earlier backdoor run of this kind."""
    results = out / "results.json"
    if results.exists():
        try:
            old = json.loads(results.read_text())
        except (OSError, ValueError):
            old = {}
        if not overwrite or old.get("kind") != "backdoor" or old.get("analysis") != analysis:
            raise SquigglesError(f"{results} already exists; use --overwrite (for an earlier backdoor {analysis}) "
                                 "or another --out")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SquigglesError(f"--out {out} is a non-empty folder; give a new folder or --overwrite")
    elif out.exists() and not out.is_dir():
        raise SquigglesError(f"--out {out} is a file; give a folder")


def _finish(out: Path, result: dict[str, Any], start: float, files: list[str]) -> None:
    from squiggles._io import versions, write_json

    write_json(out / "results.json", {"kind": "backdoor", **result, "files": files,
                                      "wall_time_s": round(time.perf_counter() - start, 2), "versions": versions()})


# --- scan ----------------------------------------------------------------------------------------------------


def run_scan(args: argparse.Namespace) -> int:
    from squiggles._io import ensure_writable_dir
    from squiggles.backdoor.cleanse import CleanseConfig
    from squiggles.backdoor.scan import METHODS, expected_of, scan, training_data_of, verdict

    start = time.perf_counter()
    out = Path(args.out)
    _check_out(out, args.overwrite, "scan")
    model, source = _model(args.model, out, args)
    card = source.get("card") or {}
    truth, train_record, train = None, None, None
    expected = expected_of(args.model) if source["kind"] == "folder" else None
    if args.data:  # the user's data: what was poisoned in it is unknown here
        train, train_record = _load(args.data, "train", "--data", args.data_dir)
    elif source["kind"] == "folder" and (rebuilt := training_data_of(args.model)) is not None:
        train, truth, expected = rebuilt
        train_record = {"source": "card", "model": str(Path(args.model).resolve())}
    clean_ref = args.clean_data or (card.get("dataset") if card.get("dataset") else None)
    if clean_ref is None:
        raise SquigglesError("Neural Cleanse needs held-out clean data: give --clean-data (a built-in dataset or a "
                             ".npz/.safetensors file)")
    clean, clean_record = _load(clean_ref, "val", "--clean-data", args.data_dir)
    if clean_record["source"] == "file" and not args.clean_data:  # the card's own file: it held training data
        raise SquigglesError(f"the model was trained on {clean_ref}; give held-out clean data with --clean-data")
    methods = tuple(dict.fromkeys(args.methods or METHODS))
    result = scan(model, clean, train=train, truth=truth, methods=methods, seed=args.seed, progress=not args.quiet,
                  cleanse_config=CleanseConfig(steps=args.steps, batch_size=args.batch_size), cleanse_n=args.n,
                  log=lambda m: say(args, m))
    summary = result.summary
    summary["verdict"] = verdict(summary, expected)
    ensure_writable_dir(out)
    files = _scan_files(out, result, train, clean, truth, expected, args.model)
    for line in summary["verdict"]:
        print(line)
    _finish(out, {"analysis": "scan", "model": {"ref": args.model, "kind": source["kind"]},
                  "sources": {"train": train_record, "clean": clean_record}, "expected": expected, "seed": args.seed,
                  **summary}, start, files)
    say(args, f"results in {out / 'results.json'} (render with: squiggles report {out}; repair with: squiggles "
        f"backdoor repair --scan {out} --out NEW)")
    return 0


def _scan_files(out: Path, result: Any, train: Any, clean: Any, truth: Any, expected: dict | None,
                model_ref: str) -> list[str]:
    from squiggles._io import write_json, write_safetensors
    from squiggles.backdoor.figures import first_of_class, norms_figure, suspects_figure, trigger_figure
    from squiggles.backdoor.poison import load_poisoning

    files = []
    if result.detections:
        write_json(out / SUSPECTS_FILE,
                   {m: d.suspects.nonzero().flatten().tolist() for m, d in result.detections.items()})
        files.append(SUSPECTS_FILE)
        suspects_figure(out / "suspects.png", train.x, train.y, result.detections, train.bounds, truth)
        files.append("suspects.png")
    nc = result.cleanse
    if nc is not None:
        write_safetensors(out / TRIGGERS_FILE, {"masks": nc.masks, "patterns": nc.patterns})
        files.append(TRIGGERS_FILE)
        record = load_poisoning(Path(model_ref)) if Path(model_ref).is_dir() else None
        real = record["stamp"].stamp(tuple(clean.x.shape[1:]), clean.bounds) if record else None
        target = (expected or {}).get("label_map", {}).get("target")
        example = first_of_class(clean.x, clean.y, avoid=target)
        trigger_figure(out / "triggers.png", nc.masks, nc.patterns, result.summary["cleanse"], clean.bounds, real,
                       example)
        norms_figure(out / "norms.png", result.summary["cleanse"], target)
        files += ["triggers.png", "norms.png"]
    return files


# --- repair --------------------------------------------------------------------------------------------------


def run_repair(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from squiggles.backdoor.poison import load_poisoning
    from squiggles.backdoor.repair import before_after, measure
    from squiggles.backdoor.scan import num_classes_of

    start = time.perf_counter()
    out = Path(args.out)
    _check_repair_out(out, args.overwrite)
    scanned = _read_scan(Path(args.scan))
    model, source = _model(scanned["model"]["ref"], Path(args.scan), args)
    card = source.get("card") or {"arch": scanned["model"]["ref"].split("@")[0]}
    clean, _ = _reload(scanned["sources"]["clean"])
    k = num_classes_of(model, clean.x.to(next(model.parameters()).device))
    for t in args.target or []:
        if not 0 <= t < k:
            raise SquigglesError(f"--target {t}: the model has classes 0-{k - 1}; choose one of them")
    test = _test_set(args, card)
    triggers = load_file(str(Path(args.scan) / TRIGGERS_FILE)) if (Path(args.scan) / TRIGGERS_FILE).is_file() else None
    classes = list(args.target or (scanned.get("cleanse") or {}).get("flagged_classes") or [])
    if args.method == "unlearn" and not classes:
        raise SquigglesError("no class to unlearn: the scan flagged none; name one with --target K or use "
                             "--method retrain")
    ref = scanned["model"]["ref"]
    record = load_poisoning(Path(ref)) if Path(ref).is_dir() else None
    real = (record["stamp"], record["labels"]) if record else None
    rev = (triggers["masks"], triggers["patterns"], classes) if triggers is not None and classes else None
    say(args, "measuring the model before repair")
    before = measure(model, test, real=real, reversed_=rev, num_classes=k)
    if args.method == "retrain":
        repaired, details = _retrain(args, scanned, card, test, out)
    else:
        if triggers is None:
            raise SquigglesError(f"{args.scan} holds no reversed triggers (scan without cleanse); scan again with "
                                 "Neural Cleanse, or use --method retrain")
        repaired, details = _unlearn(args, model, clean, test, triggers, classes, card, out)
    after = measure(repaired.to(next(model.parameters()).device), test, real=real, reversed_=rev, num_classes=k)
    table = before_after(before, after)
    for row in table:
        print(f"{row['measure']}: {100 * row['before']:.2f}% -> {100 * row['after']:.2f}%")
    _finish(out, {"analysis": "repair", "method": args.method, "scan": str(Path(args.scan).resolve()),
                  "model": scanned["model"], "before": before, "after": after, "table": table, **details,
                  "seed": args.seed}, start, [])
    return 0


def _check_repair_out(out: Path, overwrite: bool) -> None:
    from squiggles.checkpoints import WEIGHTS

    if out.exists() and not out.is_dir():
        raise SquigglesError(f"--out {out} is a file; give a folder")
    if (out / WEIGHTS).exists() and not overwrite:
        raise SquigglesError(f"{out} already holds a model; use --overwrite to replace it, or another --out folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SquigglesError(f"--out {out} is a non-empty folder; give a new folder or --overwrite")


def _read_scan(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        data = {}
    if data.get("kind") != "backdoor" or data.get("analysis") != "scan":
        raise SquigglesError(f"--scan {folder}: not a folder written by `squiggles backdoor scan`")
    return data


def _test_set(args: argparse.Namespace, card: dict[str, Any]) -> Any:
    from squiggles.data import is_builtin
    from squiggles.train.run import load_training_data

    if args.test_data:
        return _load(args.test_data, "test", "--test-data")[0]
    dataset = card.get("dataset")
    if dataset and (is_builtin(dataset) or Path(dataset).is_file()):
        return load_training_data(dataset, progress=False)[1]
    raise SquigglesError("no test set for the before/after table: give --test-data FILE")


def _retrain(args: argparse.Namespace, scanned: dict[str, Any], card: dict[str, Any], test: Any,
             out: Path) -> tuple[Any, dict[str, Any]]:
    import torch

    from squiggles._io import write_json
    from squiggles.backdoor.repair import retrain
    from squiggles.checkpoints import CARD, read_card
    from squiggles.train import TrainConfig
    from squiggles.train.recipes import fill

    train, truth = _reload(scanned["sources"].get("train"))
    if train is None:
        raise SquigglesError(f"{args.scan} was a model-only scan: scan with --data to retrain without suspects, or "
                             "use --method unlearn")
    lists = json.loads((Path(args.scan) / SUSPECTS_FILE).read_text())
    chosen = [m for m in ("spectral", "clustering") if m in lists and args.suspects in (m, "union")]
    if not chosen:
        raise SquigglesError(f"--suspects {args.suspects}: the scan did not run that detector")
    suspects = torch.zeros(len(train), dtype=torch.bool)
    for m in chosen:
        suspects[torch.tensor(lists[m], dtype=torch.long)] = True
    recipe = dict(card.get("recipe") or {})
    arch = card.get("arch") or recipe.get("arch")
    method = str(recipe.get("method") or "standard")
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    values, _ = fill(str(arch), method, {k: v if v is not None else recipe.get(k) for k, v in given.items()})
    # The model's own recipe again (its method included), only without the poisoning and the suspects.
    keys = ("method", "method_options", "optimizer", "momentum", "weight_decay", "schedule", "milestones", "precision",
            "ema")
    keep = {k: recipe[k] for k in keys if recipe.get(k) is not None}
    config = TrainConfig(arch=str(arch), dataset=str(card.get("dataset") or train.name), seed=args.seed, **keep,
                         **values)
    say(args, f"retraining {arch} on {len(train) - int(suspects.sum())} points ({int(suspects.sum())} suspects "
        f"removed, {args.suspects})")
    result, folder = retrain(config, train, test, suspects, out, arch_kwargs=card.get("arch_kwargs"),
                             device=args.device, overwrite=args.overwrite, progress=not args.quiet,
                             log=lambda m: say(args, m))
    details: dict[str, Any] = {"removed": int(suspects.sum()), "suspects": args.suspects, "recipe": config.to_dict()}
    if truth is not None:
        from squiggles.backdoor.detect import precision_recall

        details["removed_score"] = precision_recall(suspects, truth)
    new_card = read_card(folder)
    new_card.notes.append(f"Retrained without {details['removed']} points suspected by the backdoor scan {args.scan}.")
    write_json(folder / CARD, new_card.to_dict())
    return result.model, details


def _unlearn(args: argparse.Namespace, model: Any, clean: Any, test: Any, triggers: dict[str, Any], classes: list[int],
             card: dict[str, Any], out: Path) -> tuple[Any, dict[str, Any]]:
    from squiggles._io import ensure_writable_dir
    from squiggles.backdoor.repair import unlearn, unlearn_epochs
    from squiggles.checkpoints import ModelCard, save_model

    batch = args.batch_size or 32
    epochs = args.epochs or unlearn_epochs(len(clean), batch)
    settings = {"epochs": epochs, "lr": args.lr or 1e-3, "batch_size": batch, "share": args.share, "seed": args.seed}
    ensure_writable_dir(out)
    tuned, result, history = unlearn(model, clean, test, triggers["masks"], triggers["patterns"], classes, out,
                                     rounds=args.rounds, progress=not args.quiet, log=lambda m: say(args, m),
                                     **settings)
    new_card = ModelCard(arch=str(card.get("arch")), arch_kwargs=dict(card.get("arch_kwargs") or {}),
                         dataset=card.get("dataset"), bounds=tuple(card.get("bounds") or clean.bounds),
                         recipe={"repair": "unlearn", "classes": classes, "rounds": len(history), **settings},
                         metrics={"clean_accuracy": result.test_acc}, seed=args.seed,
                         notes=[f"Unlearned the reversed trigger(s) of class(es) {classes} found by the backdoor scan "
                                f"{args.scan}, starting from {card.get('arch')} weights."])
    save_model(tuned.cpu(), out, new_card, overwrite=True)
    return tuned, {"classes": classes, "settings": settings, "rounds": history}
