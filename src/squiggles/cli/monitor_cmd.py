"""``squiggles monitor corruptions|ood|calibration``: how models fare on the long tail, what they should not trust,
and whether their confidence means anything; one or several models on the same points, results JSON + figures."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from squiggles._io import ensure_writable_dir
from squiggles.cli.common import add_common, positive_int, say
from squiggles.errors import SquigglesError

EXAMPLES = """examples:
  squiggles monitor corruptions --model mnist-standard --model mnist-linf-0.3 --model mnist-l2-2.0 --out mon/c
  squiggles monitor ood --model mnist-standard --ood fashion-mnist gaussian uniform letters --out mon/ood
  squiggles monitor ood --model runs/mine --ood my-outliers.npz --methods msp ensemble --out mon/mine
  squiggles monitor calibration --model mnist-standard --model mnist-linf-0.3 --out mon/cal
  squiggles report mon/ood                               # one page with the tables and figures
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from squiggles.monitor.ood import METHODS
    from squiggles.monitor.oodsets import BUILTIN

    p = sub.add_parser("monitor", help="corruptions (MNIST-C), out-of-distribution detection, calibration",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    msub = p.add_subparsers(dest="monitor_command", metavar="ANALYSIS", required=True, parser_class=type(p))
    c = msub.add_parser("corruptions", help="error under each MNIST-C corruption, mean corruption error, heat map")
    _common(c)
    c.add_argument("--corruptions", nargs="+", metavar="NAME", help="a subset of the 15 (default: all)")
    c.add_argument("--severity", type=int, help="1-5 for the 11 corruptions with a scale (the others have one "
                   "setting); default: each corruption at the severity of the published set")
    c.set_defaults(run=run_corruptions)
    o = msub.add_parser("ood", help="detect out-of-distribution inputs and misclassifications (AUROC, AUPR, FPR95)")
    _common(o)
    o.add_argument("--ood", nargs="+", metavar="SET", help=f"out-of-distribution sets: {', '.join(BUILTIN)}, or "
                   ".npz/.safetensors files with x (default: all built-in sets available here)")
    o.add_argument("--methods", nargs="+", metavar="METHOD", choices=METHODS,
                   help=f"detectors (default: all of {', '.join(METHODS)})")
    o.add_argument("--train-data", help="your in-distribution training data (.npz/.safetensors) to fit the learned "
                   "detectors on (default: the built-in dataset's train split)")
    o.add_argument("--fit-n", type=positive_int, help="fit the learned detectors on the first N training points")
    o.set_defaults(run=run_ood)
    k = msub.add_parser("calibration", help="ECE, MCE, NLL, Brier before and after temperature scaling, and "
                        "under shift")
    _common(k)
    k.add_argument("--bins", type=positive_int, default=15, help="equal-width confidence bins (default 15)")
    k.add_argument("--calibration-data", help="your held-out data (.npz/.safetensors) to fit the temperature on "
                   "(default: the built-in dataset's validation split)")
    k.add_argument("--no-shift", action="store_true", help="skip ECE under the corruptions at severities 1-5")
    k.add_argument("--shift-n", type=positive_int, default=2000,
                   help="test points corrupted at each severity for calibration under shift (default 2000)")
    k.set_defaults(run=run_calibration)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="MODEL",
                   help="a zoo name, a model folder, or package.module:factory@weights.safetensors (repeatable: "
                   "every model on the same points, the first as the reference)")
    p.add_argument("--dataset", default="mnist",
                   help="the in-distribution data: a built-in dataset (its test split) or your .npz/.safetensors")
    p.add_argument("--n", "--points", dest="n", type=positive_int, help="use only the first N test points")
    p.add_argument("--data-dir", help="folder with the dataset's files, when they cannot be fetched")
    p.add_argument("--out", required=True, help="output folder: results.json, figures; `squiggles report` renders it")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier monitor run in --out")
    add_common(p)


# --- set-up shared by the three analyses -------------------------------------------------------------------


def _check_out(args: argparse.Namespace) -> Path:
    """The output folder, refused before any work when it holds something that is not an earlier monitor run."""
    import json

    out = Path(args.out)
    results = out / "results.json"
    if results.exists():
        try:
            kind = json.loads(results.read_text()).get("kind")
        except (OSError, ValueError):
            kind = None
        if kind != "monitor" or not args.overwrite:
            raise SquigglesError(f"{results} already exists; use --overwrite (for an earlier monitor run) or "
                                 "another --out")
    elif out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise SquigglesError(f"--out {out} is a non-empty folder; give a new folder or --overwrite")
    elif out.exists() and not out.is_dir():
        raise SquigglesError(f"--out {out} is a file; give a folder")
    return out


