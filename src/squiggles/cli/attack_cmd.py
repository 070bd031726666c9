"""``squiggles attack``: run one attack on a model and dataset; write the adversarial examples, a JSON
summary and a picture of clean / perturbation / adversarial examples."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from squiggles.cli.common import (
    add_common,
    add_data_args,
    add_model_args,
    flag_options,
    nonneg_float,
    positive_float,
    positive_int,
    resolve_data,
    resolve_model,
    say,
)
from squiggles.errors import SquigglesError

EXAMPLES = """examples:
  squiggles attack --model runs/madry --dataset mnist --n 1000 --attack pgd --norm linf --eps 0.3 \\
      --steps 40 --out adv/pgd
  squiggles attack --model runs/madry --attack apgd-ce --norm l2 --eps 2 --targeted next --out adv/targeted
  squiggles attack --model runs/madry --attack fmn --norm l2 --n 200 --out adv/minimal   # minimal norms
  squiggles attack --model mypkg.nets:make --weights w.safetensors --dataset mine.npz \\
      --attack square --eps 0.1 --out adv/mine
  squiggles attack --model mnist-standard --attack hsja --norm l2 --queries 5000 --n 100 --out adv/hsja
      # label-only; also writes curve.png (median norm against queries, beside white-box FMN)
  squiggles attack --model mnist-standard --attack spatial-grid --max-rotation 30 --max-translation 3 --out adv/turn
  squiggles attack --model mnist-standard --attack stickers --stickers 4 --sticker-size 3 --out adv/stickers
  squiggles attack --model mnist-standard --attack patch --patch-area 0.04 --restarts 4 --out adv/patch
  squiggles attack --model mnist-linf-0.3 --attack rays --norm linf --eps 0.3 --queries 10000 --out adv/rays
