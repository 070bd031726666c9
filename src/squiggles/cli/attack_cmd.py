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
"""

# Command-line option -> attack keyword; passed only when given and only if the attack takes it.
OPTIONS = {
    "steps": "steps",
    "step_size": "step_size",
    "restarts": "restarts",
    "loss": "loss",
    "queries": "queries",
    "random_start": "random_start",
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
    p.add_argument("--queries", type=positive_int, help="query budget of a black-box attack")
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
    from squiggles.threat import make_threat

    spec = get_attack(args.attack)
    if args.norm not in spec.norms:
        raise SquigglesError(f"attack {spec.name!r} supports --norm {', '.join(spec.norms)}, not {args.norm}")
    eps = _eps(args, spec.kind)
    out = ensure_writable_dir(Path(args.out))
    if (out / "summary.json").exists() and not args.overwrite:
        raise SquigglesError(f"{out} already holds an attack result; use --overwrite or another --out folder")
    kwargs = _attack_kwargs(args, spec)
    device = resolve_device(args.device)
    model, card = resolve_model(args)
    model.to(device)
    data = resolve_data(args)
    threat = make_threat(args.norm, eps, data.bounds)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    result = _run_batches(spec, model, data, threat, kwargs, args, gen, device)
    warning = one_attack_warning(spec, result.summary(), args)
    _write_outputs(out, result, data, model, args, card, spec.name, [warning] if warning else [])
    s = result.summary()
    print(
        f"{spec.name} {args.norm} eps={eps:g}: clean accuracy {s['clean_accuracy']:.4f}, robust accuracy "
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


def _eps(args: argparse.Namespace, kind: str) -> float:
    if args.eps is None:
        if kind == "minimal":
            return math.inf
        raise SquigglesError(f"--eps is required for the fixed-budget attack {args.attack!r}")
    return args.eps


def _attack_kwargs(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    return flag_options(args, spec.fn, OPTIONS, f"attack {spec.name!r}")


def _targets(args: argparse.Namespace, model: Any, x: Any, y: Any, num_classes: int, gen: Any) -> Any:
    from squiggles.goals import Targeted, least_likely, next_class, random_other
    from squiggles.runtime import predict

    if args.targeted == "next":
        return Targeted(next_class(y, num_classes), labels=y)
    if args.targeted == "random":
        return Targeted(random_other(y, num_classes, gen), labels=y)
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
) -> Any:
    from tqdm.auto import tqdm

    from squiggles.results import AttackResult

    parts = []
    starts = range(0, len(data), args.batch_size)
    for start in tqdm(starts, desc=spec.name, unit="batch", disable=args.quiet):
        x = data.x[start : start + args.batch_size].to(device)
        y = data.y[start : start + args.batch_size].to(device)
        goal = _targets(args, model, x, y, data.num_classes, gen) if args.targeted else y
        parts.append(spec(model, x, goal, threat, seed=gen, **kwargs))
    return AttackResult.cat(parts)


def _write_outputs(
    out: Path, result: Any, data: Any, model: Any, args: argparse.Namespace, card: dict[str, Any], name: str,
    warnings: list[str],
) -> None:
    from squiggles._io import versions, write_json, write_safetensors
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
    if is_image_batch(data.x):
        k = 8
        clean, adv = data.x[:k], result.x_adv[:k].cpu()
        attack_grid(
            out / "examples.png",
            clean,
            adv,
            predict(model, clean).argmax(1),
            result.pred[:k].cpu(),
            confidence(predict(model, adv)),
            result.labels[:k].cpu(),
            data.bounds,
            title=f"{name} {args.norm} eps={result.threat['eps']}",
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