def _models(args: argparse.Namespace, out: Path, device: Any, data: Any) -> tuple[dict[str, Any], list[dict]]:
    from squiggles.demo.models import load_ref
    from squiggles.experiments.base import check_model_fits

    models, sources = {}, []
    for ref in args.model:
        model, source = load_ref(ref, out / "models", retrain=False, device=device, log=lambda m: say(args, m),
                                 progress=not args.quiet)
        name = Path(ref.split("@")[0]).name or ref
        if name in models:
            raise SquigglesError(f"--model {ref!r} is given twice")
        check_model_fits(model.eval(), data.x.to(device), data.num_classes, f"--model {ref}")
        models[name] = model
        sources.append({"model": name, "ref": ref, "kind": source["kind"]})
    return models, sources


def _data(args: argparse.Namespace, split: str) -> Any:
    from squiggles.data import is_builtin, load_dataset, load_tensors

    if is_builtin(args.dataset):
        return load_dataset(args.dataset, split, data_dir=args.data_dir, progress=not args.quiet)
    if args.dataset.endswith((".npz", ".safetensors")) or Path(args.dataset).is_file():
        return load_tensors(args.dataset)
    raise SquigglesError(f"unknown dataset {args.dataset!r}; give a built-in dataset or a .npz/.safetensors file")


def _test(args: argparse.Namespace) -> Any:
    data = _data(args, "test")
    if data.x.dim() != 4 and args.monitor_command == "corruptions":
        raise SquigglesError(f"corruptions apply to images; {args.dataset} holds inputs of shape "
                             f"{tuple(data.x.shape[1:])}")
    return data.subset(min(args.n, len(data))) if args.n else data


def _finish(args: argparse.Namespace, out: Path, result: dict[str, Any], sources: list[dict], start: float,
            files: list[Path], test: Any) -> int:
    from squiggles._io import versions, write_json

    full = {"kind": "monitor", **result, "models": sources, "dataset": args.dataset,
            "files": [f.name for f in files], "seed": args.seed,
            "wall_time_s": round(time.perf_counter() - start, 2), "versions": versions()}
    write_json(out / "results.json", full)
    say(args, f"results in {out / 'results.json'} (render with: squiggles report {out})")
    return 0


def _device(args: argparse.Namespace) -> Any:
    from squiggles.runtime import resolve_device

    return resolve_device(args.device)


# --- the analyses ------------------------------------------------------------------------------------------


def run_corruptions(args: argparse.Namespace) -> int:
    from squiggles.monitor.analyses import corruption_errors
    from squiggles.monitor.corruptions import CORRUPTIONS, check_corruption, corrupt
    from squiggles.monitor.figures import corruption_heatmap, image_strip

    for name in args.corruptions or list(CORRUPTIONS):
        scaled = check_corruption(name).levels is not None
        check_corruption(name, args.severity if scaled else None)
    start = time.perf_counter()
    out = _check_out(args)
    test = _test(args)
    models, sources = _models(args, out, _device(args), test)
    ensure_writable_dir(out)
    say(args, f"corrupting {len(test)} images {len(args.corruptions or CORRUPTIONS)} ways and evaluating "
        f"{len(models)} model(s) ...")
    result = corruption_errors(models, test, names=args.corruptions, severity=args.severity, seed=args.seed,
                               progress=not args.quiet)
    files = [corruption_heatmap(out / "corruptions.png", result)]
    sample = test.x[:6]
    strip = {"clean": sample, **{n: corrupt(sample, n, result["severity"][n] if CORRUPTIONS[n].levels else None,
                                            seed=args.seed) for n in result["corruptions"]}}
    at = f"severity {args.severity}" if args.severity else "their published severities"
    files.append(image_strip(out / "examples.png", strip, f"MNIST-C corruptions at {at}"))
    for row in result["rows"]:
        print(f"{row['model']}: clean error {100 * row['clean_error']:.2f}%, mean corruption error "
              f"{100 * row['mean_error']:.2f}%")
    for line in result["verdicts"]:
        print(line)
    return _finish(args, out, result, sources, start, files, test)