"""

# Command-line option -> attack keyword; passed only when given and only if the attack takes it.
OPTIONS = {
    "steps": "steps",
    "step_size": "step_size",
    "restarts": "restarts",
    "loss": "loss",
    "queries": "queries",
    "random_start": "random_start",
    "k": "k",
    "rotations": "rotations",
    "translations": "translations",
    "placement": "placement",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from squiggles.attacks.registry import ATTACKS

    p = sub.add_parser(
        "attack",
        help="run one attack; save adversarial examples, summary and picture",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--attack", default="pgd", help=f"one of: {', '.join(ATTACKS)} (default: pgd)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"))
    p.add_argument(
        "--eps",
        type=nonneg_float,
        help="budget (required for fixed-budget attacks; minimal-norm attacks default to unbounded)",
    )
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--step-size", type=positive_float)
    p.add_argument("--restarts", type=positive_int)
    p.add_argument("--loss", choices=("ce", "margin", "dlr"))
    p.add_argument("--queries", type=positive_int,
                   help="model calls per example of a black-box or label-only attack (label-only: every call counted)")
    p.add_argument("--starts", metavar="FILE",
                   help="label-only attacks: starting images (.npz/.safetensors with x, one per attacked point); "
                   "with --targeted they default to an example of each target class from the dataset")
    p.add_argument("--max-rotation", type=nonneg_float, default=30.0,
                   help="spatial attacks: largest rotation either way, in degrees (default 30)")
    p.add_argument("--max-translation", type=nonneg_float, default=3.0,
                   help="spatial attacks: largest shift along each axis, in pixels (default 3)")
    p.add_argument("--rotations", type=positive_int, help="spatial-grid: rotations in the grid (default 31)")
    p.add_argument("--translations", type=positive_int, help="spatial-grid: shifts per axis (default 5)")
    p.add_argument("--k", type=positive_int, help="spatial-random: random transforms per point (default 10)")
    p.add_argument("--stickers", type=positive_int, default=4, help="stickers: how many rectangles (default 4)")
    p.add_argument("--sticker-size", type=positive_int, default=3,
                   help="stickers: each rectangle's side in pixels (default 3)")
    p.add_argument("--patch-area", type=nonneg_float, metavar="FRACTION",
                   help="patch: the square patch's share of the image (default 0.04)")
    p.add_argument("--placement", choices=("saliency", "random"),
                   help="stickers and patch: where the first try goes (default saliency; later --restarts: random)")
    p.add_argument(
        "--targeted",
        choices=("random", "next", "least-likely"),
        help="make it a targeted attack, choosing targets this way",
    )
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from squiggles._io import ensure_writable_dir
    from squiggles.attacks.registry import get_attack
    from squiggles.runtime import resolve_device

    spec = get_attack(args.attack)
    if spec.kind == "spatial" and args.eps is not None:
        raise SquigglesError(f"--eps is for norm threats; the spatial attack {spec.name!r} takes --max-rotation "
                             "(degrees) and --max-translation (pixels)")
    if spec.kind == "patch" and args.eps is not None:
        size = "--patch-area" if spec.name == "patch" else "--stickers and --sticker-size"
        raise SquigglesError(f"--eps is for norm threats; {spec.name!r} changes its pixels freely inside the "
                             f"mask: size it with {size}")
    if args.patch_area is not None and spec.name != "patch":
        raise SquigglesError(f"--patch-area is for --attack patch, not {spec.name!r}")
    if spec.kind not in ("spatial", "patch") and args.norm not in spec.norms:
        raise SquigglesError(f"attack {spec.name!r} supports --norm {', '.join(spec.norms)}, not {args.norm}")
    eps = _eps(args, spec.kind)
    if args.starts and spec.kind != "decision":
        raise SquigglesError(f"--starts is for the label-only attacks (hsja, boundary, rays), not {spec.name!r}")
    out_path = Path(args.out)
    if (out_path / "summary.json").exists() and not args.overwrite:
        raise SquigglesError(f"{out_path} already holds an attack result; use --overwrite or another --out folder")
    kwargs = _attack_kwargs(args, spec)
    device = resolve_device(args.device)
    model, card = resolve_model(args, any_callable=spec.access == "labels")
    if isinstance(model, torch.nn.Module):
        model.to(device)
    data = resolve_data(args)
    starts = _starts(args, data)
    threat = _threat(args, spec, eps, data)
    out = ensure_writable_dir(out_path)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    result = _run_batches(spec, model, data, threat, kwargs, args, gen, device, starts)
    warning = one_attack_warning(spec, result.summary(), args)
    extra = _query_curve(out, result, model, data, threat, args, device) if spec.kind == "decision" else {}
    _write_outputs(out, result, data, model, args, card, spec.name, [warning] if warning else [], extra)
    s = result.summary()
    print(
        f"{spec.name} {_threat_label(result.threat)}: clean accuracy {s['clean_accuracy']:.4f}, robust accuracy "
        f"{s['robust_accuracy']:.4f}, success rate {s['success_rate']:.4f} on {s['n']} points -> {out}"
    )
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def one_attack_warning(spec: Any, summary: dict[str, Any], args: argparse.Namespace) -> str | None:
    """A single gradient attack at a fixed budget that fails on most points proves nothing: masked gradients
    fool every gradient attack alike (Athalye et al. 2018, arXiv 1802.00420). Say so, and name the evaluation."""
    if spec.kind != "fixed" or not spec.uses_grad or summary["success_rate"] >= 0.5 or not summary["n"]:
        return None
    standing = 1 - summary["success_rate"]
    model = args.model if " " not in args.model else repr(args.model)
    weights = f" --weights {args.weights}" if getattr(args, "weights", None) else ""  # a user's own factory
    command = (f"squiggles evaluate --model {model}{weights} --dataset {args.dataset} --norm {args.norm} "
               f"--eps {args.eps:g} --attacks standard --out eval.json")
    what = "reached its target on" if summary["targeted"] else "broke"
    return (f"{spec.name} {what} only {100 * summary['success_rate']:.0f}% of the points it attacked, leaving "
            f"{100 * standing:.0f}% standing; one gradient attack is not an evaluation (a model that masks its "
            f"gradients fools every gradient attack alike). For a robust accuracy to trust, run: {command}")


def _threat(args: argparse.Namespace, spec: Any, eps: float, data: Any) -> Any:
    """The threat model the flags describe, checked against the data before anything is written."""
    from squiggles.threat import make_threat

    if spec.kind not in ("spatial", "patch"):
        return make_threat(args.norm, eps, data.bounds)
    from squiggles.transforms import Spatial, check_images

    check_images(data.x[:1])
    if spec.name == "patch":
        from squiggles.patches import PatchArea

        threat = PatchArea(0.04 if args.patch_area is None else args.patch_area, data.bounds)
        if threat.patch_for(data.x[:1]) is None:
            raise SquigglesError(f"--patch-area {threat.eps} is less than one pixel of these images; give a larger "
                                 "area")
        return threat
    if spec.kind == "patch":
        from squiggles.patches import Patch, Stickers

        Patch(args.sticker_size, args.sticker_size).check_fits(data.x[:1])
        return Stickers(args.stickers, args.sticker_size, args.sticker_size, data.bounds)
    return Spatial(args.max_rotation, args.max_translation, data.bounds)


def _threat_label(threat: dict[str, Any]) -> str:
    if threat.get("threat") == "stickers":
        return f"{threat['count']} stickers of {threat['height']} x {threat['width']} px"
    if threat.get("threat") == "patch":
        return f"patch of {100 * threat['eps']:g}% of the image"
    if threat.get("threat") == "spatial":
        return f"rotation +-{threat['max_rotation']:g} deg, translation +-{threat['max_translation']:g} px"
    return f"{threat['norm']} eps={threat['eps']:g}" if isinstance(threat.get("eps"), float | int) else threat["norm"]


def _eps(args: argparse.Namespace, kind: str) -> float:
    if args.eps is None:
        if kind in ("minimal", "decision", "spatial", "patch"):
            return math.inf
        raise SquigglesError(f"--eps is required for the fixed-budget attack {args.attack!r}")
    return args.eps


def _attack_kwargs(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    return flag_options(args, spec.fn, OPTIONS, f"attack {spec.name!r}")


def _starts(args: argparse.Namespace, data: Any) -> Any:
    """``--starts``: one starting image per point of the (cut) dataset, shaped like it."""
    if not args.starts:
        return None
    from squiggles.data import load_tensors

    starts = load_tensors(args.starts).x
    if starts.shape != data.x.shape:
        raise SquigglesError(f"--starts {args.starts}: x has shape {tuple(starts.shape)}, but the points attacked have "
                             f"shape {tuple(data.x.shape)}; give one starting image per point (same --n)")
    return starts


def _class_examples(data: Any, targets: Any) -> Any:
    """For each target, the first example of the dataset labelled with it (the start of a targeted label-only
    attack); the point itself where the dataset holds no example of that class."""
    x, y = data.x, data.y.to(targets.device)
    first = {int(c): int((y == c).nonzero()[0]) for c in targets.unique().tolist() if (y == c).any()}
    rows = [first.get(int(t), -1) for t in targets.tolist()]
    return [None if r < 0 else x[r] for r in rows]


def _batch_starts(starts: Any, data: Any, goal: Any, x: Any, lo: int) -> Any:
    import torch

    from squiggles.goals import Targeted

    if starts is not None:
        return starts[lo : lo + len(x)].to(x.device)
    if not isinstance(goal, Targeted):
        return None
    picks = _class_examples(data, goal.targets)
    return torch.stack([x[i] if p is None else p.to(x.device) for i, p in enumerate(picks)])


def _targets(args: argparse.Namespace, model: Any, x: Any, y: Any, num_classes: int, gen: Any) -> Any:
    import torch

    from squiggles.goals import Targeted, least_likely, next_class, random_other
    from squiggles.runtime import predict

    if args.targeted == "next":
        return Targeted(next_class(y, num_classes), labels=y)
    if args.targeted == "random":
        return Targeted(random_other(y, num_classes, gen), labels=y)
    if not isinstance(model, torch.nn.Module):
        raise SquigglesError("--targeted least-likely needs the model's scores; use --targeted next or random")
    logits = predict(model, x)
    t = least_likely(logits)
    return Targeted(t, labels=y) if not (t == y).any() else Targeted(next_class(y, num_classes), labels=y)


def _run_batches(
    spec: Any,
    model: Any,
    data: Any,
    threat: Any,
    kwargs: dict[str, Any],
    args: argparse.Namespace,
    gen: Any,
    device: Any,
    start_images: Any = None,
) -> Any:
    from tqdm.auto import tqdm

    from squiggles.results import AttackResult

    parts = []
    starts = range(0, len(data), args.batch_size)
    for start in tqdm(starts, desc=spec.name, unit="batch", disable=args.quiet):
        x = data.x[start : start + args.batch_size].to(device)
        y = data.y[start : start + args.batch_size].to(device)
        goal = _targets(args, model, x, y, data.num_classes, gen) if args.targeted else y
        extra = {}
        if spec.kind == "decision":
            extra["starts"] = _batch_starts(start_images, data, goal, x, start)
        parts.append(spec(model, x, goal, threat, seed=gen, **kwargs, **extra))
    return AttackResult.cat(parts)


def _query_curve(out: Path, result: Any, model: Any, data: Any, threat: Any, args: argparse.Namespace,
                 device: Any) -> dict[str, Any]:
    """A label-only attack's median norm against queries (curve.png), beside white-box FMN on the same points when
    the model gives gradients (an nn.Module)."""
    import torch

    from squiggles.attacks.registry import get_attack
    from squiggles.evaluation.queries import minimal_median
    from squiggles.report.figures import query_curve
    from squiggles.results import AttackResult

    curve = result.norm_curve()
    reference: dict[str, Any] = {}
    fmn = get_attack("fmn")
    if isinstance(model, torch.nn.Module) and threat.name in fmn.norms:
        say(args, "fmn (white-box reference for the curve) ...")
        parts = [fmn(model, data.x[i : i + args.batch_size].to(device), data.y[i : i + args.batch_size].to(device),
                     threat.with_eps(math.inf), seed=args.seed) for i in range(0, len(data), args.batch_size)]
        reference["fmn"] = minimal_median(AttackResult.cat(parts))
    refs = {f"{k} (white-box)": v for k, v in reference.items() if v is not None}
    query_curve(out / "curve.png", {result.attack: (curve["queries"], curve["median_norm"])}, threat.name, refs,
                title=f"{result.attack} {threat.name}: median norm against queries")
    return {"reference_median_norm": reference, "files": ["curve.png"]}


def _write_outputs(
    out: Path, result: Any, data: Any, model: Any, args: argparse.Namespace, card: dict[str, Any], name: str,
    warnings: list[str], extra: dict[str, Any] | None = None,
) -> None:
    import torch

    from squiggles._io import versions, write_json, write_safetensors
    from squiggles.access import predicted_labels
    from squiggles.report.figures import attack_grid, confidence, is_image_batch
    from squiggles.runtime import predict

    tensors = {
        "x_adv": result.x_adv,
        "y": result.labels,
        "pred": result.pred,
        "success": result.success,
        "norms": result.norms,
        "queries": result.queries,
    }
    if result.targets is not None:
        tensors["targets"] = result.targets
    if result.params is not None:
        tensors["params"] = result.params  # spatial: degrees, pixels right, down; stickers: corner rows, columns
    write_safetensors(out / "adversarial.safetensors", tensors)
    summary = {
        **result.summary(),
        "dataset": args.dataset,
        "split": args.split,
        "model": args.model,
        "model_card": card,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "files": ["adversarial.safetensors"],
        "warnings": warnings,
    }
    for key, value in (extra or {}).items():
        if key == "files":
            summary["files"] += value
        else:
            summary[key] = value
    if is_image_batch(data.x):
        k = 8
        clean, adv = data.x[:k], result.x_adv[:k].cpu()
        scores = isinstance(model, torch.nn.Module)
        attack_grid(
            out / "examples.png",
            clean,
            adv,
            predicted_labels(model, clean),
            result.pred[:k].cpu(),
            confidence(predict(model, adv)) if scores else None,
            result.labels[:k].cpu(),
            data.bounds,
            title=f"{name} {_threat_label(result.threat)}",
        )
        summary["files"].append("examples.png")
    write_json(out / "summary.json", summary)
    say(
        args,
        json.dumps(
            {
                k: summary[k]
                for k in ("robust_accuracy", "success_rate", "median_norm", "forwards", "backwards", "wall_time_s")
            }
        ),
    )