def run_ood(args: argparse.Namespace) -> int:
    from squiggles.monitor.analyses import ood_detection
    from squiggles.monitor.figures import image_strip, roc_curves
    from squiggles.monitor.ood import FITTED, METHODS
    from squiggles.monitor.oodsets import BUILTIN, load_ood

    start = time.perf_counter()
    test = _test(args)
    methods = list(dict.fromkeys(args.methods or METHODS))
    train = _train_data(args, test) if any(m in FITTED for m in methods) else (test.x[:0], test.y[:0])
    out = _check_out(args)
    models, sources = _models(args, out, _device(args), test)
    sets, skipped = {}, []
    for name in args.ood or BUILTIN:
        try:
            sets[Path(name).stem if Path(name).suffix else name] = load_ood(name, test.x, n=len(test), seed=args.seed,
                                                                            data_dir=args.data_dir)
        except SquigglesError as exc:
            if args.ood:  # a set the user asked for must be there
                raise
            skipped.append({"set": name, "reason": str(exc).splitlines()[0]})
            say(args, f"skipping {name}: {str(exc).splitlines()[0]}")
    say(args, f"scoring {len(test)} in-distribution points against {len(sets)} set(s) with {len(methods)} "
        f"detector(s) per model ...")
    result, curves = ood_detection(models, test, train, sets, methods=methods, progress=not args.quiet)
    result["skipped"] = skipped
    ensure_writable_dir(out)
    files = [roc_curves(out / f"roc-{i}.png", curves, name) for i, name in enumerate(models)]
    files.append(image_strip(out / "sets.png", {"in-distribution": test.x[:6], **{k: v[:6] for k, v in sets.items()}},
                             "In-distribution and out-of-distribution inputs (noise clipped to [0, 1] for display)"))
    for b in result["best"]:
        print(f"{b['model']}: best detector {b['method']} (mean AUROC {100 * b['mean_auroc']:.2f}%, worst "
              f"{b['worst_set']} {100 * b['worst_auroc']:.2f}%)")
    return _finish(args, out, result, sources, start, files, test)


def _train_data(args: argparse.Namespace, test: Any) -> Any:
    from squiggles.data import is_builtin, load_dataset, load_tensors

    if args.train_data:
        train = load_tensors(args.train_data)
    elif is_builtin(args.dataset):
        train = load_dataset(args.dataset, "train", data_dir=args.data_dir, progress=not args.quiet)
    else:
        raise SquigglesError("the learned detectors (mahalanobis, knn, layer-stats, ensemble) are fitted on "
                             "training data: give --train-data FILE, or --methods msp max-logit energy odin")
    if tuple(train.x.shape[1:]) != tuple(test.x.shape[1:]):
        raise SquigglesError(f"--train-data has inputs of shape {tuple(train.x.shape[1:])}, the test data "
                             f"{tuple(test.x.shape[1:])}; give training data of the model's shape")
    return train.subset(min(args.fit_n, len(train))) if args.fit_n else train


def run_calibration(args: argparse.Namespace) -> int:
    from squiggles.data import is_builtin, load_tensors
    from squiggles.monitor.analyses import calibration_analysis
    from squiggles.monitor.figures import ece_under_shift, reliability
    from squiggles.monitor.metrics import check_bins

    start = time.perf_counter()
    test = _test(args)
    check_bins(len(test), args.bins)
    if args.calibration_data:
        val = load_tensors(args.calibration_data)
    elif is_builtin(args.dataset):
        val = _data(args, "val")
    else:
        raise SquigglesError("temperature scaling is fitted on held-out data: give --calibration-data FILE")
    shift = not args.no_shift
    if shift and test.x.dim() != 4:
        say(args, "calibration under shift corrupts images; these inputs are not images, so it is skipped")
        shift = False
    if shift:
        check_bins(min(args.shift_n, len(test)), args.bins, "--shift-n")
    out = _check_out(args)
    models, sources = _models(args, out, _device(args), test)
    ensure_writable_dir(out)
    say(args, f"calibrating {len(models)} model(s) on {len(val)} held-out points; ECE on {len(test)} test points"
        + (f" and under 11 corruptions x 5 severities ({args.shift_n} points each)" if shift else ""))
    result = calibration_analysis(models, test, val, bins=args.bins, shift=shift, shift_n=args.shift_n,
                                  seed=args.seed, progress=not args.quiet)
    files = [reliability(out / "reliability.png", result["reliability"], result["rows"])]
    if shift:
        files.append(ece_under_shift(out / "shift.png", result["shift_summary"]))
    for row in result["rows"]:
        print(f"{row['model']}: ECE {100 * row['before']['ece']:.2f}% -> {100 * row['after']['ece']:.2f}% at "
              f"T = {row['temperature']:.3f} (NLL {row['before']['nll']:.4f} -> {row['after']['nll']:.4f})")
    return _finish(args, out, result, sources, start, files, test)
